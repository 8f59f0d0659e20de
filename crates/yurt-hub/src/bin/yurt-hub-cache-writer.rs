//! Writes objects into a hub cache as fast as it can and prints `acked <n>` after every
//! commit (all objects below `n` are durable). Used by the crash test (which SIGKILLs it
//! at random moments) and by `yurt bench hub`. Not part of the product.
//!
//! usage: yurt-hub-cache-writer <cache-dir> <first-index> [batch]

use std::io::Write;

use bytes::Bytes;
use yurt_hub::codec::{Format, ObjectInfo, RawObject};
use yurt_hub::store::{ObjectKey, Store, StoreConfig};

/// The object with index `i`: a ConfigMap-like JSON object of about 600 bytes.
fn object(i: u64) -> (ObjectKey, RawObject) {
    let name = format!("obj-{i:08}");
    let data = format!(
        r#"{{"kind":"ConfigMap","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"stress","resourceVersion":"{i}"}},"data":{{"payload":"{}"}}}}"#,
        "x".repeat(512)
    );
    (
        ObjectKey {
            component: "stress".into(),
            gvr: "configmaps.v1.core".into(),
            namespace: "stress".into(),
            name: name.clone(),
        },
        RawObject {
            format: Format::Json,
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            info: ObjectInfo {
                name,
                namespace: "stress".into(),
                resource_version: i.to_string(),
                ..ObjectInfo::default()
            },
            data: Bytes::from(data),
        },
    )
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(first)) = (args.get(1), args.get(2).and_then(|s| s.parse::<u64>().ok()))
    else {
        eprintln!("usage: yurt-hub-cache-writer <cache-dir> <first-index> [batch]");
        return std::process::ExitCode::from(2);
    };
    let batch: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50);
    let store = match Store::open(
        &StoreConfig {
            batch_max: 4096,
            // Acknowledged writes are what the crash test counts: wait, never drop.
            write_wait: std::time::Duration::from_secs(600),
            ..StoreConfig::new(dir)
        },
        yurt_hub::metrics::HubMetrics::default(),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    let mut next = first;
    loop {
        for i in next..next + batch {
            let (k, o) = object(i);
            if store.upsert(k, o).is_err() {
                return std::process::ExitCode::from(1);
            }
        }
        next += batch;
        if let Err(e) = store.flush() {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
        if writeln!(out, "acked {next}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return std::process::ExitCode::SUCCESS;
        }
    }
}
