//! The store's tests: ordering by resourceVersion, list replacement, checksums, the
//! writer's panic guard, a full disk, a full queue and corruption found while running.

use std::collections::BTreeMap;

use super::rows::encode_map;
use super::*;

fn obj(ns: &str, name: &str, rv: u64, labels: &[(&str, &str)], data: &str) -> RawObject {
    RawObject {
        format: Format::Json,
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        info: ObjectInfo {
            name: name.into(),
            namespace: ns.into(),
            resource_version: rv.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            fields: BTreeMap::new(),
        },
        data: Bytes::from(data.to_owned()),
    }
}

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey {
        component: "kubelet".into(),
        gvr: "configmaps.v1.core".into(),
        namespace: ns.into(),
        name: name.into(),
    }
}

fn store(dir: &Path) -> Store {
    Store::open(
        &StoreConfig {
            batch_max: 64,
            ..StoreConfig::new(dir)
        },
        HubMetrics::default(),
    )
    .unwrap()
}

#[test]
fn upserts_are_guarded_by_resource_version_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.upsert(key("a", "c1"), obj("a", "c1", 5, &[], "v5"))
        .unwrap();
    s.upsert(key("a", "c1"), obj("a", "c1", 4, &[], "v4-stale"))
        .unwrap();
    s.upsert(key("a", "c2"), obj("a", "c2", 1, &[], "x"))
        .unwrap();
    s.delete(key("a", "c2"), 0).unwrap();
    s.flush().unwrap();
    assert_eq!(s.get(&key("a", "c1")).unwrap().unwrap().data, "v5");
    assert!(s.get(&key("a", "c2")).unwrap().is_none());
    s.close();
    let s = store(dir.path());
    assert_eq!(
        s.get(&key("a", "c1"))
            .unwrap()
            .unwrap()
            .info
            .resource_version,
        "5"
    );
    assert_eq!(s.count().unwrap(), 1);
}

fn list_meta(resource_version: u64) -> ListMeta {
    ListMeta {
        api_version: "v1".into(),
        kind: "ConfigMapList".into(),
        resource_version,
    }
}

#[test]
fn a_late_list_or_delete_never_removes_a_newer_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let all = Shape {
        namespace: "a".into(),
        label_selector: String::new(),
        field_selector: String::new(),
    };
    s.upsert(key("a", "old"), obj("a", "old", 5, &[], "o"))
        .unwrap();
    // A watch event created `new` at 20 before the ingest of a list taken at 10.
    s.upsert(key("a", "new"), obj("a", "new", 20, &[], "n"))
        .unwrap();
    s.replace_list("kubelet", "configmaps.v1.core", all, list_meta(10), vec![])
        .unwrap();
    // A DELETED event seen at 15 arrives after `new` was written at 20.
    s.delete(key("a", "new"), 15).unwrap();
    s.flush().unwrap();
    let names: Vec<String> = s
        .list("kubelet", "configmaps.v1.core", "a")
        .unwrap()
        .into_iter()
        .map(|o| o.info.name)
        .collect();
    assert_eq!(names, ["new"], "old is gone at 10, new (20) stays");
    s.delete(key("a", "new"), 21).unwrap();
    s.flush().unwrap();
    assert!(s.get(&key("a", "new")).unwrap().is_none());
}

#[test]
fn replacing_a_list_removes_what_the_shape_no_longer_has_and_keeps_other_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let web = Shape {
        namespace: "a".into(),
        label_selector: "app=web".into(),
        field_selector: String::new(),
    };
    s.replace_list(
        "kubelet",
        "configmaps.v1.core",
        web.clone(),
        list_meta(0),
        vec![
            obj("a", "w1", 1, &[("app", "web")], "1"),
            obj("a", "w2", 1, &[("app", "web")], "2"),
        ],
    )
    .unwrap();
    s.upsert(key("a", "db"), obj("a", "db", 1, &[("app", "db")], "3"))
        .unwrap();
    s.replace_list(
        "kubelet",
        "configmaps.v1.core",
        web.clone(),
        list_meta(0),
        vec![obj("a", "w1", 2, &[("app", "web")], "1b")],
    )
    .unwrap();
    s.flush().unwrap();
    let names: Vec<String> = s
        .list("kubelet", "configmaps.v1.core", "a")
        .unwrap()
        .into_iter()
        .map(|o| o.info.name)
        .collect();
    assert_eq!(
        names,
        ["db", "w1"],
        "w2 is gone, db belongs to another shape"
    );
    assert_eq!(
        s.shapes("kubelet", "configmaps.v1.core").unwrap(),
        vec![(web, "v1".to_owned(), "ConfigMapList".to_owned())]
    );
    assert!(
        s.list("kube-proxy", "configmaps.v1.core", "")
            .unwrap()
            .is_empty(),
        "components are separate"
    );
}

#[test]
fn corrupt_entries_are_dropped_counted_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = HubMetrics::default();
    let s = Store::open(
        &StoreConfig {
            batch_max: 8,
            ..StoreConfig::new(dir.path())
        },
        metrics.clone(),
    )
    .unwrap();
    s.upsert(key("a", "c1"), obj("a", "c1", 1, &[], "good bytes"))
        .unwrap();
    s.upsert(key("a", "c2"), obj("a", "c2", 1, &[], "fine"))
        .unwrap();
    s.flush().unwrap();
    // Flip the stored bytes behind the store's back.
    let c = Connection::open(s.path()).unwrap();
    c.execute(
        "UPDATE objects SET data=X'6261642062797465' WHERE name='c1'",
        [],
    )
    .unwrap();
    drop(c);
    assert!(s.get(&key("a", "c1")).unwrap().is_none());
    assert_eq!(
        s.list("kubelet", "configmaps.v1.core", "a").unwrap().len(),
        1
    );
    assert!(metrics.cache_corrupt_entries.get() >= 1);
    s.flush().unwrap();
    assert_eq!(s.count().unwrap(), 1, "the corrupt entry was removed");
    // Online again, the next response repairs it.
    s.upsert(key("a", "c1"), obj("a", "c1", 2, &[], "fresh bytes"))
        .unwrap();
    s.flush().unwrap();
    assert_eq!(s.get(&key("a", "c1")).unwrap().unwrap().data, "fresh bytes");
}

#[test]
fn an_unreadable_database_is_set_aside_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path());
        s.upsert(key("a", "c1"), obj("a", "c1", 1, &[], "x"))
            .unwrap();
        s.flush().unwrap();
        s.close();
    }
    let db = dir.path().join("cache.db");
    let _ = std::fs::remove_file(dir.path().join("cache.db-wal"));
    std::fs::write(
        &db,
        b"this is not a database at all, just garbage bytes......",
    )
    .unwrap();
    let metrics = HubMetrics::default();
    let s = Store::open(
        &StoreConfig {
            batch_max: 8,
            ..StoreConfig::new(dir.path())
        },
        metrics.clone(),
    )
    .unwrap();
    assert_eq!(s.count().unwrap(), 0);
    assert_eq!(metrics.cache_resets.get(), 1);
    let set_aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("cache.db.corrupt-")
        })
        .count();
    assert_eq!(set_aside, 1);
    s.upsert(key("a", "c1"), obj("a", "c1", 1, &[], "x"))
        .unwrap();
    s.flush().unwrap();
    assert_eq!(s.count().unwrap(), 1, "the fresh database works");
}

#[test]
fn label_maps_round_trip_and_garbage_is_refused() {
    let m: BTreeMap<String, String> = [
        ("app".into(), "web".into()),
        ("empty".into(), String::new()),
    ]
    .into();
    assert_eq!(decode_map(&encode_map(&m)), Some(m));
    assert_eq!(decode_map(&[]), Some(BTreeMap::new()));
    assert_eq!(decode_map(&[5, 0, b'a']), None);
}

#[test]
fn a_write_that_panics_is_skipped_and_the_writer_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = HubMetrics::default();
    let s = Store::open(
        &StoreConfig {
            batch_max: 64,
            ..StoreConfig::new(dir.path())
        },
        metrics.clone(),
    )
    .unwrap();
    s.upsert(key("ns", "before"), obj("ns", "before", 1, &[], "{}"))
        .unwrap();
    s.send_blocking(WriteOp::Panic).unwrap();
    s.upsert(key("ns", "after"), obj("ns", "after", 1, &[], "{}"))
        .unwrap();
    let flushed = s.flush();
    assert!(
        flushed
            .as_ref()
            .is_err_and(|e| e.to_string().contains("panicked")),
        "the flush reports the skipped write: {flushed:?}"
    );
    assert!(s.get(&key("ns", "before")).unwrap().is_some());
    assert!(s.get(&key("ns", "after")).unwrap().is_some());
    assert!(s.writer_running());
    s.upsert(key("ns", "later"), obj("ns", "later", 1, &[], "{}"))
        .unwrap();
    s.flush().unwrap();
    assert!(s.get(&key("ns", "later")).unwrap().is_some());
    let panics = metrics
        .cache_write_errors
        .get_or_create(&ReasonLabel {
            reason: "panic".into(),
        })
        .get();
    assert_eq!(panics, 1);
    s.close();
    assert!(!s.writer_running());
}

#[test]
fn shapes_cover_narrower_requests() {
    let all = Shape {
        namespace: String::new(),
        label_selector: String::new(),
        field_selector: String::new(),
    };
    let node = Shape {
        namespace: String::new(),
        label_selector: String::new(),
        field_selector: "spec.nodeName=n1".into(),
    };
    let ns = Shape {
        namespace: "a".into(),
        label_selector: "x=y".into(),
        field_selector: String::new(),
    };
    assert!(node.covered_by(&all));
    assert!(ns.covered_by(&all));
    assert!(!all.covered_by(&node));
    assert!(!ns.covered_by(&node));
    assert!(node.covered_by(&node));
}

// === unchanged objects ===

/// `PRAGMA data_version` as another connection sees it: it changes when any commit
/// wrote the database.
fn data_version(c: &Connection) -> i64 {
    c.query_row("PRAGMA data_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn an_object_read_again_at_the_same_version_is_not_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = HubMetrics::default();
    let s = open_with(dir.path(), &metrics, 64, Duration::from_secs(1));
    s.upsert(key("a", "c1"), obj("a", "c1", 7, &[], "v7"))
        .unwrap();
    s.flush().unwrap();
    assert_eq!(metrics.cache_writes.get(), 1);
    let watcher = Connection::open(s.path()).unwrap();
    let before = data_version(&watcher);
    // kubelet GETs its Node every 10 s: the same object, the same resourceVersion.
    for _ in 0..3 {
        s.upsert(key("a", "c1"), obj("a", "c1", 7, &[], "v7"))
            .unwrap();
        s.flush().unwrap();
    }
    assert_eq!(metrics.cache_writes.get(), 1, "no row written again");
    assert_eq!(metrics.cache_unchanged_skipped.get(), 3);
    assert_eq!(
        data_version(&watcher),
        before,
        "no commit wrote the database (nothing to fsync)"
    );
    // A new version is written.
    s.upsert(key("a", "c1"), obj("a", "c1", 8, &[], "v8"))
        .unwrap();
    s.flush().unwrap();
    assert_eq!(metrics.cache_writes.get(), 2);
    assert_ne!(data_version(&watcher), before);
    assert_eq!(s.get(&key("a", "c1")).unwrap().unwrap().data, "v8");
    // The same version in other bytes (read in another format) replaces what is kept.
    let mut other = obj("a", "c1", 8, &[], "v8 as protobuf");
    other.format = Format::Protobuf;
    s.upsert(key("a", "c1"), other).unwrap();
    s.flush().unwrap();
    assert_eq!(metrics.cache_writes.get(), 3);
    let kept = s.get(&key("a", "c1")).unwrap().unwrap();
    assert_eq!(
        (kept.format, kept.data.as_ref()),
        (Format::Protobuf, b"v8 as protobuf".as_slice())
    );
}

#[test]
fn a_list_read_again_unchanged_writes_nothing_and_keeps_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = HubMetrics::default();
    let s = open_with(dir.path(), &metrics, 64, Duration::from_secs(1));
    let items = || {
        vec![
            obj("a", "c1", 1, &[("app", "web")], "1"),
            obj("a", "c2", 2, &[("app", "web")], "2"),
        ]
    };
    s.replace_list(
        "kubelet",
        "configmaps.v1.core",
        all_in("a"),
        list_meta(5),
        items(),
    )
    .unwrap();
    s.flush().unwrap();
    assert_eq!(metrics.cache_writes.get(), 2);
    let watcher = Connection::open(s.path()).unwrap();
    let before = data_version(&watcher);
    s.replace_list(
        "kubelet",
        "configmaps.v1.core",
        all_in("a"),
        list_meta(6),
        items(),
    )
    .unwrap();
    s.flush().unwrap();
    assert_eq!(metrics.cache_writes.get(), 2, "no item written again");
    assert_eq!(metrics.cache_unchanged_skipped.get(), 2);
    assert_eq!(
        data_version(&watcher),
        before,
        "no commit wrote the database"
    );
    assert_eq!(
        s.shapes("kubelet", "configmaps.v1.core").unwrap(),
        vec![(all_in("a"), "v1".to_owned(), "ConfigMapList".to_owned())]
    );
    // A later list without c2 and with c1 unchanged: c2 goes, c1 is not rewritten.
    s.replace_list(
        "kubelet",
        "configmaps.v1.core",
        all_in("a"),
        list_meta(7),
        vec![obj("a", "c1", 1, &[("app", "web")], "1")],
    )
    .unwrap();
    s.flush().unwrap();
    assert_eq!(metrics.cache_writes.get(), 2);
    assert_eq!(names(&s, "a"), ["c1"]);
    assert_eq!(s.shapes("kubelet", "configmaps.v1.core").unwrap().len(), 1);
}

// === a full disk, a full queue, corruption while running ===

fn open_with(dir: &Path, metrics: &HubMetrics, queue: usize, wait: Duration) -> Store {
    Store::open(
        &StoreConfig {
            batch_max: 64,
            queue_capacity: queue,
            write_wait: wait,
            ..StoreConfig::new(dir)
        },
        metrics.clone(),
    )
    .unwrap()
}

fn hold(s: &Store) -> mpsc::Sender<()> {
    s.hold_writer()
}

fn exec(s: &Store, sql: &str) {
    let (tx, rx) = mpsc::channel();
    s.count_queued(false);
    s.sender()
        .unwrap()
        .send(WriteOp::Exec(sql.to_owned(), tx))
        .unwrap();
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the writer ran the statement")
        .unwrap();
}

fn errors(metrics: &HubMetrics, reason: &str) -> u64 {
    metrics
        .cache_write_errors
        .get_or_create(&ReasonLabel {
            reason: reason.into(),
        })
        .get()
}

fn names(s: &Store, ns: &str) -> Vec<String> {
    s.list("kubelet", "configmaps.v1.core", ns)
        .unwrap()
        .into_iter()
        .map(|o| o.info.name)
        .collect()
}

fn all_in(ns: &str) -> Shape {
    Shape {
        namespace: ns.into(),
        label_selector: String::new(),
        field_selector: String::new(),
    }
}

#[test]
fn a_full_database_keeps_deletes_applies_them_first_and_retries_upserts_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = HubMetrics::default();
    let s = open_with(dir.path(), &metrics, 64, Duration::from_secs(5));
    for name in ["c1", "c2", "c3"] {
        s.upsert(key("a", name), obj("a", name, 1, &[], "small"))
            .unwrap();
    }
    s.flush().unwrap();
    // SQLite refuses to grow the file past this: SQLITE_FULL, as on a full disk.
    let pages: i64 = Connection::open(s.path())
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    exec(&s, &format!("PRAGMA max_page_count = {pages}"));
    let big = "x".repeat(256 * 1024);
    let release = hold(&s);
    s.delete(key("a", "c1"), 5).unwrap();
    s.upsert(key("a", "big"), obj("a", "big", 6, &[], &big))
        .unwrap();
    drop(release);
    let full = s.flush();
    assert!(
        full.as_ref().is_err_and(|e| e.to_string().contains("full")),
        "the batch failed for lack of space: {full:?}"
    );
    assert!(errors(&metrics, "disk_full") >= 1);
    assert!(s.get(&key("a", "c1")).unwrap().is_none(), "c1 is deleted");
    assert_eq!(names(&s, "a"), ["c2", "c3"]);
    assert_eq!(
        s.pending_deletes(),
        0,
        "the delete needed no new page and went in on its own"
    );
    assert_eq!(metrics.cache_pending_writes.get(), 1, "big waits for room");
    // Space comes back: the refused upsert lands at the next round.
    exec(&s, "PRAGMA max_page_count = 1073741823");
    s.flush().unwrap();
    assert_eq!(metrics.cache_pending_writes.get(), 0);
    assert_eq!(names(&s, "a"), ["big", "c2", "c3"], "nothing else lost");
    s.close();
    let s = store(dir.path());
    assert_eq!(names(&s, "a"), ["big", "c2", "c3"], "on disk");
}

#[test]
fn deletes_a_full_disk_refuses_are_never_served_and_land_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = HubMetrics::default();
    let s = open_with(dir.path(), &metrics, 64, Duration::from_secs(5));
    for name in ["c1", "c2", "c3", "c4"] {
        s.upsert(key("a", name), obj("a", name, 1, &[], "small"))
            .unwrap();
    }
    s.replace_list(
        "kubelet",
        "configmaps.v1.core",
        all_in("b"),
        list_meta(2),
        vec![
            obj("b", "gone", 1, &[], "g"),
            obj("b", "stays", 1, &[], "s"),
        ],
    )
    .unwrap();
    s.flush().unwrap();
    // A disk where not even a delete fits.
    s.inner.shared.fail_writes.store(true, Ordering::Release);
    s.delete(key("a", "c1"), 0).unwrap();
    s.upsert(key("a", "c2"), obj("a", "c2", 2, &[], "newer"))
        .unwrap();
    // The list says `gone` is gone upstream.
    s.replace_list(
        "kubelet",
        "configmaps.v1.core",
        all_in("b"),
        list_meta(3),
        vec![obj("b", "stays", 1, &[], "s")],
    )
    .unwrap();
    assert!(s.flush().is_err(), "the disk is full");
    assert!(errors(&metrics, "disk_full") >= 1);
    assert_eq!(s.pending_deletes(), 2, "c1 and b/gone wait in memory");
    assert_eq!(metrics.cache_pending_deletes.get(), 2);
    assert!(
        s.get(&key("a", "c1")).unwrap().is_none(),
        "deleted, not served"
    );
    assert!(s.get(&key("b", "gone")).unwrap().is_none());
    assert_eq!(names(&s, "a"), ["c2", "c3", "c4"]);
    assert_eq!(names(&s, "b"), ["stays"]);
    assert_eq!(
        s.get(&key("a", "c2")).unwrap().unwrap().data,
        "small",
        "the refused update is not there yet"
    );
    // Still full at the next round: nothing is lost from memory.
    assert!(s.flush().is_err());
    assert_eq!(s.pending_deletes(), 2);
    // Space returns.
    s.inner.shared.fail_writes.store(false, Ordering::Release);
    s.flush().unwrap();
    assert_eq!(s.pending_deletes(), 0);
    assert_eq!(metrics.cache_pending_deletes.get(), 0);
    assert_eq!(s.get(&key("a", "c2")).unwrap().unwrap().data, "newer");
    s.close();
    let s = store(dir.path());
    assert!(s.get(&key("a", "c1")).unwrap().is_none(), "deleted on disk");
    assert_eq!(names(&s, "a"), ["c2", "c3", "c4"]);
    assert_eq!(names(&s, "b"), ["stays"]);
    assert_eq!(
        s.shapes("kubelet", "configmaps.v1.core").unwrap().len(),
        1,
        "the list landed whole"
    );
}

#[test]
fn a_delete_held_in_memory_keeps_an_older_queued_upsert_out() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = HubMetrics::default();
    let s = open_with(dir.path(), &metrics, 1, Duration::from_millis(50));
    s.upsert(key("a", "p"), obj("a", "p", 3, &[], "v3"))
        .unwrap();
    s.flush().unwrap();
    let release = hold(&s);
    // An update seen at 4 waits in the (full) queue; the delete at 5 finds no room.
    s.upsert(key("a", "p"), obj("a", "p", 4, &[], "v4"))
        .unwrap();
    s.delete(key("a", "p"), 5).unwrap();
    assert_eq!(s.pending_deletes(), 1, "the delete went to memory at once");
    assert!(s.get(&key("a", "p")).unwrap().is_none());
    drop(release);
    s.flush().unwrap();
    assert!(
        s.get(&key("a", "p")).unwrap().is_none(),
        "the older update did not bring it back"
    );
    assert_eq!(s.count().unwrap(), 0);
}

#[test]
fn a_full_queue_drops_upserts_and_their_shapes_wait_for_a_newer_list() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = HubMetrics::default();
    let s = open_with(dir.path(), &metrics, 2, Duration::from_millis(50));
    s.replace_list(
        "kubelet",
        "configmaps.v1.core",
        all_in("a"),
        list_meta(10),
        vec![obj("a", "c1", 10, &[], "1")],
    )
    .unwrap();
    s.flush().unwrap();
    assert_eq!(s.shapes("kubelet", "configmaps.v1.core").unwrap().len(), 1);
    let release = hold(&s);
    s.upsert(key("a", "c2"), obj("a", "c2", 11, &[], "2"))
        .unwrap();
    s.upsert(key("a", "c3"), obj("a", "c3", 12, &[], "3"))
        .unwrap();
    let started = Instant::now();
    let dropped = s.upsert(key("a", "c4"), obj("a", "c4", 13, &[], "4"));
    assert!(
        matches!(dropped, Err(StoreError::QueueFull { .. })),
        "{dropped:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(50), "it waited");
    assert_eq!(s.queue_len(), 2, "the queue never grows past its bound");
    assert_eq!(errors(&metrics, "dropped"), 1);
    assert!(
        s.shapes("kubelet", "configmaps.v1.core")
            .unwrap()
            .is_empty(),
        "the list of `a` may miss c4: not served as complete"
    );
    drop(release);
    s.flush().unwrap();
    assert_eq!(metrics.cache_incomplete_shapes.get(), 1);
    // A list older than the dropped write does not make the shape complete again.
    s.replace_list(
        "kubelet",
        "configmaps.v1.core",
        all_in("a"),
        list_meta(12),
        vec![obj("a", "c1", 10, &[], "1")],
    )
    .unwrap();
    s.flush().unwrap();
    assert!(
        s.shapes("kubelet", "configmaps.v1.core")
            .unwrap()
            .is_empty()
    );
    s.close();
    let s = store(dir.path());
    assert!(
        s.shapes("kubelet", "configmaps.v1.core")
            .unwrap()
            .is_empty(),
        "the shape's record was deleted on disk too"
    );
    s.replace_list(
        "kubelet",
        "configmaps.v1.core",
        all_in("a"),
        list_meta(13),
        vec![obj("a", "c4", 13, &[], "4")],
    )
    .unwrap();
    s.flush().unwrap();
    assert_eq!(s.shapes("kubelet", "configmaps.v1.core").unwrap().len(), 1);
}

#[tokio::test]
async fn the_async_side_awaits_room_for_a_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = HubMetrics::default();
    let s = open_with(dir.path(), &metrics, 1, Duration::from_millis(100));
    let release = hold(&s);
    s.upsert_async(key("a", "c1"), obj("a", "c1", 1, &[], "1"))
        .await
        .unwrap();
    // Room comes while it waits: `join!` polls the upsert first, so it finds the queue
    // full and waits before the writer is let go.
    let (landed, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(
            s.upsert_async(key("a", "c2"), obj("a", "c2", 2, &[], "2")),
            async move { drop(release) }
        )
    })
    .await
    .expect("the waiting upsert finished");
    assert!(landed.is_ok(), "{landed:?}");
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || s2.flush())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(&s, "a"), ["c1", "c2"]);
    // No room comes: it gives up after the wait.
    let _release = hold(&s);
    s.upsert_async(key("a", "c3"), obj("a", "c3", 3, &[], "3"))
        .await
        .unwrap();
    let gave_up = tokio::time::timeout(
        Duration::from_secs(10),
        s.upsert_async(key("a", "c4"), obj("a", "c4", 4, &[], "4")),
    )
    .await
    .expect("bounded");
    assert!(
        matches!(gave_up, Err(StoreError::QueueFull { waited }) if waited >= Duration::from_millis(100)),
        "{gave_up:?}"
    );
    assert!(
        s.try_upsert(key("a", "c5"), obj("a", "c5", 5, &[], "5"))
            .is_err_and(|e| matches!(e, StoreError::QueueFull { .. }))
    );
    assert_eq!(errors(&metrics, "dropped"), 2);
}

#[test]
fn a_corrupt_row_is_hidden_at_once_and_a_refill_at_the_same_version_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = HubMetrics::default();
    let s = open_with(dir.path(), &metrics, 64, Duration::from_secs(1));
    s.upsert(key("a", "c1"), obj("a", "c1", 7, &[], "good"))
        .unwrap();
    s.flush().unwrap();
    let c = Connection::open(s.path()).unwrap();
    c.execute("UPDATE objects SET data=X'626164' WHERE name='c1'", [])
        .unwrap();
    drop(c);
    let release = hold(&s);
    assert!(s.get(&key("a", "c1")).unwrap().is_none(), "a miss");
    assert!(s.get(&key("a", "c1")).unwrap().is_none());
    assert!(names(&s, "a").is_empty());
    assert_eq!(
        metrics.cache_corrupt_entries.get(),
        1,
        "hidden after the first read, counted once"
    );
    // The hub reads it again from the API server, unchanged (same resourceVersion).
    s.upsert(key("a", "c1"), obj("a", "c1", 7, &[], "good"))
        .unwrap();
    drop(release);
    s.flush().unwrap();
    assert_eq!(s.get(&key("a", "c1")).unwrap().unwrap().data, "good");
}

#[test]
fn a_database_file_corrupted_while_running_is_set_aside_and_refilled() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = HubMetrics::default();
    let s = open_with(dir.path(), &metrics, 64, Duration::from_secs(1));
    for i in 0..50 {
        let name = format!("c{i}");
        s.upsert(key("a", &name), obj("a", &name, 1, &[], &"v".repeat(200)))
            .unwrap();
    }
    s.flush().unwrap();
    exec(&s, "PRAGMA wal_checkpoint(TRUNCATE)");
    // Garbage over every page after the first (the tables' b-trees).
    let db = s.path().to_owned();
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len > 8192, "the objects fill more than one page");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.seek(SeekFrom::Start(4096)).unwrap();
        f.write_all(&vec![0xA5; usize::try_from(len).unwrap() - 4096])
            .unwrap();
        f.sync_all().unwrap();
    }
    let read = s.get(&key("a", "c1"));
    assert!(
        matches!(read, Err(StoreError::Corrupt { .. })),
        "the damage is reported, nothing served: {read:?}"
    );
    // The writer replaces the database at its next round.
    s.flush().unwrap();
    assert_eq!(metrics.cache_resets.get(), 1);
    assert!(s.get(&key("a", "c1")).unwrap().is_none(), "a miss now");
    assert_eq!(s.count().unwrap(), 0);
    let set_aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("cache.db.corrupt-")
        })
        .count();
    assert_eq!(set_aside, 1, "the damaged file is kept aside");
    // Online again, the hub refills it.
    s.upsert(key("a", "c1"), obj("a", "c1", 2, &[], "fresh"))
        .unwrap();
    s.flush().unwrap();
    assert_eq!(s.get(&key("a", "c1")).unwrap().unwrap().data, "fresh");
    assert!(s.writer_running());
}
