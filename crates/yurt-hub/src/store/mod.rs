//! The hub's durable cache: every object a cache agent read, once per (component,
//! resource, namespace, name), plus the list shapes (namespace and selectors) each
//! component listed in full.
//!
//! Built on SQLite (WAL, `synchronous=FULL`): a write is acknowledged only once its
//! transaction is on disk, and a killed process restarts from the last committed state.
//! One writer thread ([`writer`]) applies writes in batches, one transaction and one
//! fsync per batch (group commit), taken off a bounded queue. An object it already
//! holds unchanged (same resourceVersion, format and bytes) is not written again, so a
//! batch of such reads makes no fsync.
//!
//! - Backpressure: the queue holds at most [`StoreConfig::queue_capacity`] writes. A
//!   writer waits at most [`StoreConfig::write_wait`] for room (the async side awaits
//!   it; the blocking side blocks its blocking thread). A write that still finds no room
//!   is dropped rather than held in memory: a delete goes to the in-memory overlay
//!   instead (never lost, never waited for), an upsert or list is counted
//!   (`cache_write_errors{reason="dropped"}`) and the list shapes that may hold the
//!   object are marked incomplete, so they are not served offline until a fresh complete
//!   LIST at or after that resourceVersion is recorded ([`overlay`]).
//! - A full disk: deletes a failed batch held (watch DELETED events and objects a LIST
//!   no longer has) are kept in the overlay, consulted by every read so an object gone
//!   upstream is never served, and applied first on every later round (they free
//!   space); refused upserts are kept (bounded) and retried after them.
//! - Corruption: each object carries a CRC32 of its bytes, checked on every read; a torn
//!   or corrupted row is never served, counted, reported as a miss and removed. A
//!   database file that cannot be opened or fails its integrity check at start, or
//!   reports itself corrupt while running, is set aside ([`quarantine`]) and replaced by
//!   an empty one (the hub refills it from the API server).

mod overlay;
mod quarantine;
mod rows;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use crate::codec::{Format, ObjectInfo, RawObject};
use crate::metrics::{HubMetrics, ReasonLabel};
use crate::selector::{FieldSelector, LabelSelector};
use overlay::{Overlay, Tombstone};
use rows::{ROW_COLUMNS, SCHEMA, SCHEMA_VERSION, StoredRow, crc, decode_map};
use writer::{WriteOp, Writer};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("cache database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The error.
        #[source]
        source: rusqlite::Error,
    },
    /// The cache folder could not be prepared.
    #[error("cache folder {path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread is gone (the store is shutting down).
    #[error("the cache writer has stopped")]
    Closed,
    /// A batch could not be committed.
    #[error("cache commit failed: {0}")]
    Commit(String),
    /// The write queue stayed full for the whole wait: the write was dropped (and the
    /// shapes that may hold it marked incomplete).
    #[error("the cache write queue stayed full for {waited:?}; the write was dropped")]
    QueueFull {
        /// How long it waited for room.
        waited: Duration,
    },
    /// The database file reported itself corrupt; it is being set aside and replaced.
    #[error("cache database {path} is corrupt; it is being replaced by an empty one")]
    Corrupt {
        /// The database file.
        path: PathBuf,
    },
}

/// Result alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Identifies one cached object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The client component that read it (`kubelet`).
    pub component: String,
    /// `resource.version.group`.
    pub gvr: String,
    /// Namespace ("" for cluster-scoped).
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// A list shape a component read in full.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    /// The namespace listed ("" = all namespaces).
    pub namespace: String,
    /// Label selector ("" = none).
    pub label_selector: String,
    /// Field selector ("" = none).
    pub field_selector: String,
}

impl Shape {
    /// Whether every object this shape selects is also selected by `broader` (so a
    /// complete listing of `broader` answers this shape too).
    pub fn covered_by(&self, broader: &Shape) -> bool {
        let ns_ok = broader.namespace.is_empty() || broader.namespace == self.namespace;
        let labels_ok =
            broader.label_selector.is_empty() || broader.label_selector == self.label_selector;
        let fields_ok =
            broader.field_selector.is_empty() || broader.field_selector == self.field_selector;
        ns_ok && labels_ok && fields_ok
    }

    /// Whether `obj` belongs to this shape. A selector that does not parse selects
    /// nothing, so replacing such a shape's list never deletes anything.
    pub fn selects(&self, info: &ObjectInfo) -> bool {
        if !self.namespace.is_empty() && info.namespace != self.namespace {
            return false;
        }
        match (
            LabelSelector::parse(&self.label_selector),
            FieldSelector::parse(&self.field_selector),
        ) {
            (Ok(labels), Ok(fields)) => {
                labels.matches(&info.labels) && fields.matches(|f| info.field(f))
            }
            _ => false,
        }
    }
}

/// What a LIST response says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListMeta {
    /// The list's `apiVersion`.
    pub api_version: String,
    /// The list's `kind` (`PodList`).
    pub kind: String,
    /// The list's `metadata.resourceVersion` as a number (0 if it is not one).
    pub resource_version: u64,
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The cache folder (holds `cache.db`).
    pub dir: PathBuf,
    /// Most writes per transaction.
    pub batch_max: usize,
    /// Most writes waiting for the writer (a LIST counts as one). Also bounds the writes
    /// a full disk refused that are kept for a retry.
    pub queue_capacity: usize,
    /// How long a write waits for room in a full queue before it is dropped.
    pub write_wait: Duration,
}

impl StoreConfig {
    /// Default [`StoreConfig::queue_capacity`].
    pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;
    /// Default [`StoreConfig::write_wait`].
    pub const DEFAULT_WRITE_WAIT: Duration = Duration::from_secs(1);

    /// Settings for a cache in `dir` with the default batch, queue and wait.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            batch_max: 512,
            queue_capacity: Self::DEFAULT_QUEUE_CAPACITY,
            write_wait: Self::DEFAULT_WRITE_WAIT,
        }
    }
}

/// What the writer and the readers share.
struct Shared {
    path: PathBuf,
    metrics: HubMetrics,
    /// Deletes and incomplete shapes not on disk yet.
    overlay: Mutex<Overlay>,
    /// Bumped when the database file is replaced: pooled readers of an older one are
    /// dropped.
    generation: AtomicU64,
    /// A reader met SQLITE_CORRUPT or SQLITE_NOTADB: the writer replaces the database.
    corrupt_seen: AtomicBool,
    /// Writes put on the queue (counted before they are sent).
    queued: AtomicU64,
    /// Writes the writer took off the queue and applied (or kept for a retry).
    dequeued: AtomicU64,
    /// Every commit fails with SQLITE_FULL (tests).
    #[cfg(test)]
    fail_writes: AtomicBool,
}

impl Shared {
    fn count_error(&self, reason: &str) {
        self.metrics
            .cache_write_errors
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Keeps a delete in the overlay (hidden from reads at once, committed first).
    fn tombstone(&self, key: &ObjectKey, rv: u64, crc: Option<i64>) {
        let Ok(mut o) = self.overlay.lock() else {
            return;
        };
        let t = Tombstone {
            rv,
            crc,
            queued_before: self.queued.load(Ordering::Acquire),
            applied: false,
        };
        if !o.tombstone(key, t) {
            // Out of room: the object may be served until a fresh list of its shape, but
            // no list holding it is served as complete.
            o.mark(&key.component, &key.gvr, Some(&key.namespace), rv);
            drop(o);
            self.count_error("dropped");
            tracing::warn!(component = %key.component, gvr = %key.gvr, namespace = %key.namespace, name = %key.name, "too many deletes waiting for the cache disk; this one is dropped");
            return;
        }
        self.metrics
            .cache_pending_deletes
            .set(i64::try_from(o.pending_deletes()).unwrap_or(i64::MAX));
    }

    /// An upsert of `key` at `rv` will never be written: its shapes are incomplete.
    fn dropped_upsert(&self, key: &ObjectKey, rv: u64) {
        if let Ok(mut o) = self.overlay.lock() {
            o.mark(&key.component, &key.gvr, Some(&key.namespace), rv);
        }
        self.count_error("dropped");
    }

    /// `op` will never be written: its deletes go to the overlay, its shapes are marked
    /// incomplete.
    fn dropped(&self, op: &WriteOp) {
        match op {
            WriteOp::Delete(key, rv) => return self.tombstone(key, *rv, None),
            WriteOp::Upsert(key, obj) => return self.dropped_upsert(key, obj.info.rv()),
            WriteOp::ReplaceList {
                component,
                gvr,
                shape,
                meta,
                ..
            } => {
                if let Ok(mut o) = self.overlay.lock() {
                    let ns = (!shape.namespace.is_empty()).then_some(shape.namespace.as_str());
                    o.mark(component, gvr, ns, meta.resource_version);
                }
            }
            _ => return,
        }
        self.count_error("dropped");
    }
}

/// The cache store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    writer: Mutex<Option<flume::Sender<WriteOp>>>,
    /// Idle read connections, with the database generation they were opened on.
    readers: Mutex<Vec<(u64, Connection)>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    write_wait: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.shared.path)
            .finish_non_exhaustive()
    }
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(sqlite(path))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sqlite(path))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-2048;",
    )
    .map_err(sqlite(path))?;
    Ok(conn)
}

/// Opens and checks the database; `Err` means it is unusable.
fn open_checked(path: &Path) -> Result<Connection> {
    let conn = open_conn(path)?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(sqlite(path))?;
    if check != "ok" {
        return Err(StoreError::Sqlite {
            path: path.to_owned(),
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(check),
            ),
        });
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sqlite(path))?;
    if version != SCHEMA_VERSION {
        // The cache is disposable: a different layout is dropped, not migrated.
        conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS objects; DROP TABLE IF EXISTS shapes; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION};"
        ))
        .map_err(sqlite(path))?;
    }
    Ok(conn)
}

impl Store {
    /// Opens (or creates) the store in `config.dir`. An unreadable database is moved aside
    /// (`cache.db.corrupt-<unix time>`) and replaced by an empty one.
    ///
    /// # Errors
    /// If the folder cannot be created or even a fresh database cannot be opened.
    pub fn open(config: &StoreConfig, metrics: HubMetrics) -> Result<Self> {
        std::fs::create_dir_all(&config.dir).map_err(|source| StoreError::Io {
            path: config.dir.clone(),
            source,
        })?;
        let path = config.dir.join("cache.db");
        let conn = match open_checked(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cache database unreadable; setting it aside and starting empty");
                metrics.cache_resets.inc();
                quarantine::set_aside(&path);
                open_checked(&path)?
            }
        };
        let count: i64 = conn
            .query_row("SELECT count(*) FROM objects", [], |r| r.get(0))
            .map_err(sqlite(&path))?;
        metrics.cache_objects.set(count);
        let capacity = config.queue_capacity.max(1);
        let (tx, rx) = flume::bounded(capacity);
        let shared = Arc::new(Shared {
            path: path.clone(),
            metrics,
            overlay: Mutex::new(Overlay::default()),
            generation: AtomicU64::new(0),
            corrupt_seen: AtomicBool::new(false),
            queued: AtomicU64::new(0),
            dequeued: AtomicU64::new(0),
            #[cfg(test)]
            fail_writes: AtomicBool::new(false),
        });
        let writer = Writer {
            conn: Some(conn),
            shared: shared.clone(),
            rx,
            batch_max: config.batch_max.max(1),
            pending_max: capacity,
            pending: VecDeque::new(),
            failure: None,
            counted: Instant::now() - Duration::from_secs(10),
            disk_full: false,
        };
        let thread = std::thread::Builder::new()
            .name("hub-cache-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| StoreError::Io {
                path: config.dir.clone(),
                source,
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                writer: Mutex::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                thread: Mutex::new(Some(thread)),
                write_wait: config.write_wait,
            }),
        })
    }

    fn sender(&self) -> Result<flume::Sender<WriteOp>> {
        let guard = self.inner.writer.lock().map_err(|_| StoreError::Closed)?;
        guard.as_ref().cloned().ok_or(StoreError::Closed)
    }

    /// Counts a write as queued before it is sent (so a tombstone made meanwhile waits
    /// for it); `undo` when it did not go.
    fn count_queued(&self, undo: bool) {
        if undo {
            self.inner.shared.queued.fetch_sub(1, Ordering::AcqRel);
        } else {
            self.inner.shared.queued.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn sent(&self, tx: &flume::Sender<WriteOp>, started: Instant) {
        let metrics = &self.inner.shared.metrics;
        metrics
            .cache_write_wait
            .0
            .observe(started.elapsed().as_secs_f64());
        metrics
            .cache_write_queue_depth
            .set(i64::try_from(tx.len()).unwrap_or(i64::MAX));
    }

    /// Queues `op`, blocking the calling thread at most `write_wait` for room.
    fn send_blocking(&self, op: WriteOp) -> Result<()> {
        let tx = self.sender()?;
        let started = Instant::now();
        self.count_queued(false);
        let result = match tx.try_send(op) {
            Ok(()) => Ok(()),
            Err(flume::TrySendError::Disconnected(_)) => Err(StoreError::Closed),
            Err(flume::TrySendError::Full(op)) => {
                match tx.send_timeout(op, self.inner.write_wait) {
                    Ok(()) => Ok(()),
                    Err(flume::SendTimeoutError::Disconnected(_)) => Err(StoreError::Closed),
                    Err(flume::SendTimeoutError::Timeout(op)) => {
                        self.drop_write(op);
                        Err(StoreError::QueueFull {
                            waited: started.elapsed(),
                        })
                    }
                }
            }
        };
        if result.is_err() {
            self.count_queued(true);
        }
        self.sent(&tx, started);
        result
    }

    /// A write that found no room: its deletes are kept in the overlay, its shapes
    /// marked incomplete.
    fn drop_write(&self, op: WriteOp) {
        if let WriteOp::ReplaceList {
            component,
            gvr,
            shape,
            meta,
            items,
        } = &op
        {
            let path = self.inner.shared.path.clone();
            let gone = self.with_reader(|c| {
                writer::list_removals(c, component, gvr, shape, meta, items).map_err(sqlite(&path))
            });
            match gone {
                Ok(gone) => {
                    for key in gone {
                        self.inner
                            .shared
                            .tombstone(&key, meta.resource_version, None);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "objects a dropped list removed could not be found")
                }
            }
        }
        tracing::debug!("cache write queue full: a write was dropped");
        self.inner.shared.dropped(&op);
    }

    /// Queues an insert-or-update; an update older than the stored object (lower
    /// resourceVersion) is ignored. Blocks the calling thread at most
    /// [`StoreConfig::write_wait`] while the queue is full: call it from a blocking
    /// thread, or use [`Store::upsert_async`].
    ///
    /// # Errors
    /// [`StoreError::Closed`] after shutdown; [`StoreError::QueueFull`] when it was
    /// dropped (its shapes are then marked incomplete).
    pub fn upsert(&self, key: ObjectKey, obj: RawObject) -> Result<()> {
        self.send_blocking(WriteOp::Upsert(key, obj))
    }

    /// [`Store::upsert`] that awaits room in the queue (at most
    /// [`StoreConfig::write_wait`]) instead of blocking.
    ///
    /// # Errors
    /// As [`Store::upsert`].
    pub async fn upsert_async(&self, key: ObjectKey, obj: RawObject) -> Result<()> {
        let tx = self.sender()?;
        let started = Instant::now();
        self.count_queued(false);
        let result = match tx.try_send(WriteOp::Upsert(key, obj)) {
            Ok(()) => Ok(()),
            Err(flume::TrySendError::Disconnected(_)) => Err(StoreError::Closed),
            Err(flume::TrySendError::Full(op)) => {
                // The future owns the write while it waits: keep what marking it needs.
                let mark = match &op {
                    WriteOp::Upsert(key, obj) => Some((key.clone(), obj.info.rv())),
                    _ => None,
                };
                match tokio::time::timeout(self.inner.write_wait, tx.send_async(op)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(StoreError::Closed),
                    Err(_) => {
                        if let Some((key, rv)) = mark {
                            self.inner.shared.dropped_upsert(&key, rv);
                        }
                        Err(StoreError::QueueFull {
                            waited: started.elapsed(),
                        })
                    }
                }
            }
        };
        if result.is_err() {
            self.count_queued(true);
        }
        self.sent(&tx, started);
        result
    }

    /// [`Store::upsert`] without waiting: a full queue drops it at once (its shapes are
    /// marked incomplete).
    ///
    /// # Errors
    /// As [`Store::upsert`].
    pub fn try_upsert(&self, key: ObjectKey, obj: RawObject) -> Result<()> {
        let tx = self.sender()?;
        let started = Instant::now();
        self.count_queued(false);
        let result = match tx.try_send(WriteOp::Upsert(key, obj)) {
            Ok(()) => Ok(()),
            Err(flume::TrySendError::Disconnected(_)) => Err(StoreError::Closed),
            Err(flume::TrySendError::Full(op)) => {
                self.drop_write(op);
                Err(StoreError::QueueFull {
                    waited: Duration::ZERO,
                })
            }
        };
        if result.is_err() {
            self.count_queued(true);
        }
        self.sent(&tx, started);
        result
    }

    /// Queues a delete. Never waits: when the queue is full the delete is kept in the
    /// in-memory overlay (reads no longer see the object; the writer commits it first).
    ///
    /// # Errors
    /// [`StoreError::Closed`] after shutdown.
    pub fn delete(&self, key: ObjectKey, resource_version: u64) -> Result<()> {
        let tx = self.sender()?;
        self.count_queued(false);
        let result = match tx.try_send(WriteOp::Delete(key, resource_version)) {
            Ok(()) => Ok(()),
            Err(flume::TrySendError::Disconnected(_)) => Err(StoreError::Closed),
            Err(flume::TrySendError::Full(op)) => {
                self.count_queued(true);
                self.inner.shared.dropped(&op);
                return Ok(());
            }
        };
        if result.is_err() {
            self.count_queued(true);
        }
        result
    }

    /// Queues the result of a complete LIST of `shape`: its items are stored, cached
    /// objects the shape selects that are not among them are removed (they are gone
    /// upstream), and the shape is recorded as servable. Blocks as [`Store::upsert`].
    ///
    /// # Errors
    /// As [`Store::upsert`].
    pub fn replace_list(
        &self,
        component: &str,
        gvr: &str,
        shape: Shape,
        meta: ListMeta,
        items: Vec<RawObject>,
    ) -> Result<()> {
        self.send_blocking(WriteOp::ReplaceList {
            component: component.to_owned(),
            gvr: gvr.to_owned(),
            shape,
            meta,
            items,
        })
    }

    /// Whether the writer thread is still running (it stops only on [`Store::close`]
    /// or a fault it could not survive).
    pub fn writer_running(&self) -> bool {
        self.inner
            .thread
            .lock()
            .is_ok_and(|t| t.as_ref().is_some_and(|t| !t.is_finished()))
    }

    /// Writes waiting in the queue.
    pub fn queue_len(&self) -> usize {
        self.sender().map_or(0, |tx| tx.len())
    }

    /// Deletes kept in memory because they could not be committed or queued yet.
    pub fn pending_deletes(&self) -> usize {
        self.inner
            .shared
            .overlay
            .lock()
            .map_or(0, |o| o.pending_deletes())
    }

    /// Waits until every write queued before it is committed to disk (or kept for a
    /// retry: then the failure is reported).
    ///
    /// # Errors
    /// The commit error, or [`StoreError::Closed`].
    pub fn flush(&self) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        let sender = self.sender()?;
        self.count_queued(false);
        if sender.send(WriteOp::Flush(tx)).is_err() {
            self.count_queued(true);
            return Err(StoreError::Closed);
        }
        rx.recv()
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Commit)
    }

    /// Stops the writer after it has committed what was queued.
    pub fn close(&self) {
        if let Ok(mut w) = self.inner.writer.lock() {
            w.take();
        }
        if let Ok(mut t) = self.inner.thread.lock()
            && let Some(t) = t.take()
        {
            let _ = t.join();
        }
    }

    /// Holds the writer until the returned sender is dropped (tests fill the queue).
    #[cfg(test)]
    pub(crate) fn hold_writer(&self) -> mpsc::Sender<()> {
        let (release, held) = mpsc::channel();
        if let Ok(tx) = self.sender() {
            let _ = tx.send(WriteOp::Hold(held));
        }
        // The writer has taken the hold once the queue is empty.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.queue_len() > 0 {
            assert!(Instant::now() < deadline, "the writer never took the hold");
            std::thread::yield_now();
        }
        release
    }

    /// Asks the writer to look at the overlay and the corruption flag now (if the queue
    /// has room; it looks every second anyway).
    fn wake_writer(&self) {
        if let Ok(tx) = self.sender() {
            self.count_queued(false);
            if tx.try_send(WriteOp::Wake).is_err() {
                self.count_queued(true);
            }
        }
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let shared = &self.inner.shared;
        let generation = shared.generation.load(Ordering::Acquire);
        let pooled = {
            let mut pool = self.inner.readers.lock().map_err(|_| StoreError::Closed)?;
            pool.retain(|(g, _)| *g == generation);
            pool.pop()
        };
        let conn = match pooled {
            Some((_, c)) => Ok(c),
            None => open_conn(&shared.path),
        };
        let out = conn.and_then(|conn| {
            let out = f(&conn);
            if let Ok(mut pool) = self.inner.readers.lock()
                && pool.len() < 4
                && shared.generation.load(Ordering::Acquire) == generation
            {
                pool.push((generation, conn));
            }
            out
        });
        match out {
            Err(StoreError::Sqlite { source, .. }) if quarantine::is_corruption(&source) => {
                tracing::error!(path = %shared.path.display(), error = %source, "cache database reports itself corrupt; the writer replaces it");
                if let Ok(mut pool) = self.inner.readers.lock() {
                    pool.clear();
                }
                shared.corrupt_seen.store(true, Ordering::Release);
                self.wake_writer();
                Err(StoreError::Corrupt {
                    path: shared.path.clone(),
                })
            }
            out => out,
        }
    }

    /// The object in `row`, unless a tombstone deletes it or it is corrupt (then it is
    /// counted, a tombstone removes it and the read is a miss).
    fn row_to_object(&self, key: &ObjectKey, row: StoredRow) -> Option<RawObject> {
        if crc(&row.data) != row.crc {
            tracing::warn!(component = %key.component, gvr = %key.gvr, namespace = %key.namespace, name = %key.name, "corrupt cache entry dropped");
            self.inner.shared.metrics.cache_corrupt_entries.inc();
            self.inner.shared.tombstone(key, 0, Some(row.crc));
            self.wake_writer();
            return None;
        }
        Some(RawObject {
            format: Format::from_i64(row.format)?,
            api_version: row.api_version,
            kind: row.kind,
            info: ObjectInfo {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                resource_version: row.resource_version,
                labels: decode_map(&row.labels)?,
                fields: decode_map(&row.fields)?,
            },
            data: Bytes::from(row.data),
        })
    }

    /// Whether a delete in the overlay removes `row` of `key`.
    fn deleted(&self, key: &ObjectKey, row: &StoredRow) -> bool {
        self.inner.shared.overlay.lock().is_ok_and(|o| {
            o.tombstone_of(key)
                .is_some_and(|t| t.hides(row.rv(), row.crc))
        })
    }

    /// The object at `key`, if cached, not deleted and intact.
    ///
    /// # Errors
    /// Database errors; [`StoreError::Corrupt`] when the database file is damaged (it is
    /// then replaced by an empty one).
    pub fn get(&self, key: &ObjectKey) -> Result<Option<RawObject>> {
        let path = self.inner.shared.path.clone();
        let row = self.with_reader(|c| {
            c.query_row(
                &format!(
                    "SELECT {ROW_COLUMNS} FROM objects
                     WHERE component=?1 AND gvr=?2 AND namespace=?3 AND name=?4"
                ),
                params![key.component, key.gvr, key.namespace, key.name],
                StoredRow::from_row,
            )
            .optional()
            .map_err(sqlite(&path))
        })?;
        Ok(row
            .filter(|r| !self.deleted(key, r))
            .and_then(|r| self.row_to_object(key, r)))
    }

    /// Every intact object of `component`'s `gvr` in `namespace` ("" = all namespaces)
    /// that is not deleted.
    ///
    /// # Errors
    /// As [`Store::get`].
    pub fn list(&self, component: &str, gvr: &str, namespace: &str) -> Result<Vec<RawObject>> {
        let path = self.inner.shared.path.clone();
        let rows = self.with_reader(|c| {
            let sql = if namespace.is_empty() {
                format!(
                    "SELECT namespace, name, {ROW_COLUMNS}
                     FROM objects WHERE component=?1 AND gvr=?2 AND ?3='' ORDER BY namespace, name"
                )
            } else {
                format!(
                    "SELECT namespace, name, {ROW_COLUMNS}
                     FROM objects WHERE component=?1 AND gvr=?2 AND namespace=?3 ORDER BY name"
                )
            };
            let mut stmt = c.prepare_cached(&sql).map_err(sqlite(&path))?;
            let rows = stmt
                .query_map(params![component, gvr, namespace], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        StoredRow::from_row_at(r, 2)?,
                    ))
                })
                .map_err(sqlite(&path))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sqlite(&path))?;
            Ok(rows)
        })?;
        let keyed: Vec<(ObjectKey, StoredRow)> = rows
            .into_iter()
            .map(|(namespace, name, row)| {
                let key = ObjectKey {
                    component: component.to_owned(),
                    gvr: gvr.to_owned(),
                    namespace,
                    name,
                };
                (key, row)
            })
            .collect();
        // One look at the overlay for the whole list.
        let deleted: Vec<bool> = match self.inner.shared.overlay.lock() {
            Ok(o) => keyed
                .iter()
                .map(|(k, r)| o.tombstone_of(k).is_some_and(|t| t.hides(r.rv(), r.crc)))
                .collect(),
            Err(_) => vec![false; keyed.len()],
        };
        Ok(keyed
            .into_iter()
            .zip(deleted)
            .filter(|(_, deleted)| !deleted)
            .filter_map(|((key, row), _)| self.row_to_object(&key, row))
            .collect())
    }

    /// The shapes `component` listed `gvr` in, completely, with the list's apiVersion
    /// and kind (not those a dropped write made incomplete).
    ///
    /// # Errors
    /// As [`Store::get`].
    pub fn shapes(&self, component: &str, gvr: &str) -> Result<Vec<(Shape, String, String)>> {
        let path = self.inner.shared.path.clone();
        let shapes = self.with_reader(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT namespace, label_selector, field_selector, list_api_version, list_kind FROM shapes WHERE component=?1 AND gvr=?2",
                )
                .map_err(sqlite(&path))?;
            let shapes = stmt
                .query_map(params![component, gvr], |r| {
                    Ok((
                        Shape {
                            namespace: r.get(0)?,
                            label_selector: r.get(1)?,
                            field_selector: r.get(2)?,
                        },
                        r.get(3)?,
                        r.get(4)?,
                    ))
                })
                .map_err(sqlite(&path))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sqlite(&path))?;
            Ok(shapes)
        })?;
        let Ok(o) = self.inner.shared.overlay.lock() else {
            return Ok(Vec::new());
        };
        Ok(shapes
            .into_iter()
            .filter(|(s, _, _)| !o.hides_shape(component, gvr, s))
            .collect())
    }

    /// Number of cached objects.
    ///
    /// # Errors
    /// As [`Store::get`].
    pub fn count(&self) -> Result<u64> {
        let path = self.inner.shared.path.clone();
        self.with_reader(|c| {
            c.query_row("SELECT count(*) FROM objects", [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
                .map_err(sqlite(&path))
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }
}
