//! How objects sit in the database: the schema, the label/field map encoding, the
//! checksum and the row read back.

use std::collections::BTreeMap;

/// Version of the database layout; a cache of another version is discarded.
pub(super) const SCHEMA_VERSION: i64 = 2;

pub(super) const SCHEMA: &str = "
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

pub(super) fn crc(data: &[u8]) -> i64 {
    i64::from(crc32fast::hash(data))
}

/// Labels and selectable fields are stored as `u16 len, key, u16 len, value` pairs: a
/// 1,000-object list decodes them in microseconds, where JSON took milliseconds.
pub(super) fn encode_map(map: &BTreeMap<String, String>) -> Vec<u8> {
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

pub(super) fn decode_map(mut bytes: &[u8]) -> Option<BTreeMap<String, String>> {
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

/// One object as read back, before its checksum is checked.
pub(super) struct StoredRow {
    pub(super) resource_version: String,
    pub(super) format: i64,
    pub(super) api_version: String,
    pub(super) kind: String,
    pub(super) labels: Vec<u8>,
    pub(super) fields: Vec<u8>,
    pub(super) data: Vec<u8>,
    pub(super) crc: i64,
}

/// The columns [`StoredRow::from_row_at`] reads, in order.
pub(super) const ROW_COLUMNS: &str =
    "resource_version, format, api_version, kind, labels, fields, data, crc";

impl StoredRow {
    pub(super) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Self::from_row_at(r, 0)
    }

    pub(super) fn from_row_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Self> {
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

    /// The resourceVersion as a number (0 if it is not one), as the `rv` column holds it.
    pub(super) fn rv(&self) -> u64 {
        self.resource_version.parse().unwrap_or(0)
    }
}
