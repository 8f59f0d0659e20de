//! Setting an unreadable database aside, at start or while running: its files are
//! renamed `cache.db*.corrupt-<unix time>` beside it (kept for a post-mortem) and the hub
//! starts over with an empty one, which it refills from the API server.

use std::path::{Path, PathBuf};

/// Whether `e` says the database file itself is damaged (not one row).
pub(super) fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Renames the database at `path` and its WAL and shared-memory files aside; returns
/// where the database went. Every connection to it must be closed first.
pub(super) fn set_aside(path: &Path) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    // Two resets within one second must not overwrite the first one's files.
    let mut n = 0;
    let suffix_for = |n: u32| {
        if n == 0 {
            format!("corrupt-{stamp}")
        } else {
            format!("corrupt-{stamp}-{n}")
        }
    };
    while PathBuf::from(format!("{}.{}", path.display(), suffix_for(n))).exists() {
        n += 1;
    }
    let tag = suffix_for(n);
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}.{tag}", path.display()));
            if let Err(e) = std::fs::rename(&from, &to) {
                tracing::warn!(from = %from.display(), error = %e, "could not set a cache file aside; removing it");
                let _ = std::fs::remove_file(&from);
            }
        }
    }
    PathBuf::from(format!("{}.{tag}", path.display()))
}
