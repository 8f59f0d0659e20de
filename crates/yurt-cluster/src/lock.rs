//! Advisory file locks (`flock`) that record their holder's pid, so a refused lock can
//! say who holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

/// A held exclusive lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct FileLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl FileLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open(path: &Path) -> Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

fn record_pid(lock: &mut Flock<File>, path: &Path) -> Result<()> {
    let file: &mut File = lock;
    file.set_len(0).map_err(|e| Error::io(path, e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    file.write_all(std::process::id().to_string().as_bytes())
        .map_err(|e| Error::io(path, e))
}

/// Takes the lock, waiting for it if another process holds it. Blocking.
///
/// # Errors
/// I/O errors on the lock file.
pub fn exclusive(path: &Path) -> Result<FileLock> {
    let file = open(path)?;
    let mut lock = loop {
        match Flock::lock(
            file.try_clone().map_err(|e| Error::io(path, e))?,
            FlockArg::LockExclusive,
        ) {
            Ok(lock) => break lock,
            Err((_, Errno::EINTR)) => continue,
            Err((_, errno)) => return Err(Error::io(path, errno.into())),
        }
    };
    record_pid(&mut lock, path)?;
    Ok(FileLock {
        _lock: lock,
        path: path.to_owned(),
    })
}

/// Takes the lock if it is free; otherwise returns the holder's pid (0 if unknown).
///
/// # Errors
/// I/O errors on the lock file.
pub fn try_exclusive(path: &Path) -> Result<std::result::Result<FileLock, i32>> {
    let file = open(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            record_pid(&mut lock, path)?;
            Ok(Ok(FileLock {
                _lock: lock,
                path: path.to_owned(),
            }))
        }
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Ok(Err(text.trim().parse().unwrap_or(0)))
        }
        Err((_, errno)) => Err(Error::io(path, errno.into())),
    }
}

/// Whether some process holds the lock at `path` right now (and its pid).
///
/// # Errors
/// I/O errors on the lock file.
pub fn holder(path: &Path) -> Result<Option<i32>> {
    if !path.exists() {
        return Ok(None);
    }
    Ok(try_exclusive(path)?.err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_reports_the_holder_and_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = try_exclusive(&path).unwrap().unwrap();
        // flock locks belong to the open file description, so a second open in the same
        // process conflicts just as another process would.
        let refused = try_exclusive(&path).unwrap().unwrap_err();
        assert_eq!(refused, std::process::id() as i32);
        assert_eq!(holder(&path).unwrap(), Some(std::process::id() as i32));
        drop(held);
        assert_eq!(holder(&path).unwrap(), None);
        assert!(try_exclusive(&path).unwrap().is_ok());
    }
}
