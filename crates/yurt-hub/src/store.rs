//! The hub's durable cache: every object a cache agent read, once per (component,
//! resource, namespace, name), plus the list shapes (namespace and selectors) each
//! component listed in full.
//!
//! Built on SQLite (WAL, `synchronous=FULL`): a write is acknowledged only once its
//! transaction is on disk, and a killed process restarts from the last committed state.
//! One writer thread applies writes in batches, one transaction and one fsync per batch
//! (group commit). Each object carries a CRC32 of its bytes, checked on every read: a
//! torn or corrupted entry is dropped and counted, never served. A database that cannot
//! be opened or fails its integrity check at start is set aside and replaced by an
//! empty one (the hub refills it from the API server).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use crate::codec::{Format, ObjectInfo, RawObject};
use crate::metrics::{HubMetrics, ReasonLabel};
use crate::selector::{FieldSelector, LabelSelector};

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

enum WriteOp {
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
    /// Panics inside the writer (tests of the writer's panic guard).
    #[cfg(test)]
    Panic,
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The cache folder (holds `cache.db`).
    pub dir: PathBuf,
    /// Most writes per transaction.
    pub batch_max: usize,
}

/// The cache store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<WriteOp>>>,
    readers: Mutex<Vec<Connection>>,
    metrics: HubMetrics,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    component TEXT NOT NULL,
    gvr TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    rv INTEGER NOT NULL,
    resource_version TEXT NOT NULL,
    format INTEGER NOT NULL,
    api_version TEXT NOT NULL,
    kind TEXT NOT NULL,
    labels BLOB NOT NULL,
    fields BLOB NOT NULL,
    data BLOB NOT NULL,
    crc INTEGER NOT NULL,
    PRIMARY KEY (component, gvr, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shapes (
    component TEXT NOT NULL,
    gvr TEXT NOT NULL,
    namespace TEXT NOT NULL,
    label_selector TEXT NOT NULL,
    field_selector TEXT NOT NULL,
    list_api_version TEXT NOT NULL,
    list_kind TEXT NOT NULL,
    PRIMARY KEY (component, gvr, namespace, label_selector, field_selector)
) WITHOUT ROWID;
";

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

/// Labels and selectable fields are stored as `u16 len, key, u16 len, value` pairs: a
/// 1,000-object list decodes them in microseconds, where JSON took milliseconds.
fn encode_map(map: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::with_capacity(map.iter().map(|(k, v)| k.len() + v.len() + 4).sum());
    for (k, v) in map {
        for s in [k, v] {
            let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
        }
    }
    out
}

fn decode_map(mut bytes: &[u8]) -> Option<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    let take = |bytes: &mut &[u8]| -> Option<String> {
        let (len, rest) = bytes.split_at_checked(2)?;
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        let (s, rest) = rest.split_at_checked(len)?;
        *bytes = rest;
        String::from_utf8(s.to_vec()).ok()
    };
    while !bytes.is_empty() {
        let k = take(&mut bytes)?;
        let v = take(&mut bytes)?;
        map.insert(k, v);
    }
    Some(map)
}

/// Version of the database layout; a cache of another version is discarded.
const SCHEMA_VERSION: i64 = 2;

fn crc(data: &[u8]) -> i64 {
    i64::from(crc32fast::hash(data))
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
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default();
                for suffix in ["", "-wal", "-shm"] {
                    let from = PathBuf::from(format!("{}{suffix}", path.display()));
                    if from.exists() {
                        let to =
                            PathBuf::from(format!("{}{suffix}.corrupt-{stamp}", path.display()));
                        let _ = std::fs::rename(&from, &to);
                    }
                }
                open_checked(&path)?
            }
        };
        let count: i64 = conn
            .query_row("SELECT count(*) FROM objects", [], |r| r.get(0))
            .map_err(sqlite(&path))?;
        metrics.cache_objects.set(count);
        let (tx, rx) = mpsc::channel();
        let writer_metrics = metrics.clone();
        let writer_path = path.clone();
        let batch_max = config.batch_max.max(1);
        let thread = std::thread::Builder::new()
            .name("hub-cache-writer".into())
            .spawn(move || writer_loop(conn, &writer_path, rx, batch_max, &writer_metrics))
            .map_err(|source| StoreError::Io {
                path: config.dir.clone(),
                source,
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                metrics,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    fn send(&self, op: WriteOp) -> Result<()> {
        let guard = self.inner.writer.lock().map_err(|_| StoreError::Closed)?;
        guard
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(op)
            .map_err(|_| StoreError::Closed)
    }

    /// Queues an insert-or-update; an update older than the stored object (lower
    /// resourceVersion) is ignored.
    ///
    /// # Errors
    /// [`StoreError::Closed`] after shutdown.
    pub fn upsert(&self, key: ObjectKey, obj: RawObject) -> Result<()> {
        self.send(WriteOp::Upsert(key, obj))
    }

    /// Queues a delete.
    ///
    /// # Errors
    /// [`StoreError::Closed`] after shutdown.
    pub fn delete(&self, key: ObjectKey, resource_version: u64) -> Result<()> {
        self.send(WriteOp::Delete(key, resource_version))
    }

    /// Queues the result of a complete LIST of `shape`: its items are stored, cached
    /// objects the shape selects that are not among them are removed (they are gone
    /// upstream), and the shape is recorded as servable.
    ///
    /// # Errors
    /// [`StoreError::Closed`] after shutdown.
    pub fn replace_list(
        &self,
        component: &str,
        gvr: &str,
        shape: Shape,
        meta: ListMeta,
        items: Vec<RawObject>,
    ) -> Result<()> {
        self.send(WriteOp::ReplaceList {
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

    /// Waits until every write queued before it is committed to disk.
    ///
    /// # Errors
    /// The commit error, or [`StoreError::Closed`].
    pub fn flush(&self) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(WriteOp::Flush(tx))?;
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

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = {
            let mut pool = self.inner.readers.lock().map_err(|_| StoreError::Closed)?;
            pool.pop()
        };
        let conn = match conn {
            Some(c) => c,
            None => open_conn(&self.inner.path)?,
        };
        let out = f(&conn);
        if let Ok(mut pool) = self.inner.readers.lock()
            && pool.len() < 4
        {
            pool.push(conn);
        }
        out
    }

    fn row_to_object(&self, key: &ObjectKey, row: StoredRow) -> Option<RawObject> {
        if crc(&row.data) != row.crc {
            tracing::warn!(component = %key.component, gvr = %key.gvr, namespace = %key.namespace, name = %key.name, "corrupt cache entry dropped");
            self.inner.metrics.cache_corrupt_entries.inc();
            let _ = self.delete(key.clone(), 0);
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

    /// The object at `key`, if cached and intact.
    ///
    /// # Errors
    /// Database errors.
    pub fn get(&self, key: &ObjectKey) -> Result<Option<RawObject>> {
        let path = self.inner.path.clone();
        let row = self.with_reader(|c| {
            c.query_row(
                "SELECT resource_version, format, api_version, kind, labels, fields, data, crc FROM objects
                 WHERE component=?1 AND gvr=?2 AND namespace=?3 AND name=?4",
                params![key.component, key.gvr, key.namespace, key.name],
                StoredRow::from_row,
            )
            .optional()
            .map_err(sqlite(&path))
        })?;
        Ok(row.and_then(|r| self.row_to_object(key, r)))
    }

    /// Every intact object of `component`'s `gvr` in `namespace` ("" = all namespaces).
    ///
    /// # Errors
    /// Database errors.
    pub fn list(&self, component: &str, gvr: &str, namespace: &str) -> Result<Vec<RawObject>> {
        let path = self.inner.path.clone();
        let rows = self.with_reader(|c| {
            let sql = if namespace.is_empty() {
                "SELECT namespace, name, resource_version, format, api_version, kind, labels, fields, data, crc
                 FROM objects WHERE component=?1 AND gvr=?2 AND ?3='' ORDER BY namespace, name"
            } else {
                "SELECT namespace, name, resource_version, format, api_version, kind, labels, fields, data, crc
                 FROM objects WHERE component=?1 AND gvr=?2 AND namespace=?3 ORDER BY name"
            };
            let mut stmt = c.prepare_cached(sql).map_err(sqlite(&path))?;
            let rows = stmt
                .query_map(params![component, gvr, namespace], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, StoredRow::from_row_at(r, 2)?))
                })
                .map_err(sqlite(&path))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sqlite(&path))?;
            Ok(rows)
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(ns, name, row)| {
                let key = ObjectKey {
                    component: component.to_owned(),
                    gvr: gvr.to_owned(),
                    namespace: ns,
                    name,
                };
                self.row_to_object(&key, row)
            })
            .collect())
    }

    /// The shapes `component` listed `gvr` in, completely, with the list's apiVersion
    /// and kind.
    ///
    /// # Errors
    /// Database errors.
    pub fn shapes(&self, component: &str, gvr: &str) -> Result<Vec<(Shape, String, String)>> {
        let path = self.inner.path.clone();
        self.with_reader(|c| {
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
        })
    }

    /// Number of cached objects.
    ///
    /// # Errors
    /// Database errors.
    pub fn count(&self) -> Result<u64> {
        let path = self.inner.path.clone();
        self.with_reader(|c| {
            c.query_row("SELECT count(*) FROM objects", [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
                .map_err(sqlite(&path))
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

struct StoredRow {
    resource_version: String,
    format: i64,
    api_version: String,
    kind: String,
    labels: Vec<u8>,
    fields: Vec<u8>,
    data: Vec<u8>,
    crc: i64,
}

impl StoredRow {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Self::from_row_at(r, 0)
    }

    fn from_row_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            resource_version: r.get(at)?,
            format: r.get(at + 1)?,
            api_version: r.get(at + 2)?,
            kind: r.get(at + 3)?,
            labels: r.get(at + 4)?,
            fields: r.get(at + 5)?,
            data: r.get(at + 6)?,
            crc: r.get(at + 7)?,
        })
    }
}

fn upsert_row(
    tx: &rusqlite::Transaction<'_>,
    key: &ObjectKey,
    obj: &RawObject,
) -> rusqlite::Result<usize> {
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

/// What a list replacement reads of each stored object: enough to select it by shape.
struct IndexRow {
    namespace: String,
    name: String,
    labels: Vec<u8>,
    fields: Vec<u8>,
    rv: i64,
}

fn apply(tx: &rusqlite::Transaction<'_>, op: &WriteOp) -> rusqlite::Result<u64> {
    match op {
        #[cfg(test)]
        WriteOp::Panic => panic!("a write that panics"),
        WriteOp::Upsert(key, obj) => upsert_row(tx, key, obj).map(|n| n as u64),
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
            let list_rv = meta.resource_version.cast_signed();
            let keep: HashSet<(&str, &str)> = items
                .iter()
                .map(|i| (i.info.namespace.as_str(), i.info.name.as_str()))
                .collect();
            // Objects this shape selects that the fresh list no longer has are gone,
            // unless a watch event newer than the list wrote them (the list was taken
            // before they existed).
            let existing: Vec<IndexRow> = {
                let mut stmt = tx.prepare_cached(
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
            for IndexRow {
                namespace: ns,
                name,
                labels,
                fields,
                rv,
            } in existing
            {
                if keep.contains(&(ns.as_str(), name.as_str())) || (list_rv > 0 && rv > list_rv) {
                    continue;
                }
                let info = ObjectInfo {
                    name: name.clone(),
                    namespace: ns.clone(),
                    resource_version: String::new(),
                    labels: decode_map(&labels).unwrap_or_default(),
                    fields: decode_map(&fields).unwrap_or_default(),
                };
                if shape.selects(&info) {
                    tx.prepare_cached("DELETE FROM objects WHERE component=?1 AND gvr=?2 AND namespace=?3 AND name=?4")?
                        .execute(params![component, gvr, ns, name])?;
                }
            }
            let mut written = 0;
            for item in items {
                let key = ObjectKey {
                    component: component.clone(),
                    gvr: gvr.clone(),
                    namespace: item.info.namespace.clone(),
                    name: item.info.name.clone(),
                };
                written += upsert_row(tx, &key, item)? as u64;
            }
            tx.prepare_cached(
                "INSERT OR REPLACE INTO shapes (component, gvr, namespace, label_selector, field_selector, list_api_version, list_kind)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
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
            Ok(written)
        }
        WriteOp::Flush(_) => Ok(0),
    }
}

fn error_reason(e: &rusqlite::Error) -> &'static str {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => "disk_full",
        Some(rusqlite::ErrorCode::SystemIoFailure) => "io",
        _ => "other",
    }
}

/// Commits `ops` in one transaction; `Err` carries the message of a panic met on the
/// way (the transaction is then rolled back).
fn commit(
    conn: &mut Connection,
    ops: &[WriteOp],
) -> std::result::Result<rusqlite::Result<u64>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let tx = conn.transaction()?;
        let mut written = 0;
        for op in ops {
            written += apply(&tx, op)?;
        }
        tx.commit()?;
        Ok(written)
    }))
    .map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned())
    })
}

fn writer_loop(
    mut conn: Connection,
    path: &Path,
    rx: mpsc::Receiver<WriteOp>,
    batch_max: usize,
    metrics: &HubMetrics,
) {
    // A flush reports every failure since the previous flush, not only its own batch's:
    // the writes it vouches for may have been committed (or not) in earlier batches.
    let mut failure: Option<String> = None;
    let mut counted = std::time::Instant::now() - Duration::from_secs(10);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let result = match commit(&mut conn, &batch) {
            Ok(r) => r,
            // A bug met by one item must not stop the writer for good (every later write
            // would fail and the node would still look autonomous): redo the batch item
            // by item and drop only the items that panic.
            Err(_) => {
                let mut written = 0;
                let mut last_error = None;
                for op in &batch {
                    match commit(&mut conn, std::slice::from_ref(op)) {
                        Ok(Ok(n)) => written += n,
                        Ok(Err(e)) => last_error = Some(e),
                        Err(panic) => {
                            tracing::error!(path = %path.display(), panic = %panic, "a cache write panicked; that item is skipped");
                            failure
                                .get_or_insert_with(|| format!("a cache write panicked: {panic}"));
                            metrics
                                .cache_write_errors
                                .get_or_create(&ReasonLabel {
                                    reason: "panic".to_owned(),
                                })
                                .inc();
                        }
                    }
                }
                last_error.map_or(Ok(written), Err)
            }
        };
        match result {
            Ok(written) => {
                metrics.cache_writes.inc_by(written);
                if counted.elapsed() >= Duration::from_secs(1)
                    && let Ok(n) =
                        conn.query_row("SELECT count(*) FROM objects", [], |r| r.get::<_, i64>(0))
                {
                    metrics.cache_objects.set(n);
                    counted = std::time::Instant::now();
                }
            }
            Err(e) => {
                let reason = error_reason(&e);
                if reason == "disk_full" {
                    tracing::error!(path = %path.display(), "cache disk is full: new objects are not cached; serving continues from what is cached");
                } else {
                    tracing::warn!(path = %path.display(), error = %e, "cache write failed");
                }
                metrics
                    .cache_write_errors
                    .get_or_create(&ReasonLabel {
                        reason: reason.to_owned(),
                    })
                    .inc();
                failure.get_or_insert_with(|| e.to_string());
            }
        }
        for op in batch {
            if let WriteOp::Flush(done) = op {
                let _ = done.send(match failure.take() {
                    Some(e) => Err(e),
                    None => Ok(()),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
                dir: dir.to_owned(),
                batch_max: 64,
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
                dir: dir.path().to_owned(),
                batch_max: 8,
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
                dir: dir.path().to_owned(),
                batch_max: 8,
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
                dir: dir.path().to_owned(),
                batch_max: 64,
            },
            metrics.clone(),
        )
        .unwrap();
        s.upsert(key("ns", "before"), obj("ns", "before", 1, &[], "{}"))
            .unwrap();
        s.send(WriteOp::Panic).unwrap();
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
}
