//! Backpressure, measured: a producer much faster than the disk (200,000 upserts of
//! 1 KiB through the async path) is held to the write queue's bound, so the process's
//! peak memory stays near where it started, and nothing is lost. The same run with a
//! queue as large as the whole load (what the unbounded queue was) is measured beside it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use yurt_hub::codec::{Format, ObjectInfo, RawObject};
use yurt_hub::metrics::HubMetrics;
use yurt_hub::store::{ObjectKey, Store, StoreConfig};

const WRITES: usize = 200_000;
const OBJECT_BYTES: usize = 1024;

fn object(i: usize) -> (ObjectKey, RawObject) {
    let name = format!("cm-{i:07}");
    (
        ObjectKey {
            component: "kubelet".into(),
            gvr: "configmaps.v1.core".into(),
            namespace: "load".into(),
            name: name.clone(),
        },
        RawObject {
            format: Format::Json,
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            info: ObjectInfo {
                name,
                namespace: "load".into(),
                resource_version: (i + 1).to_string(),
                ..ObjectInfo::default()
            },
            data: Bytes::from(vec![b'x'; OBJECT_BYTES]),
        },
    )
}

/// Peak resident memory of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Starts a new peak (Linux: writing 5 to clear_refs resets VmHWM).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
}

/// The sum and count of the write-wait histogram, as /metrics shows them.
fn write_wait(metrics: &HubMetrics) -> (f64, u64) {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(registry.sub_registry_with_prefix("yurt_hub"));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    };
    (
        value("yurt_hub_cache_write_wait_seconds_sum "),
        value("yurt_hub_cache_write_wait_seconds_count ") as u64,
    )
}

struct Run {
    peak_growth_mib: f64,
    max_depth: usize,
    seconds: f64,
    waits: (f64, u64),
}

async fn load(queue_capacity: usize) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = HubMetrics::default();
    let store = Store::open(
        &StoreConfig {
            queue_capacity,
            // Long enough that the disk always makes room: nothing may be dropped here.
            write_wait: Duration::from_secs(60),
            ..StoreConfig::new(dir.path())
        },
        metrics.clone(),
    )
    .expect("open the store");
    reset_peak_rss();
    let before = peak_rss_kib();
    let started = Instant::now();
    let mut max_depth = 0;
    for i in 0..WRITES {
        let (k, o) = object(i);
        store.upsert_async(k, o).await.expect("queued");
        if i % 256 == 0 {
            max_depth = max_depth.max(store.queue_len());
        }
    }
    let s = store.clone();
    tokio::time::timeout(
        Duration::from_secs(600),
        tokio::task::spawn_blocking(move || s.flush()),
    )
    .await
    .expect("the writer drained the queue within 10 minutes")
    .expect("join")
    .expect("flushed");
    let seconds = started.elapsed().as_secs_f64();
    let peak_growth_mib = peak_rss_kib().saturating_sub(before) as f64 / 1024.0;
    assert_eq!(store.count().expect("count"), WRITES as u64, "nothing lost");
    let waits = write_wait(&metrics);
    store.close();
    Run {
        peak_growth_mib,
        max_depth,
        seconds,
        waits,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_faster_than_the_disk_waits_and_memory_stays_bounded() {
    let bounded = load(StoreConfig::DEFAULT_QUEUE_CAPACITY).await;
    let unbounded = load(WRITES).await;
    for (name, r) in [("queue 4096", &bounded), ("queue 200000", &unbounded)] {
        eprintln!(
            "{name}: {WRITES} upserts of {OBJECT_BYTES} B in {:.1} s, peak RSS +{:.1} MiB, deepest queue {}, producer waited {:.1} s for room over {} writes",
            r.seconds, r.peak_growth_mib, r.max_depth, r.waits.0, r.waits.1
        );
    }
    assert!(
        bounded.max_depth <= StoreConfig::DEFAULT_QUEUE_CAPACITY,
        "the queue stayed within its bound"
    );
    assert!(
        bounded.waits.0 > 0.0,
        "the producer was faster than the disk and had to wait"
    );
    assert!(
        unbounded.max_depth > StoreConfig::DEFAULT_QUEUE_CAPACITY,
        "without the bound the queue grows"
    );
    assert!(
        bounded.peak_growth_mib < 64.0,
        "peak memory grew {:.1} MiB with the bound",
        bounded.peak_growth_mib
    );
    assert!(
        bounded.peak_growth_mib * 2.0 < unbounded.peak_growth_mib,
        "the bound is what keeps memory down ({:.1} vs {:.1} MiB)",
        bounded.peak_growth_mib,
        unbounded.peak_growth_mib
    );
}
