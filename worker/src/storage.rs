//! Partition storage on a worker's disk: immutable Parquet files behind an
//! atomically swapped manifest, one directory per partition.
//!
//! ```text
//! <worker dir>/<table>/p0003/
//!     manifest.0, manifest.1 files that make up the partition (two slots
//!                            written in turn, see `manifest_file`)
//!     00000000000000000007.parquet
//!     staged/00000000000000000009.parquet   prepared by txn 9, not yet committed
//! ```
//!
//! A write is two-phase. `prepare` writes the transaction's rows of one
//! partition to a staged Parquet file and fsyncs it: this is the write-ahead
//! record, and once every partition of a statement is prepared the
//! coordinator decides. `commit` moves the staged file into the partition and
//! writes a manifest naming it (into its older slot, synced);
//! `abort` deletes the staged file. A staged file found after a restart is
//! resolved by the coordinator, which logged its decision before committing.

mod commit;
mod compaction;
mod copy;
mod manifest;
mod manifest_file;
mod open;
mod parquet_io;
mod pins;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datafusion::common::{DataFusionError, Result, internal_err};

pub use compaction::{Compaction, MergeRule};
pub use copy::CopiedFile;
pub use manifest::{DataFile, Manifest, Moved, PartitionStats, StagedWrite};
pub use parquet_io::{StagedFile, sort_by_columns};

use parquet_io::{io_err, remove_if_present, sync_dir};
use pins::Readers;

const STAGED: &str = "staged";
/// The suffix of a directory being removed (after a leading `.`).
const DROPPING: &str = ".dropping";

/// The manifest of the partition directory `dir`, read off the disk (for
/// tools and tests; a running worker reads its own through [`Storage`]).
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    Ok(manifest_file::read(dir)?.1)
}

fn file_name(txn: u64) -> String {
    format!("{txn:020}.parquet")
}

/// All partitions stored by one worker.
#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    /// Serialises manifest swaps; writes to distinct partitions are rare
    /// enough at commit time that one lock costs nothing measurable.
    commit_lock: Mutex<()>,
    /// Each partition's manifest as last read or written (this instance
    /// is the only writer of its directory), with its sequence number.
    manifests: Mutex<HashMap<PathBuf, (u64, Manifest)>>,
    readers: Mutex<Readers>,
    /// Held while this instance lives: no other process opens the directory.
    _lock: fs::File,
}

impl Storage {
    /// Opens a worker's directory. Within one process a directory has one
    /// instance: a worker started again on it (while work of its stopped
    /// server may still be finishing) shares its commit lock and read pins,
    /// so nothing deletes a file the other still reads. Another process
    /// holding the directory is refused.
    pub fn open(root: impl Into<PathBuf>) -> Result<Arc<Self>> {
        open::open_shared(root.into(), Self::open_new)
    }

    fn open_new(root: PathBuf, lock: fs::File) -> Result<Arc<Self>> {
        let storage = Arc::new(Self {
            root,
            commit_lock: Mutex::new(()),
            manifests: Mutex::new(HashMap::new()),
            readers: Mutex::new(Readers::default()),
            _lock: lock,
        });
        // Nothing reads or copies yet: what a removal left, files merged
        // away before a stop, and files a copy was writing when it
        // stopped, can go.
        storage.remove_leftover_drops()?;
        for (table, partition, dir) in storage.partition_dirs()? {
            copy::remove_unfinished(&dir)?;
            let mut manifest = storage.manifest(&table, partition)?;
            if manifest.retired.is_empty() {
                continue;
            }
            for name in std::mem::take(&mut manifest.retired) {
                // Never one the manifest lists again.
                if !manifest.files.iter().any(|f| f.name == name) {
                    remove_if_present(&dir.join(name))?;
                }
            }
            storage.write_manifest(&dir, &manifest)?;
        }
        Ok(storage)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn partition_dir(&self, table: &str, partition: u32) -> Result<PathBuf> {
        check_table_key(table)?;
        Ok(self.root.join(table).join(format!("p{partition:04}")))
    }

    /// The manifest of a partition; empty if nothing was ever committed.
    pub fn manifest(&self, table: &str, partition: u32) -> Result<Manifest> {
        let dir = self.partition_dir(table, partition)?;
        // Held while a missing one is read: a write's update of the
        // cache waits, and so replaces what this read.
        let mut cache = self
            .manifests
            .lock()
            .map_err(|_| poisoned("manifest cache"))?;
        if let Some((_, m)) = cache.get(&dir) {
            return Ok(m.clone());
        }
        let (seq, m) = manifest_file::read(&dir)?;
        cache.insert(dir, (seq, m.clone()));
        Ok(m)
    }

    /// Paths and sizes of the Parquet files of a partition.
    pub fn files(&self, table: &str, partition: u32) -> Result<Vec<(PathBuf, u64)>> {
        Ok(self
            .data_files(table, partition)?
            .into_iter()
            .map(|(path, f)| (path, f.bytes))
            .collect())
    }

    /// The committed files of a partition with their manifest entries.
    pub fn data_files(&self, table: &str, partition: u32) -> Result<Vec<(PathBuf, DataFile)>> {
        let dir = self.partition_dir(table, partition)?;
        Ok(self
            .manifest(table, partition)?
            .files
            .into_iter()
            .map(|f| (dir.join(&f.name), f))
            .collect())
    }

    /// The staged directory of a partition, created (durably) if needed.
    fn staged_dir(&self, table: &str, partition: u32) -> Result<PathBuf> {
        let dir = self.partition_dir(table, partition)?.join(STAGED);
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
            // New directories must survive a power loss too: sync each parent.
            let mut child = dir.as_path();
            while let Some(parent) = child.parent() {
                sync_dir(parent)?;
                if parent == self.root {
                    break;
                }
                child = parent;
            }
        }
        Ok(dir)
    }

    /// Writes a partition's manifest (under the commit lock: one writer at
    /// a time).
    fn write_manifest(&self, dir: &Path, manifest: &Manifest) -> Result<()> {
        let cached = self
            .manifests
            .lock()
            .map_err(|_| poisoned("manifest cache"))?
            .get(dir)
            .map(|(seq, _)| *seq);
        let seq = match cached {
            Some(seq) => seq,
            None => manifest_file::read(dir)?.0,
        };
        let written = manifest_file::write(dir, seq + 1, manifest);
        let mut cache = self
            .manifests
            .lock()
            .map_err(|_| poisoned("manifest cache"))?;
        match written {
            Ok(()) => {
                cache.insert(dir.to_path_buf(), (seq + 1, manifest.clone()));
                Ok(())
            }
            Err(e) => {
                // The slot may hold the new manifest or not: the next
                // access reads what the disk has.
                cache.remove(dir);
                Err(e)
            }
        }
    }

    /// Renames a directory of partitions away (one atomic, synced step,
    /// under the commit lock) and forgets its cached manifests; the caller
    /// removes what it returns, outside the lock. A crash part way through
    /// that removal never leaves an older manifest slot to be read: what
    /// is left goes at the next open.
    fn rename_away(&self, dir: &Path) -> Result<Option<PathBuf>> {
        let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
            return internal_err!("cannot remove {}", dir.display());
        };
        // Unique: a partition removed again while an earlier removal of it
        // is still under way.
        static REMOVALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = REMOVALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let gone = parent.join(format!(".{}.{n}{DROPPING}", name.to_string_lossy()));
        let renamed = match fs::rename(dir, &gone) {
            Ok(()) => sync_dir(parent).map(|()| Some(gone)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("cannot remove", dir, e)),
        };
        self.forget_manifests(dir)?;
        renamed
    }

    /// Removes what removals a stop cut short left: directories renamed
    /// away (see [`Storage::remove_dir`]) of tables and of partitions.
    fn remove_leftover_drops(&self) -> Result<()> {
        let dropping = |e: &fs::DirEntry| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with('.') && name.ends_with(DROPPING)
        };
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if dropping(&entry) {
                fs::remove_dir_all(&path).map_err(|e| io_err("cannot remove", &path, e))?;
                continue;
            }
            for part in fs::read_dir(&path).into_iter().flatten().flatten() {
                if dropping(&part) {
                    let p = part.path();
                    fs::remove_dir_all(&p).map_err(|e| io_err("cannot remove", &p, e))?;
                }
            }
        }
        Ok(())
    }

    /// Forgets the cached manifests of the partitions under `dir`, once
    /// it is removed.
    fn forget_manifests(&self, dir: &Path) -> Result<()> {
        self.manifests
            .lock()
            .map_err(|_| poisoned("manifest cache"))?
            .retain(|d, _| !d.starts_with(dir));
        Ok(())
    }

    fn partition_dirs(&self) -> Result<Vec<(String, u32, PathBuf)>> {
        let mut out = vec![];
        let tables = match fs::read_dir(&self.root) {
            Ok(t) => t,
            Err(e) => return Err(io_err("cannot list", &self.root, e)),
        };
        for table in tables.flatten() {
            let table_name = table.file_name().to_string_lossy().to_string();
            // Not a table's: a removal's leftovers, or hidden files.
            if !table.path().is_dir() || table_name.starts_with('.') {
                continue;
            }
            let Ok(parts) = fs::read_dir(table.path()) else {
                continue;
            };
            for part in parts.flatten() {
                let name = part.file_name().to_string_lossy().to_string();
                if let Some(p) = name.strip_prefix('p').and_then(|s| s.parse().ok()) {
                    out.push((table_name.clone(), p, part.path()));
                }
            }
        }
        Ok(out)
    }

    /// The rows and bytes of some partitions of `table`, once the
    /// transactions in `decided` are committed there (resolve on read).
    pub fn stats(
        &self,
        table: &str,
        partitions: &[u32],
        decided: &[u64],
    ) -> Result<Vec<PartitionStats>> {
        partitions
            .iter()
            .map(|p| {
                self.resolve(table, *p, decided)?;
                let m = self.manifest(table, *p)?;
                Ok(PartitionStats {
                    partition: *p,
                    rows: m.rows(),
                    bytes: m.bytes(),
                })
            })
            .collect()
    }

    /// Removes every partition of a table held here.
    pub fn drop_table(&self, table: &str) -> Result<()> {
        check_table_key(table)?;
        // Under the commit lock: a manifest write of one of its partitions
        // finishes before, and none starts during, the removal.
        let gone = {
            let _guard = self.commit_lock.lock().map_err(|_| {
                DataFusionError::Internal("commit lock poisoned by an earlier panic".into())
            })?;
            self.rename_away(&self.root.join(table))?
        };
        remove_renamed(gone)
    }

    /// Removes one partition's files (a copy this worker no longer holds).
    pub fn drop_partition(&self, table: &str, partition: u32) -> Result<()> {
        let _guard = self.commit_lock.lock().map_err(|_| {
            DataFusionError::Internal("commit lock poisoned by an earlier panic".into())
        })?;
        let gone = self.rename_away(&self.partition_dir(table, partition)?)?;
        drop(_guard);
        remove_renamed(gone)
    }

    /// Tables with at least one partition directory here.
    pub fn tables(&self) -> Result<BTreeMap<String, Vec<u32>>> {
        let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (t, p, _) in self.partition_dirs()? {
            out.entry(t).or_default().push(p);
        }
        Ok(out)
    }
}

/// Refuses table keys that could name a path outside the worker's directory.
/// Removes a directory [`Storage::rename_away`] renamed, if there was one.
fn remove_renamed(gone: Option<PathBuf>) -> Result<()> {
    match gone {
        Some(path) => fs::remove_dir_all(&path).map_err(|e| io_err("cannot remove", &path, e)),
        None => Ok(()),
    }
}

fn poisoned(what: &str) -> DataFusionError {
    DataFusionError::Internal(format!("{what} poisoned by an earlier panic"))
}

fn check_table_key(table: &str) -> Result<()> {
    let bad = table.is_empty()
        || table.starts_with('.')
        || table.contains("..")
        || table.contains(['/', '\\', '\0']);
    if bad {
        return internal_err!("'{table}' is not a valid table key");
    }
    Ok(())
}

/// Refuses any name but a data file's (`<digits>.parquet`), as a manifest
/// copied from another worker names them: nothing outside the partition's
/// directory, and not its manifest or staging.
fn check_file_name(name: &str) -> Result<()> {
    let good = name
        .strip_suffix(".parquet")
        .is_some_and(|stem| !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()));
    if !good {
        return internal_err!("'{name}' is not a valid data file name");
    }
    Ok(())
}

#[cfg(test)]
mod test_util {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

    use super::{Compaction, MergeRule, StagedWrite, Storage};

    pub(super) fn batch(values: Vec<i64>) -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let b =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))]).unwrap();
        (schema, b)
    }

    pub(super) fn write(s: &Storage, txn: u64, table: &str, values: Vec<i64>) {
        let (schema, b) = batch(values);
        s.prepare(txn, table, 0, schema, &[b]).unwrap();
        let w = StagedWrite {
            txn,
            table: table.into(),
            partition: 0,
        };
        s.commit(txn, &[w]).unwrap();
    }

    pub(super) fn rule(min_files: usize) -> MergeRule {
        MergeRule {
            min_files,
            max_file_bytes: u64::MAX,
            tiered: false,
            below_txn: u64::MAX,
        }
    }

    /// Prepares a compaction of what `rule` chooses in partition 0.
    pub(super) fn prepare(
        s: &Storage,
        txn: u64,
        table: &str,
        rule: &MergeRule,
    ) -> Option<Compaction> {
        let names: Vec<String> = rule
            .choose(&s.manifest(table, 0).unwrap().files)
            .into_iter()
            .map(|f| f.name)
            .collect();
        s.compact_prepare(txn, table, 0, &names).unwrap()
    }

    pub(super) fn compact(s: &Storage, txn: u64, table: &str) -> Option<Compaction> {
        let c = prepare(s, txn, table, &rule(2));
        let w = StagedWrite {
            txn,
            table: table.into(),
            partition: 0,
        };
        if c.is_some() {
            s.commit(txn, std::slice::from_ref(&w)).unwrap();
            // Committing again (a retry) changes nothing.
            s.commit(txn, &[w]).unwrap();
        }
        c
    }
}
