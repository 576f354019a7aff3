//! The two-phase commit of staged writes (prepare, commit, abort) and the
//! read side that resolves decided transactions and picks visible files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;

#[cfg(test)]
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};

use super::compaction::compaction_name;
use super::parquet_io::{StagedFile, io_err, parquet_rows, remove_if_present};
use super::{Compaction, DataFile, Moved, STAGED, StagedWrite, Storage, file_name};
use crate::snapshot::Snapshot;

impl Storage {
    /// Commits the staged files of a partition that belong to transactions
    /// `decided` (a snapshot's: decided, perhaps not committed here yet),
    /// so that a read at that snapshot finds them (resolve on read).
    pub fn resolve(&self, table: &str, partition: u32, decided: &[u64]) -> Result<()> {
        if decided.is_empty() {
            return Ok(());
        }
        let dir = self.partition_dir(table, partition)?;
        let pending: Vec<u64> = {
            // Looked at under the commit lock: a commit under way has moved
            // the staged file but not yet swapped the manifest, and must be
            // seen as not done.
            let _guard = self.commit_lock.lock().map_err(|_| {
                DataFusionError::Internal("commit lock poisoned by an earlier panic".into())
            })?;
            let mut pending = vec![];
            let mut manifest = None;
            for txn in decided {
                let name = file_name(*txn);
                if dir.join(STAGED).join(&name).exists() {
                    pending.push(*txn);
                } else if dir.join(&name).exists() {
                    // Moved by a commit that stopped before the swap.
                    let m = match &manifest {
                        Some(m) => m,
                        None => manifest.insert(self.manifest(table, partition)?),
                    };
                    if !m.files.iter().any(|f| f.name == name) {
                        pending.push(*txn);
                    }
                }
            }
            pending
        };
        for txn in pending {
            let write = StagedWrite {
                txn,
                table: table.to_string(),
                partition,
            };
            self.commit(txn, &[write])?;
        }
        Ok(())
    }

    /// The committed files of a partition that `snapshot` sees, after
    /// resolving its decided transactions; every file without one.
    pub fn visible_files(
        &self,
        table: &str,
        partition: u32,
        snapshot: Option<&Snapshot>,
    ) -> Result<Vec<(PathBuf, DataFile)>> {
        let Some(snapshot) = snapshot else {
            return self.data_files(table, partition);
        };
        self.resolve(table, partition, &snapshot.decided)?;
        let mut files = self.data_files(table, partition)?;
        files.retain(|(_, f)| snapshot.sees(f.visible_txn()));
        Ok(files)
    }

    /// The files of a partition that hold the rows `rows` names (index
    /// locators, forwarded past compactions), with those rows' positions.
    /// With a snapshot, rows of transactions it does not see are left out
    /// and its decided transactions are resolved first.
    pub fn indexed_files(
        &self,
        table: &str,
        partition: u32,
        mut rows: crate::index::RowsByFile,
        snapshot: Option<&Snapshot>,
    ) -> Result<Vec<(PathBuf, DataFile, Vec<u32>)>> {
        if let Some(snapshot) = snapshot {
            rows.retain(|txn, _| snapshot.sees(*txn));
            self.resolve(table, partition, &snapshot.decided)?;
        }
        let dir = self.partition_dir(table, partition)?;
        let manifest = self.manifest(table, partition)?;
        let mut rows = manifest.forward(rows)?;
        Ok(manifest
            .files
            .into_iter()
            .filter_map(|f| {
                let positions = rows.remove(&crate::index::file_txn(&f.name)?)?;
                Some((dir.join(&f.name), f, positions))
            })
            .collect())
    }

    /// Writes the rows of `txn` for one partition to a staged file, in the
    /// order given, and fsyncs it (what a worker's prepare does, for tests).
    #[cfg(test)]
    pub(crate) fn prepare(
        &self,
        txn: u64,
        table: &str,
        partition: u32,
        schema: SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<DataFile> {
        let mut file = self.staged_file(txn, table, partition, schema)?;
        for b in batches {
            file.write(b)?;
        }
        file.finish()
    }

    /// A staged file of `txn` for one partition, written as its rows arrive
    /// (see [`StagedFile`]); preparing it again starts it anew.
    pub fn staged_file(
        &self,
        txn: u64,
        table: &str,
        partition: u32,
        schema: SchemaRef,
    ) -> Result<StagedFile> {
        StagedFile::create(&self.staged_dir(table, partition)?, txn, schema)
    }

    /// Makes the staged files of `txn` part of their partitions. Idempotent:
    /// committing an already committed transaction changes nothing.
    pub fn commit(&self, txn: u64, writes: &[StagedWrite]) -> Result<()> {
        let _guard = self.commit_lock.lock().map_err(|_| {
            DataFusionError::Internal("commit lock poisoned by an earlier panic".into())
        })?;
        for w in writes.iter().filter(|w| w.txn == txn) {
            let dir = self.partition_dir(&w.table, w.partition)?;
            let name = file_name(txn);
            let staged = dir.join(STAGED).join(&name);
            let mut manifest = self.manifest(&w.table, w.partition)?;
            let note = dir.join(STAGED).join(compaction_name(txn));
            // Committed before (and perhaps merged away since).
            if manifest.files.iter().any(|f| f.name == name) || manifest.moved.contains_key(&txn) {
                remove_if_present(&note)?;
                continue;
            }
            let target = dir.join(&name);
            let compaction: Option<Compaction> = match fs::read(&note) {
                Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                    crate::ErrorKind::FailedPrecondition.error(format!(
                        "{} is corrupt: {e}; remove it and {} to drop the compaction",
                        note.display(),
                        staged.display()
                    ))
                })?),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(io_err("cannot read", &note, e)),
            };
            // An earlier commit may have moved the file and stopped before
            // the manifest swap: finish it from the moved file.
            if staged.exists() {
                fs::rename(&staged, &target).map_err(|e| io_err("cannot commit", &staged, e))?;
            } else if !target.exists() {
                return crate::precondition_err!(
                    "the rows of transaction {txn} for {} partition {} are missing on this worker; \
                     restore the partition from a replica or backup",
                    w.table,
                    w.partition
                );
            }
            let Some(compaction) = compaction else {
                let rows = parquet_rows(&target)?;
                let bytes = fs::metadata(&target)
                    .map_err(|e| io_err("cannot stat", &target, e))?
                    .len();
                manifest.files.push(DataFile::new(name, rows, bytes));
                self.write_manifest(&dir, &manifest)?;
                continue;
            };
            let gone: BTreeSet<&str> = compaction
                .replaces
                .iter()
                .map(|f| f.name.as_str())
                .collect();
            if manifest
                .files
                .iter()
                .filter(|f| gone.contains(f.name.as_str()))
                .count()
                != gone.len()
            {
                return crate::precondition_err!(
                    "the files a compaction of {} partition {} merged are no longer all there; \
                     was it compacted twice at once? Leave {} in place and report it",
                    w.table,
                    w.partition,
                    note.display()
                );
            }
            // Where each merged file's rows start in the new one.
            let mut starts: BTreeMap<u64, u32> = BTreeMap::new();
            let mut offset = 0u32;
            for f in &compaction.replaces {
                if let Some(old) = crate::index::file_txn(&f.name) {
                    starts.insert(old, offset);
                }
                offset += u32::try_from(f.rows).unwrap_or(u32::MAX);
            }
            // Forwarded to a merged file before: forward to the new one.
            for m in manifest.moved.values_mut() {
                if let Some(start) = starts.get(&m.to) {
                    *m = Moved {
                        to: txn,
                        offset: start + m.offset,
                    };
                }
            }
            // Recorded for every merged file, index entries or not: a late
            // commit of a merged-away transaction finds it here and knows
            // it is done, instead of putting the file back.
            for (old, offset) in starts {
                manifest.moved.insert(old, Moved { to: txn, offset });
            }
            manifest.files.retain(|f| !gone.contains(f.name.as_str()));
            manifest.files.push(compaction.file.clone());
            manifest.retired.retain(|n| dir.join(n).exists());
            manifest.retired.extend(gone.iter().map(|n| n.to_string()));
            self.write_manifest(&dir, &manifest)?;
            remove_if_present(&note)?;
            self.retire(gone.iter().map(|n| dir.join(n)).collect());
        }
        Ok(())
    }

    /// Removes the files written by transactions up to `max_txn` from a
    /// partition (an ASYNC index's outbox, once applied): the manifest is
    /// swapped first, then the files are deleted. Idempotent.
    pub fn truncate(&self, table: &str, partition: u32, max_txn: u64) -> Result<()> {
        let _guard = self.commit_lock.lock().map_err(|_| {
            DataFusionError::Internal("commit lock poisoned by an earlier panic".into())
        })?;
        let dir = self.partition_dir(table, partition)?;
        let mut manifest = self.manifest(table, partition)?;
        let (gone, kept): (Vec<DataFile>, Vec<DataFile>) = manifest
            .files
            .into_iter()
            .partition(|f| crate::index::file_txn(&f.name).is_some_and(|t| t <= max_txn));
        if gone.is_empty() {
            return Ok(());
        }
        manifest.files = kept;
        self.write_manifest(&dir, &manifest)?;
        for f in gone {
            remove_if_present(&dir.join(&f.name))?;
        }
        Ok(())
    }

    /// Deletes the staged files of `txn`.
    pub fn abort(&self, txn: u64) -> Result<()> {
        for w in self.staged()?.into_iter().filter(|w| w.txn == txn) {
            let staged = self.partition_dir(&w.table, w.partition)?.join(STAGED);
            remove_if_present(&staged.join(compaction_name(txn)))?;
            remove_if_present(&staged.join(file_name(txn)))?;
        }
        Ok(())
    }

    /// Every staged (prepared, undecided) write on disk.
    pub fn staged(&self) -> Result<Vec<StagedWrite>> {
        let mut out = BTreeSet::new();
        for (table, partition, dir) in self.partition_dirs()? {
            let staged = dir.join(STAGED);
            let Ok(entries) = fs::read_dir(&staged) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if let Some(txn) = name.strip_suffix(".parquet").and_then(|s| s.parse().ok()) {
                    out.insert(StagedWrite {
                        txn,
                        table: table.clone(),
                        partition,
                    });
                }
            }
        }
        Ok(out.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::storage::sort_by_columns;
    use crate::storage::test_util::batch;

    /// A commit that moved the staged file but stopped before swapping the
    /// manifest is finished by committing again.
    #[test]
    fn commit_finishes_after_an_interrupted_rename() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let (schema, b) = batch(vec![1, 2]);
        s.prepare(3, "t.0", 1, schema, &[b]).unwrap();
        let p = dir.path().join("t.0").join("p0001");
        fs::rename(p.join(STAGED).join(file_name(3)), p.join(file_name(3))).unwrap();
        let w = StagedWrite {
            txn: 3,
            table: "t.0".into(),
            partition: 1,
        };
        s.commit(3, std::slice::from_ref(&w)).unwrap();
        assert_eq!(s.manifest("t.0", 1).unwrap().rows(), 2);
        // Rows that are nowhere are an error, not a silent success.
        let lost = StagedWrite { txn: 4, ..w };
        assert!(s.commit(4, &[lost]).is_err());
    }

    /// A read resolves the decided transactions of its snapshot: staged
    /// ones, and one whose commit moved the file but did not swap the
    /// manifest; transactions with nothing here are left alone.
    #[test]
    fn resolve_commits_what_a_snapshot_needs() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        for txn in [3, 5] {
            let (schema, b) = batch(vec![1, 2]);
            s.prepare(txn, "t", 0, schema, &[b]).unwrap();
        }
        let p = dir.path().join("t").join("p0000");
        fs::rename(p.join(STAGED).join(file_name(5)), p.join(file_name(5))).unwrap();
        s.resolve("t", 0, &[3, 5, 8]).unwrap();
        let m = s.manifest("t", 0).unwrap();
        assert_eq!((m.files.len(), m.rows()), (2, 4));
        assert!(s.staged().unwrap().is_empty());
        // Again: nothing left to do.
        s.resolve("t", 0, &[3, 5, 8]).unwrap();
        assert_eq!(s.manifest("t", 0).unwrap(), m);
    }

    #[test]
    fn truncate_drops_applied_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        for txn in [5, 9] {
            let (schema, b) = batch(vec![1, 2]);
            s.prepare(txn, "o", 2, schema, &[b]).unwrap();
            let w = StagedWrite {
                txn,
                table: "o".into(),
                partition: 2,
            };
            s.commit(txn, &[w]).unwrap();
        }
        s.truncate("o", 2, 7).unwrap();
        s.truncate("o", 2, 7).unwrap();
        let m = s.manifest("o", 2).unwrap();
        assert_eq!(m.files.len(), 1);
        assert_eq!(m.files[0].name, file_name(9));
        assert!(!dir.path().join("o/p0002").join(file_name(5)).exists());
    }

    #[test]
    fn prepare_commit_abort() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let (schema, b) = batch(vec![3, 1, 2]);
        let sorted = sort_by_columns(b.clone(), &["k".into()]).unwrap();
        s.prepare(7, "t", 0, schema.clone(), &[sorted]).unwrap();
        s.prepare(8, "t", 0, schema.clone(), &[b]).unwrap();
        assert_eq!(s.staged().unwrap().len(), 2);
        assert_eq!(s.manifest("t", 0).unwrap().rows(), 0);
        let w = StagedWrite {
            txn: 7,
            table: "t".into(),
            partition: 0,
        };
        s.commit(7, std::slice::from_ref(&w)).unwrap();
        s.commit(7, &[w]).unwrap();
        s.abort(8).unwrap();
        assert!(s.staged().unwrap().is_empty());
        let m = s.manifest("t", 0).unwrap();
        assert_eq!((m.files.len(), m.rows()), (1, 3));
        assert_eq!(s.tables().unwrap().get("t"), Some(&vec![0]));
        s.drop_table("t").unwrap();
        assert!(s.tables().unwrap().is_empty());
        assert!(s.drop_table("..").is_err());
        assert!(s.manifest("../x", 0).is_err());
        // Nothing of the removal is left, and a table of that key starts
        // afresh (no manifest of the dropped one is remembered).
        assert_eq!(
            fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.path().is_dir())
                .count(),
            0
        );
        super::super::test_util::write(&s, 9, "t", vec![4]);
        let m = s.manifest("t", 0).unwrap();
        assert_eq!((m.files.len(), m.rows()), (1, 1));
        s.drop_partition("t", 0).unwrap();
        assert_eq!(s.manifest("t", 0).unwrap().files.len(), 0);
    }

    /// A removal a crash cut short (its directory renamed away, not yet
    /// deleted) is not a table, and goes at the next open.
    #[test]
    fn a_removal_cut_short_is_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path()).unwrap();
            super::super::test_util::write(&s, 3, "t", vec![1, 2]);
            super::super::test_util::write(&s, 4, "u", vec![5]);
        }
        fs::rename(dir.path().join("t"), dir.path().join(".t.0.dropping")).unwrap();
        fs::rename(
            dir.path().join("u/p0000"),
            dir.path().join("u/.p0000.7.dropping"),
        )
        .unwrap();
        let s = Storage::open(dir.path()).unwrap();
        assert!(s.tables().unwrap().is_empty());
        assert!(!dir.path().join(".t.0.dropping").exists());
        assert!(!dir.path().join("u/.p0000.7.dropping").exists());
    }
}
