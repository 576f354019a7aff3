//! One `Storage` per directory: shared within a process, exclusive across
//! processes (an advisory lock on `<dir>/.lock`).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use datafusion::common::{DataFusionError, Result};

use super::Storage;
use super::parquet_io::io_err;

const LOCK: &str = ".lock";

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Storage>>> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<Storage>>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// The live instance for `root` if this process has one, else a new one
/// made by `make` once the directory's lock is taken.
pub(super) fn open_shared(
    root: PathBuf,
    make: impl FnOnce(PathBuf, File) -> Result<Arc<Storage>>,
) -> Result<Arc<Storage>> {
    fs::create_dir_all(&root).map_err(|e| io_err("cannot create", &root, e))?;
    let key = fs::canonicalize(&root).map_err(|e| io_err("cannot resolve", &root, e))?;
    // Held across `make` so two threads cannot both open the directory.
    let mut open = registry()
        .lock()
        .map_err(|_| DataFusionError::Internal("storage registry poisoned".into()))?;
    open.retain(|_, w| w.strong_count() > 0);
    if let Some(live) = open.get(&key).and_then(Weak::upgrade) {
        return Ok(live);
    }
    let path = key.join(LOCK);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err("cannot open", &path, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(crate::ErrorKind::FailedPrecondition.error(format!(
                "{} is in use by another process; stop that worker first, or give this one \
                 its own --data-dir",
                root.display()
            )));
        }
        Err(TryLockError::Error(e)) => return Err(io_err("cannot lock", &path, e)),
    }
    // Files are read by absolute path (object store URLs): a relative
    // --data-dir is resolved once, here.
    let storage = make(key.clone(), lock)?;
    open.insert(key, Arc::downgrade(&storage));
    Ok(storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_instance_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let a = Storage::open(dir.path()).unwrap();
        let b = Storage::open(dir.path().join(".")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        // Dropped: a new instance (and the lock is free again).
        let c = Storage::open(dir.path()).unwrap();
        // Another open file description stands in for another process.
        let other = File::open(dir.path().join(LOCK)).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        drop(c);
        other.try_lock().unwrap();
        let err = Storage::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another process"), "{err}");
    }
}
