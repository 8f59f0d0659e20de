//! The one thread that writes the cache: it takes writes off the bounded queue in
//! batches (one transaction and one fsync per batch), applies deletes and shape markers
//! held in the overlay first, retries what a full disk refused, skips an item that
//! panics, and replaces a database found corrupt.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params};

use super::overlay::{PendingMarker, Tombstone};
use super::rows::{crc, decode_map, encode_map};
use super::{ListMeta, ObjectKey, Shape, Shared, StoreError, open_checked, quarantine};
use crate::codec::{ObjectInfo, RawObject};

/// How often the writer wakes without new writes to retry what failed and to look for
/// a corruption a reader found.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// One queued write.
pub(super) enum WriteOp {
    Upsert(ObjectKey, RawObject),
    /// A deletion seen at a resourceVersion (0: unconditional).
    Delete(ObjectKey, u64),
    ReplaceList {
        component: String,
        gvr: String,
        shape: Shape,
        meta: ListMeta,
        items: Vec<RawObject>,
    },
    Flush(mpsc::Sender<std::result::Result<(), String>>),
    /// Nothing to write: look at the overlay and the corruption flag now.
    Wake,
    /// Panics inside the writer (tests of the writer's panic guard).
    #[cfg(test)]
    Panic,
    /// Runs SQL on the writer's connection outside any batch (tests cap the database
    /// with `PRAGMA max_page_count` to make the disk full).
    #[cfg(test)]
    Exec(String, mpsc::Sender<rusqlite::Result<()>>),
    /// Holds the writer until the sender side is dropped or sends (tests queue writes
    /// behind it to get them into one batch).
    #[cfg(test)]
    Hold(mpsc::Receiver<()>),
}

/// Why a batch failed.
enum Failure {
    Panic(String),
    Sqlite(rusqlite::Error),
}

pub(super) struct Writer {
    pub(super) conn: Option<Connection>,
    pub(super) shared: Arc<Shared>,
    pub(super) rx: flume::Receiver<WriteOp>,
    pub(super) batch_max: usize,
    /// Most writes kept for a retry after a full disk refused them.
    pub(super) pending_max: usize,
    /// Upserts and list replacements a full disk (or an I/O error) refused, retried once
    /// the overlay's deletes are through.
    pub(super) pending: VecDeque<WriteOp>,
    /// A flush reports every failure since the previous flush, not only its own
    /// batch's: the writes it vouches for may have been committed (or not) earlier.
    pub(super) failure: Option<String>,
    pub(super) counted: Instant,
    /// The disk was full at the last attempt (logged once per episode).
    pub(super) disk_full: bool,
}

fn error_reason(e: &rusqlite::Error) -> &'static str {
    if quarantine::is_corruption(e) {
        return "corrupt";
    }
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => "disk_full",
        Some(rusqlite::ErrorCode::SystemIoFailure) => "io",
        _ => "other",
    }
}

/// Whether a write that failed with `e` may succeed later as it is (space comes back,
/// the disk recovers, the database is replaced).
fn retryable(e: &rusqlite::Error) -> bool {
    matches!(error_reason(e), "disk_full" | "io" | "corrupt")
}

impl Writer {
    pub(super) fn run(mut self) {
        loop {
            let first = match self.rx.recv_timeout(RETRY_EVERY) {
                #[cfg(test)]
                Ok(WriteOp::Hold(release)) => {
                    let _ = release.recv();
                    None
                }
                Ok(op) => Some(op),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => break,
            };
            if first.is_none() && !self.has_work() {
                continue;
            }
            let mut batch: Vec<WriteOp> = first.into_iter().collect();
            while batch.len() < self.batch_max {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.shared
                .metrics
                .cache_write_queue_depth
                .set(i64::try_from(self.rx.len()).unwrap_or(i64::MAX));
            let taken = batch.len() as u64;
            if let Err(e) = self.round(batch) {
                tracing::error!(path = %self.shared.path.display(), error = %e, "the cache writer stops: no usable database");
                return;
            }
            // Counted once applied: a tombstone must outlive the older writes of the
            // batch being applied, not only those still queued.
            self.shared.dequeued.fetch_add(taken, Ordering::AcqRel);
        }
        // Closing: one last try of what a full disk refused.
        let _ = self.round(Vec::new());
    }

    /// Whether an idle round has something to do.
    fn has_work(&self) -> bool {
        self.shared.corrupt_seen.load(Ordering::Acquire)
            || !self.pending.is_empty()
            || self.shared.overlay.lock().is_ok_and(|o| !o.is_settled())
    }

    fn conn(&mut self) -> Result<&mut Connection, StoreError> {
        self.conn.as_mut().ok_or(StoreError::Closed)
    }

    /// One round: a corruption a reader found, the overlay's deletes and markers, the
    /// writes a full disk refused, then `batch`.
    fn round(&mut self, batch: Vec<WriteOp>) -> Result<(), StoreError> {
        if self.shared.corrupt_seen.swap(false, Ordering::AcqRel) {
            self.reset("a read found the database file corrupt")?;
        }
        let mut ops = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        for op in batch {
            match op {
                WriteOp::Flush(done) => flushes.push(done),
                WriteOp::Wake => {}
                #[cfg(test)]
                WriteOp::Exec(sql, done) => {
                    let _ = done.send(self.conn()?.execute_batch(&sql));
                }
                op => ops.push(op),
            }
        }
        self.apply_overlay()?;
        let deletes_through = self
            .shared
            .overlay
            .lock()
            .is_ok_and(|o| o.pending_deletes() == 0);
        if deletes_through && !self.pending.is_empty() {
            let retry: Vec<WriteOp> = self.pending.drain(..).collect();
            self.commit_ops(retry)?;
        }
        self.commit_ops(ops)?;
        // Deletes a failed batch just left in the overlay go in at once if they can.
        self.apply_overlay()?;
        self.publish();
        for done in flushes {
            let _ = done.send(match self.failure.take() {
                Some(e) => Err(e),
                None => Ok(()),
            });
        }
        Ok(())
    }

    fn publish(&mut self) {
        let dequeued = self.shared.dequeued.load(Ordering::Acquire);
        let metrics = &self.shared.metrics;
        if let Ok(mut o) = self.shared.overlay.lock() {
            o.forget_settled(dequeued);
            metrics
                .cache_pending_deletes
                .set(i64::try_from(o.pending_deletes()).unwrap_or(i64::MAX));
            metrics
                .cache_incomplete_shapes
                .set(i64::try_from(o.markers()).unwrap_or(i64::MAX));
        }
        metrics
            .cache_pending_writes
            .set(i64::try_from(self.pending.len()).unwrap_or(i64::MAX));
        if self.counted.elapsed() >= Duration::from_secs(1)
            && let Some(conn) = self.conn.as_ref()
            && let Ok(n) =
                conn.query_row("SELECT count(*) FROM objects", [], |r| r.get::<_, i64>(0))
        {
            metrics.cache_objects.set(n);
            self.counted = Instant::now();
        }
    }

    /// Commits the overlay's deletes and shape markers in one transaction (deletes free
    /// space, so they go first and may succeed where the batch failed).
    fn apply_overlay(&mut self) -> Result<(), StoreError> {
        let (tombs, markers) = match self.shared.overlay.lock() {
            Ok(o) => (o.unapplied(), o.unapplied_markers()),
            Err(_) => return Ok(()),
        };
        if tombs.is_empty() && markers.is_empty() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let result = apply_overlay(&shared, self.conn()?, &tombs, &markers);
        match result {
            Ok(()) => {
                let dequeued = self.shared.dequeued.load(Ordering::Acquire);
                if let Ok(mut o) = self.shared.overlay.lock() {
                    o.applied(&tombs, dequeued);
                    o.markers_applied(&markers);
                }
                Ok(())
            }
            Err(e) => {
                self.count_failure(&e);
                if quarantine::is_corruption(&e) {
                    self.reset("a write found the database file corrupt")?;
                }
                Ok(())
            }
        }
    }

    /// Commits `ops` in one transaction; on a failure, deletes go to the overlay and the
    /// rest is kept for a retry (or dropped and its shapes marked incomplete).
    fn commit_ops(&mut self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let shared = self.shared.clone();
        match commit(self.conn()?, &ops, &shared) {
            Ok(written) => self.committed(written),
            // A bug met by one item must not stop the writer for good (every later write
            // would fail and the node would still look autonomous): redo the batch item
            // by item and drop only the items that panic.
            Err(Failure::Panic(_)) => {
                for op in ops {
                    match commit(self.conn()?, std::slice::from_ref(&op), &shared) {
                        Ok(n) => self.committed(n),
                        Err(Failure::Panic(panic)) => {
                            tracing::error!(path = %shared.path.display(), panic = %panic, "a cache write panicked; that item is skipped");
                            self.failure
                                .get_or_insert_with(|| format!("a cache write panicked: {panic}"));
                            shared.count_error("panic");
                        }
                        Err(Failure::Sqlite(e)) => self.failed(vec![op], &e)?,
                    }
                }
            }
            Err(Failure::Sqlite(e)) => self.failed(ops, &e)?,
        }
        Ok(())
    }

    fn committed(&mut self, written: u64) {
        self.shared.metrics.cache_writes.inc_by(written);
        if self.disk_full {
            self.disk_full = false;
            tracing::info!(path = %self.shared.path.display(), "the cache disk has room again: caching resumed");
        }
    }

    fn count_failure(&mut self, e: &rusqlite::Error) {
        let reason = error_reason(e);
        if reason == "disk_full" {
            if !self.disk_full {
                tracing::error!(path = %self.shared.path.display(), "cache disk is full: new objects are not cached, deletes are kept in memory and applied first when space returns; serving continues from what is cached");
            }
            self.disk_full = true;
        } else {
            tracing::warn!(path = %self.shared.path.display(), error = %e, "cache write failed");
        }
        self.shared.count_error(reason);
        self.failure.get_or_insert_with(|| e.to_string());
    }

    fn failed(&mut self, ops: Vec<WriteOp>, e: &rusqlite::Error) -> Result<(), StoreError> {
        self.count_failure(e);
        if quarantine::is_corruption(e) {
            self.reset("a write found the database file corrupt")?;
        }
        let keep = retryable(e);
        for op in ops {
            match op {
                WriteOp::Delete(key, rv) => self.shared.tombstone(&key, rv, None),
                WriteOp::ReplaceList {
                    ref component,
                    ref gvr,
                    ref shape,
                    ref meta,
                    ref items,
                } => {
                    // What the list says is gone must not be served while it waits.
                    if let Some(conn) = self.conn.as_ref() {
                        match list_removals(conn, component, gvr, shape, meta, items) {
                            Ok(gone) => {
                                for key in gone {
                                    self.shared.tombstone(&key, meta.resource_version, None);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "objects a list removed could not be found")
                            }
                        }
                    }
                    self.keep(op, keep);
                }
                op => self.keep(op, keep),
            }
        }
        Ok(())
    }

    /// Keeps `op` for a retry, or drops it (its shapes are marked incomplete).
    fn keep(&mut self, op: WriteOp, retry: bool) {
        if !retry {
            self.shared.dropped(&op);
            return;
        }
        if self.pending.len() >= self.pending_max
            && let Some(oldest) = self.pending.pop_front()
        {
            self.shared.dropped(&oldest);
        }
        self.pending.push_back(op);
    }

    /// Sets the database aside and starts an empty one (the hub refills it online).
    fn reset(&mut self, why: &str) -> Result<(), StoreError> {
        let path = self.shared.path.clone();
        drop(self.conn.take());
        // Readers must not reuse connections to the old file.
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        let aside = quarantine::set_aside(&path);
        tracing::error!(path = %path.display(), set_aside = %aside.display(), why, "cache database corrupt while running: set aside, continuing with an empty one that the hub refills from the API server");
        self.shared.metrics.cache_resets.inc();
        let conn = open_checked(&path)?;
        self.conn = Some(conn);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// Tests make every write fail as on a disk where not even a delete fits.
#[cfg(test)]
fn fail_if_told(shared: &Shared) -> rusqlite::Result<()> {
    if shared.fail_writes.load(Ordering::Acquire) {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("disk full (test fault)".into()),
        ));
    }
    Ok(())
}

fn apply_overlay(
    shared: &Shared,
    conn: &mut Connection,
    tombs: &[(ObjectKey, Tombstone)],
    markers: &[PendingMarker],
) -> rusqlite::Result<()> {
    #[cfg(test)]
    fail_if_told(shared)?;
    #[cfg(not(test))]
    let _ = shared;
    let tx = conn.transaction()?;
    for (key, t) in tombs {
        tx.prepare_cached(
            "DELETE FROM objects WHERE component=?1 AND gvr=?2 AND namespace=?3 AND name=?4
             AND (?5 = 0 OR rv <= ?5) AND (?6 IS NULL OR crc = ?6)",
        )?
        .execute(params![
            key.component,
            key.gvr,
            key.namespace,
            key.name,
            t.rv.cast_signed(),
            t.crc
        ])?;
    }
    for m in markers {
        tx.prepare_cached(
            "DELETE FROM shapes WHERE component=?1 AND gvr=?2
             AND (?3 IS NULL OR namespace='' OR namespace=?3)",
        )?
        .execute(params![m.component, m.gvr, m.namespace])?;
    }
    tx.commit()
}

/// Commits `ops` in one transaction (rolled back on any failure, a panic included).
fn commit(conn: &mut Connection, ops: &[WriteOp], shared: &Shared) -> Result<u64, Failure> {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        #[cfg(test)]
        fail_if_told(shared)?;
        let tx = conn.transaction()?;
        let mut written = 0;
        for op in ops {
            written += apply(&tx, op, shared)?;
        }
        tx.commit()?;
        Ok(written)
    }));
    match run {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(Failure::Sqlite(e)),
        Err(p) => Err(Failure::Panic(
            p.downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned()),
        )),
    }
}

fn upsert_row(
    tx: &rusqlite::Transaction<'_>,
    key: &ObjectKey,
    obj: &RawObject,
    shared: &Shared,
) -> rusqlite::Result<usize> {
    // An upsert older than a delete still in the overlay would bring the object back.
    if shared.overlay.lock().is_ok_and(|o| {
        o.tombstone_of(key)
            .is_some_and(|t| t.blocks_upsert(obj.info.rv()))
    }) {
        return Ok(0);
    }
    if unchanged(tx, key, obj)? {
        shared.metrics.cache_unchanged_skipped.inc();
        return Ok(0);
    }
    let labels = encode_map(&obj.info.labels);
    let fields = encode_map(&obj.info.fields);
    let mut stmt = tx.prepare_cached(
        "INSERT INTO objects (component, gvr, namespace, name, rv, resource_version, format, api_version, kind, labels, fields, data, crc)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (component, gvr, namespace, name) DO UPDATE SET
           rv=excluded.rv, resource_version=excluded.resource_version, format=excluded.format,
           api_version=excluded.api_version, kind=excluded.kind, labels=excluded.labels,
           fields=excluded.fields, data=excluded.data, crc=excluded.crc
         WHERE excluded.rv >= objects.rv",
    )?;
    stmt.execute(params![
        key.component,
        key.gvr,
        key.namespace,
        key.name,
        i64::try_from(obj.info.rv()).unwrap_or(i64::MAX),
        obj.info.resource_version,
        obj.format.to_i64(),
        obj.api_version,
        obj.kind,
        labels,
        fields,
        obj.data.as_ref(),
        crc(&obj.data),
    ])
}

/// Whether the row of `key` already holds `obj` as it is (the same resourceVersion,
/// format and bytes, and an intact checksum): rewriting it would change nothing but cost
/// a commit and an fsync. A transaction whose writes are all skipped writes nothing.
fn unchanged(
    tx: &rusqlite::Transaction<'_>,
    key: &ObjectKey,
    obj: &RawObject,
) -> rusqlite::Result<bool> {
    let new_crc = crc(&obj.data);
    tx.prepare_cached(
        "SELECT resource_version, format, crc, data FROM objects
         WHERE component=?1 AND gvr=?2 AND namespace=?3 AND name=?4",
    )?
    .query_row(
        params![key.component, key.gvr, key.namespace, key.name],
        |r| {
            // The bytes are read only when everything cheaper matches.
            Ok(
                r.get_ref(0)?.as_str().ok() == Some(obj.info.resource_version.as_str())
                    && r.get::<_, i64>(1)? == obj.format.to_i64()
                    && r.get::<_, i64>(2)? == new_crc
                    && matches!(r.get_ref(3)?, ValueRef::Blob(b) if b == obj.data.as_ref()),
            )
        },
    )
    .optional()
    .map(|same| same.unwrap_or(false))
}

/// What a list replacement reads of each stored object: enough to select it by shape.
struct IndexRow {
    namespace: String,
    name: String,
    labels: Vec<u8>,
    fields: Vec<u8>,
    rv: i64,
}

/// The stored objects a complete LIST of `shape` removes: those the shape selects that
/// the list no longer has, unless a watch event newer than the list wrote them (the list
/// was taken before they existed). Reads only, so it works on a full disk.
pub(super) fn list_removals(
    conn: &Connection,
    component: &str,
    gvr: &str,
    shape: &Shape,
    meta: &ListMeta,
    items: &[RawObject],
) -> rusqlite::Result<Vec<ObjectKey>> {
    let list_rv = meta.resource_version.cast_signed();
    let keep: HashSet<(&str, &str)> = items
        .iter()
        .map(|i| (i.info.namespace.as_str(), i.info.name.as_str()))
        .collect();
    let existing: Vec<IndexRow> = {
        let mut stmt = conn.prepare_cached(
            "SELECT namespace, name, labels, fields, rv FROM objects WHERE component=?1 AND gvr=?2",
        )?;
        stmt.query_map(params![component, gvr], |r| {
            Ok(IndexRow {
                namespace: r.get(0)?,
                name: r.get(1)?,
                labels: r.get(2)?,
                fields: r.get(3)?,
                rv: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?
    };
    let mut gone = Vec::new();
    for row in existing {
        if keep.contains(&(row.namespace.as_str(), row.name.as_str()))
            || (list_rv > 0 && row.rv > list_rv)
        {
            continue;
        }
        let info = ObjectInfo {
            name: row.name,
            namespace: row.namespace,
            resource_version: String::new(),
            labels: decode_map(&row.labels).unwrap_or_default(),
            fields: decode_map(&row.fields).unwrap_or_default(),
        };
        if shape.selects(&info) {
            gone.push(ObjectKey {
                component: component.to_owned(),
                gvr: gvr.to_owned(),
                namespace: info.namespace,
                name: info.name,
            });
        }
    }
    Ok(gone)
}

fn apply(tx: &rusqlite::Transaction<'_>, op: &WriteOp, shared: &Shared) -> rusqlite::Result<u64> {
    match op {
        #[cfg(test)]
        WriteOp::Panic => panic!("a write that panics"),
        WriteOp::Upsert(key, obj) => upsert_row(tx, key, obj, shared).map(|n| n as u64),
        // A deletion never removes a newer version than the one it saw (a late event
        // must not undo a later write).
        WriteOp::Delete(key, rv) => {
            tx.prepare_cached(
                "DELETE FROM objects WHERE component=?1 AND gvr=?2 AND namespace=?3 AND name=?4 AND (?5 = 0 OR rv <= ?5)",
            )?
            .execute(params![key.component, key.gvr, key.namespace, key.name, rv.cast_signed()])?;
            Ok(0)
        }
        WriteOp::ReplaceList {
            component,
            gvr,
            shape,
            meta,
            items,
        } => {
            for key in list_removals(tx, component, gvr, shape, meta, items)? {
                tx.prepare_cached(
                    "DELETE FROM objects WHERE component=?1 AND gvr=?2 AND namespace=?3 AND name=?4",
                )?
                .execute(params![key.component, key.gvr, key.namespace, key.name])?;
            }
            let mut written = 0;
            for item in items {
                let key = ObjectKey {
                    component: component.clone(),
                    gvr: gvr.clone(),
                    namespace: item.info.namespace.clone(),
                    name: item.info.name.clone(),
                };
                written += upsert_row(tx, &key, item, shared)? as u64;
            }
            // A list older than a write dropped for this shape is not complete.
            let outdated = shared.overlay.lock().map_or(true, |o| {
                o.outdates_list(component, gvr, shape, meta.resource_version)
            });
            if !outdated {
                // A shape already recorded as it is is left alone (no write).
                tx.prepare_cached(
                    "INSERT INTO shapes (component, gvr, namespace, label_selector, field_selector, list_api_version, list_kind)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (component, gvr, namespace, label_selector, field_selector) DO UPDATE SET
                       list_api_version=excluded.list_api_version, list_kind=excluded.list_kind
                     WHERE list_api_version != excluded.list_api_version OR list_kind != excluded.list_kind",
                )?
                .execute(params![
                    component,
                    gvr,
                    shape.namespace,
                    shape.label_selector,
                    shape.field_selector,
                    meta.api_version,
                    meta.kind
                ])?;
            }
            Ok(written)
        }
        WriteOp::Flush(_) | WriteOp::Wake => Ok(0),
        #[cfg(test)]
        WriteOp::Exec(..) | WriteOp::Hold(_) => Ok(0),
    }
}
