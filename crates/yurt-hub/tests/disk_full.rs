//! A full cache disk: writes fail with a clear metric and log line, nothing already
//! cached is lost, reads keep being served, and a delete is honoured. Needs root (mounts a tiny tmpfs).

use std::process::Command;

use bytes::Bytes;
use yurt_hub::codec::{Format, ObjectInfo, RawObject};
use yurt_hub::metrics::{HubMetrics, ReasonLabel};
use yurt_hub::store::{ObjectKey, Store, StoreConfig};

struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs needs root");
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

fn object(i: usize) -> (ObjectKey, RawObject) {
    let name = format!("cm-{i:06}");
    (
        ObjectKey {
            component: "kubelet".into(),
            gvr: "configmaps.v1.core".into(),
            namespace: "ns".into(),
            name: name.clone(),
        },
        RawObject {
            format: Format::Json,
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            info: ObjectInfo {
                name,
                namespace: "ns".into(),
                resource_version: i.to_string(),
                ..ObjectInfo::default()
            },
            data: Bytes::from(vec![b'x'; 4096]),
        },
    )
}

#[test]
fn a_full_disk_is_reported_and_cached_objects_stay_readable() {
    let fs = Tmpfs::new("400k");
    let metrics = HubMetrics::default();
    let store = Store::open(
        &StoreConfig {
            batch_max: 8,
            ..StoreConfig::new(fs.0.path().to_owned())
        },
        metrics.clone(),
    )
    .unwrap();
    // Fill the disk batch by batch until a commit fails.
    let mut committed = 0;
    let mut failed = false;
    for batch in 0..500 {
        for i in batch * 8..batch * 8 + 8 {
            let (k, o) = object(i);
            store.upsert(k, o).unwrap();
        }
        match store.flush() {
            Ok(()) => committed = batch * 8 + 8,
            Err(e) => {
                assert!(e.to_string().contains("full"), "{e}");
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the disk never filled");
    assert!(committed > 0);
    let disk_full = metrics
        .cache_write_errors
        .get_or_create(&ReasonLabel {
            reason: "disk_full".into(),
        })
        .get();
    assert!(disk_full >= 1, "disk-full counted");
    // Everything committed before is still served.
    for i in (1..committed).step_by(7) {
        let (k, _) = object(i);
        assert!(store.get(&k).unwrap().is_some(), "object {i} lost");
    }
    // A delete on the full disk is honoured at once, whether or not SQLite finds room
    // for it (the store keeps it in memory until it does).
    let (gone, _) = object(0);
    store.delete(gone.clone(), 0).unwrap();
    let _ = store.flush();
    assert!(
        store.get(&gone).unwrap().is_none(),
        "a deleted object is served"
    );
    assert!(
        store
            .list("kubelet", "configmaps.v1.core", "ns")
            .unwrap()
            .iter()
            .all(|o| o.info.name != gone.name)
    );
    // Reopening works too (the hub restarts on a full disk without losing its cache).
    store.close();
    let store = Store::open(
        &StoreConfig {
            batch_max: 8,
            ..StoreConfig::new(fs.0.path().to_owned())
        },
        HubMetrics::default(),
    )
    .unwrap();
    let (k, _) = object(1);
    assert!(store.get(&k).unwrap().is_some());
}
