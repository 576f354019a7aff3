//! Compaction: which files of a partition to merge (`MergeRule`), and
//! merging them into a staged file whose commit swaps them out.

use std::fs::{self, File};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};
use serde::{Deserialize, Serialize};

use super::parquet_io::{io_err, sync_dir, write_staged, write_synced};
use super::{DataFile, Storage};

/// What a compaction replaced, kept beside its staged file until commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compaction {
    /// The merged files in the order their rows were appended.
    pub replaces: Vec<DataFile>,
    /// The new file.
    pub file: DataFile,
}

/// Which files of a partition a compaction merges.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MergeRule {
    /// Merge only if at least this many files qualify (and never fewer
    /// than 2).
    pub min_files: usize,
    /// Files of this size or more are left as they are.
    pub max_file_bytes: u64,
    /// Leave out the largest file while it outweighs all the others
    /// together: merging many small files into one large one rewrites the
    /// large one each time, so it waits until they add up (each row is then
    /// rewritten a logarithmic number of times, not once per merge).
    pub tiered: bool,
    /// Merge only files visible to every open snapshot: those of
    /// transactions below this one. A merged file is visible as its newest
    /// transaction, so a snapshot that does not see one of its files must
    /// not find them merged.
    #[serde(default = "no_bound")]
    pub below_txn: u64,
}

fn no_bound() -> u64 {
    u64::MAX
}

impl MergeRule {
    /// The files to merge out of a partition's, in manifest order.
    pub fn choose(&self, files: &[DataFile]) -> Vec<DataFile> {
        let mut chosen: Vec<&DataFile> = files
            .iter()
            .filter(|f| {
                // A compaction's output is visible as the rows it holds,
                // but is only settled once its own transaction is below
                // the bound too (decided everywhere): merging it earlier
                // would let a late commit of that transaction find it gone.
                let settled = crate::index::file_txn(&f.name).is_none_or(|t| t < self.below_txn);
                f.bytes < self.max_file_bytes && f.visible_txn() < self.below_txn && settled
            })
            .collect();
        if self.tiered {
            loop {
                let total: u64 = chosen.iter().map(|f| f.bytes).sum();
                let Some((i, largest)) = chosen.iter().enumerate().max_by_key(|(_, f)| f.bytes)
                else {
                    break;
                };
                if largest.bytes <= total - largest.bytes {
                    break;
                }
                chosen.remove(i);
            }
        }
        if chosen.len() < self.min_files.max(2) {
            return vec![];
        }
        chosen.into_iter().cloned().collect()
    }
}

pub(super) fn compaction_name(txn: u64) -> String {
    format!("{txn:020}.compaction.json")
}

impl Storage {
    /// Merges the named files of a partition (the coordinator chose them
    /// with a [`MergeRule`] on one copy, so every copy merges the same
    /// ones) into a staged file of `txn`, in the order named; notes beside
    /// it which files it replaces. The commit of `txn` swaps them; their
    /// rows keep their order, so index entries naming the old files are
    /// forwarded by an offset.
    pub fn compact_prepare(
        &self,
        txn: u64,
        table: &str,
        partition: u32,
        names: &[String],
    ) -> Result<Option<Compaction>> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let dir = self.partition_dir(table, partition)?;
        // In the order named (not this copy's manifest order, which
        // commits landing in another order may have made different): every
        // copy writes the same rows in the same order.
        let files = self.manifest(table, partition)?.files;
        let mut small: Vec<DataFile> = Vec::with_capacity(names.len());
        for name in names {
            let Some(f) = files.iter().find(|f| &f.name == name) else {
                return crate::precondition_err!(
                    "{table} partition {partition} here does not list {name}, which the \
                     compaction was asked to merge; this copy is not in sync, nothing was merged"
                );
            };
            small.push(f.clone());
        }
        if small.len() < 2 {
            return Ok(None);
        }
        if small.iter().map(|f| f.rows).sum::<u64>() > u64::from(u32::MAX) {
            return crate::precondition_err!(
                "{table} partition {partition} has more rows in small files than one file can \
                 index; split the partition first"
            );
        }
        let staged = self.staged_dir(table, partition)?;
        let mut schema: Option<SchemaRef> = None;
        let mut readers = vec![];
        for f in &small {
            let path = dir.join(&f.name);
            let file = File::open(&path).map_err(|e| io_err("cannot open", &path, e))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
            let first = schema.get_or_insert_with(|| Arc::clone(builder.schema()));
            if builder.schema().fields() != first.fields() {
                return crate::precondition_err!(
                    "{} in {table} partition {partition} has another schema than {}; \
                     it cannot be merged",
                    f.name,
                    small[0].name
                );
            }
            readers.push(builder.build()?);
        }
        let Some(schema) = schema else {
            return Ok(None);
        };
        let batches = readers
            .into_iter()
            .flatten()
            .map(|b| b.map_err(DataFusionError::from));
        let file = write_staged(&staged, txn, schema, batches)?;
        let expected: u64 = small.iter().map(|f| f.rows).sum();
        if file.rows != expected {
            let _ = fs::remove_file(staged.join(&file.name));
            return crate::precondition_err!(
                "merging {table} partition {partition} read {} rows where its manifest says \
                 {expected}; nothing was changed",
                file.rows
            );
        }
        let mut file = file;
        file.visible_as = small.iter().map(DataFile::visible_txn).max();
        let compaction = Compaction {
            replaces: small,
            file,
        };
        let body = serde_json::to_vec(&compaction)
            .map_err(|e| DataFusionError::Internal(format!("compaction encoding: {e}")))?;
        write_synced(&staged.join(compaction_name(txn)), &body)?;
        sync_dir(&staged)?;
        Ok(Some(compaction))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use datafusion::arrow::array::Int64Array;

    use crate::storage::test_util::{compact, prepare, rule, write};
    use crate::storage::{STAGED, StagedWrite, file_name};

    #[test]
    fn tiered_rule_waits_for_small_files_to_add_up() {
        let f = |name: &str, bytes| DataFile::new(name.into(), 1, bytes);
        let files = vec![f("big", 1000), f("a", 10), f("b", 10), f("huge", 5000)];
        let mut r = rule(2);
        r.max_file_bytes = 4000;
        let names = |v: Vec<DataFile>| v.into_iter().map(|f| f.name).collect::<Vec<_>>();
        assert_eq!(names(r.choose(&files)), ["big", "a", "b"]);
        r.tiered = true;
        assert_eq!(names(r.choose(&files)), ["a", "b"]);
        r.min_files = 3;
        assert!(r.choose(&files).is_empty());
        let even = vec![f("x", 10), f("y", 10), f("z", 15)];
        assert_eq!(names(r.choose(&even)), ["x", "y", "z"]);
    }

    /// Merged files keep their rows in order; locators naming the old
    /// files are forwarded, through two compactions; merged-away files go
    /// once the scans pinned before the merge are done.
    #[test]
    fn compaction_forwards_locators() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        write(&s, 1, "t", vec![10, 11, 12]);
        write(&s, 2, "t", vec![20, 21]);
        assert!(prepare(&s, 3, "t", &rule(3)).is_none());
        let pin = s.pin();
        let c = compact(&s, 3, "t").unwrap();
        assert_eq!((c.replaces.len(), c.file.rows), (2, 5));
        let m = s.manifest("t", 0).unwrap();
        assert_eq!(m.files.len(), 1);
        let old = dir.path().join("t/p0000").join(file_name(1));
        assert!(old.exists(), "deleted under a running scan");
        drop(pin);
        assert!(!old.exists());
        write(&s, 4, "t", vec![40]);
        compact(&s, 5, "t").unwrap();
        let m = s.manifest("t", 0).unwrap();
        assert_eq!(m.files.len(), 1);
        assert_eq!(m.files[0].name, file_name(5));
        let rows: crate::index::RowsByFile =
            BTreeMap::from([(1, vec![2]), (2, vec![0, 1]), (4, vec![0])]);
        let forwarded = s.indexed_files("t", 0, rows, None).unwrap();
        assert_eq!(forwarded.len(), 1);
        assert_eq!(forwarded[0].2, vec![2, 3, 4, 5]);
        // The values at those positions are the ones first written there.
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let f = File::open(&forwarded[0].0).unwrap();
        let all: Vec<i64> = ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
            .flat_map(|b| {
                let b = b.unwrap();
                let c = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                c.values().to_vec()
            })
            .collect();
        assert_eq!(all, vec![10, 11, 12, 20, 21, 40]);
        let missing = BTreeMap::from([(9, vec![0])]);
        assert!(s.indexed_files("t", 0, missing, None).is_err());
        // A stop between the swap and the deletion: the next start deletes.
        let mut m = s.manifest("t", 0).unwrap();
        let stray = dir.path().join("t/p0000/stray.parquet");
        fs::write(&stray, b"x").unwrap();
        m.retired.push("stray.parquet".into());
        s.write_manifest(&dir.path().join("t/p0000"), &m).unwrap();
        drop(s);
        let s = Storage::open(dir.path()).unwrap();
        assert!(!stray.exists());
        assert!(s.manifest("t", 0).unwrap().retired.is_empty());
    }

    /// A compaction committed again after a later one merged its output
    /// away (a retry, or a read resolving a decision it carries) is done:
    /// its file is not put back into the manifest, to be deleted under it.
    #[test]
    fn late_commit_of_a_merged_away_compaction_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        write(&s, 1, "t", vec![1]);
        write(&s, 2, "t", vec![2]);
        compact(&s, 3, "t").unwrap();
        write(&s, 4, "t", vec![4]);
        let pin = s.pin();
        compact(&s, 5, "t").unwrap();
        let w = |txn| StagedWrite {
            txn,
            table: "t".into(),
            partition: 0,
        };
        // Still on disk (pinned), no longer listed.
        s.commit(3, &[w(3)]).unwrap();
        s.resolve("t", 0, &[1, 3]).unwrap();
        let names: Vec<String> = s
            .manifest("t", 0)
            .unwrap()
            .files
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, [file_name(5)]);
        drop(pin);
        assert!(!dir.path().join("t/p0000").join(file_name(3)).exists());
        // The merge bound holds back a compaction's output until its own
        // transaction is settled.
        write(&s, 6, "t", vec![6]);
        let mut r = rule(2);
        r.below_txn = 5;
        assert!(prepare(&s, 7, "t", &r).is_none());
    }

    /// An aborted compaction leaves the partition as it was.
    #[test]
    fn aborted_compaction_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        write(&s, 1, "t", vec![1]);
        write(&s, 2, "t", vec![2]);
        let before = s.manifest("t", 0).unwrap();
        prepare(&s, 3, "t", &rule(2)).unwrap();
        assert_eq!(s.staged().unwrap().len(), 1);
        s.abort(3).unwrap();
        assert!(s.staged().unwrap().is_empty());
        assert_eq!(s.manifest("t", 0).unwrap(), before);
        let staged = dir.path().join("t/p0000").join(STAGED);
        assert_eq!(fs::read_dir(staged).unwrap().count(), 0);
    }
}
