//! Copying a partition from another replica: a replica that missed writes
//! takes the other's manifest and the files it lacks. Files are immutable
//! and named by the transaction that wrote them, so a file of the same name
//! and size is the same file, and copying a file is the whole log entry.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use datafusion::common::{DataFusionError, Result};

use super::manifest::Manifest;
use super::parquet_io::{io_err, remove_if_present, sync_dir};
use super::{Storage, check_file_name};

impl Storage {
    /// Where the file `name` of a partition goes (the partition's directory
    /// made if needed); `None` when it is there already with `bytes` bytes.
    pub fn copy_target(
        &self,
        table: &str,
        partition: u32,
        name: &str,
        bytes: u64,
    ) -> Result<Option<PathBuf>> {
        check_file_name(name)?;
        let dir = self.partition_dir(table, partition)?;
        fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let path = dir.join(name);
        match fs::metadata(&path) {
            Ok(m) if m.len() == bytes => Ok(None),
            _ => Ok(Some(path)),
        }
    }

    /// `bytes` of the file `name` of a partition from `offset` on (fewer at
    /// its end).
    pub fn read_file(
        &self,
        table: &str,
        partition: u32,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        check_file_name(name)?;
        let path = self.partition_dir(table, partition)?.join(name);
        let mut file = fs::File::open(&path).map_err(|e| io_err("cannot open", &path, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| io_err("cannot read", &path, e))?;
        let mut out = Vec::with_capacity(len);
        file.take(len as u64)
            .read_to_end(&mut out)
            .map_err(|e| io_err("cannot read", &path, e))?;
        Ok(out)
    }

    /// Makes `manifest` (another replica's) this partition's: every file it
    /// lists must be here (see [`Storage::copy_target`]); files of the old
    /// manifest it does not list are retired.
    pub fn install(&self, table: &str, partition: u32, manifest: Manifest) -> Result<()> {
        let _guard = self.commit_lock.lock().map_err(|_| {
            DataFusionError::Internal("commit lock poisoned by an earlier panic".into())
        })?;
        let dir = self.partition_dir(table, partition)?;
        if manifest.files.is_empty() && !dir.exists() {
            // Nothing there, nothing to hold (an outbox emptied by the
            // applier, say).
            return Ok(());
        }
        for f in &manifest.files {
            check_file_name(&f.name)?;
            let path = dir.join(&f.name);
            let size = fs::metadata(&path).map(|m| m.len()).ok();
            if size != Some(f.bytes) {
                return crate::precondition_err!(
                    "{} is not the {} bytes the copied manifest lists; copy the partition again",
                    path.display(),
                    f.bytes
                );
            }
        }
        let old = self.manifest(table, partition)?;
        let gone: Vec<String> = old
            .files
            .iter()
            .map(|f| f.name.clone())
            .filter(|n| !manifest.files.iter().any(|f| &f.name == n))
            .collect();
        let mut next = Manifest {
            files: manifest.files,
            moved: manifest.moved,
            retired: old.retired,
        };
        next.retired.retain(|n| dir.join(n).exists());
        next.retired.extend(gone.iter().cloned());
        self.write_manifest(&dir, &next)?;
        self.retire(gone.iter().map(|n| dir.join(n)).collect());
        Ok(())
    }
}

/// A suffix no other copy in this process uses.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ NEXT.fetch_add(1, Ordering::Relaxed).rotate_left(48)
}

/// Removes the files of copies that stopped half-way (`*.copying`) from a
/// partition's directory.
pub(super) fn remove_unfinished(dir: &std::path::Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".copying") {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| io_err("cannot remove", &path, e))?;
        }
    }
    Ok(())
}

/// A file being copied in: written to `<name>.<n>.copying`, synced, then
/// renamed into place; dropped unfinished, it is removed.
pub struct CopiedFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<fs::File>,
}

impl CopiedFile {
    pub fn create(path: PathBuf) -> Result<Self> {
        // Unique per copy: two copies of one file never share a temp file.
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".{:016x}.copying", rand_suffix()));
        let tmp = PathBuf::from(tmp);
        let file = fs::File::create(&tmp).map_err(|e| io_err("cannot create", &tmp, e))?;
        Ok(Self {
            path,
            tmp,
            file: Some(file),
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(DataFusionError::Internal(
                "a copied file written after its end".into(),
            ));
        };
        file.write_all(bytes)
            .map_err(|e| io_err("cannot write", &self.tmp, e))
    }

    /// Syncs the file and puts it in place.
    pub fn finish(mut self) -> Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        file.sync_all()
            .map_err(|e| io_err("cannot sync", &self.tmp, e))?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(|e| io_err("cannot rename", &self.tmp, e))?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

impl Drop for CopiedFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = remove_if_present(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_util::write;

    /// A copy stopped half-way leaves a `.copying` file; the next start
    /// removes it and keeps the partition's own files.
    #[test]
    fn unfinished_copies_go_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        write(&s, 1, "t", vec![1, 2]);
        let part = dir.path().join("t/p0000");
        let stray = part.join("00000000000000000002.parquet.00000000000000ab.copying");
        fs::write(&stray, b"half").unwrap();
        drop(s);
        let s = Storage::open(dir.path()).unwrap();
        assert!(!stray.exists());
        let m = s.manifest("t", 0).unwrap();
        assert_eq!(m.files.len(), 1);
        assert!(part.join(&m.files[0].name).exists());
    }
}
