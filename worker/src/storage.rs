//! Partition storage on a worker's disk: immutable Parquet files behind an
//! atomically swapped manifest, one directory per partition.
//!
//! ```text
//! <worker dir>/<table>/p0003/
//!     manifest.json          files that make up the partition (swapped by rename)
//!     00000000000000000007.parquet
//!     staged/00000000000000000009.parquet   prepared by txn 9, not yet committed
//! ```
//!
//! A write is two-phase. `prepare` writes the transaction's rows of one
//! partition to a staged Parquet file and fsyncs it: this is the write-ahead
//! record, and once every partition of a statement is prepared the
//! coordinator decides. `commit` moves the staged file into the partition and
//! swaps in a manifest naming it (write, fsync, rename, fsync the directory);
//! `abort` deletes the staged file. A staged file found after a restart is
//! resolved by the coordinator, which logged its decision before committing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::{
    SortColumn, concat_batches, lexsort_to_indices, take_record_batch,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result, exec_err};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

const MANIFEST: &str = "manifest.json";
/// Rows per Parquet data page, at most.
const PAGE_ROWS: usize = 8192;
const STAGED: &str = "staged";

/// One committed Parquet file of a partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFile {
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
}

/// The files that make up one partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: Vec<DataFile>,
    /// Files merged away by compaction, by transaction: which file holds
    /// their rows now, from which row on. Index entries keep naming the
    /// file a row was first written to; this forwards them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub moved: BTreeMap<u64, Moved>,
    /// Files merged away, deleted once no scan that began before the merge
    /// is still reading them (and at the next start).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
}

/// Where the rows of a merged-away file are: rows `offset..` of file `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub to: u64,
    pub offset: u32,
}

impl Manifest {
    /// Rewrites index locators (file by transaction → rows) to the files
    /// that hold those rows now.
    pub fn forward(&self, rows: crate::index::RowsByFile) -> Result<crate::index::RowsByFile> {
        let present: BTreeSet<u64> = self
            .files
            .iter()
            .filter_map(|f| crate::index::file_txn(&f.name))
            .collect();
        let mut out = crate::index::RowsByFile::new();
        let mut shifted = false;
        for (file, positions) in rows {
            if present.contains(&file) {
                out.entry(file).or_default().extend(positions);
            } else if let Some(m) = self.moved.get(&file) {
                shifted = true;
                out.entry(m.to)
                    .or_default()
                    .extend(positions.into_iter().map(|r| m.offset + r));
            } else {
                return exec_err!(
                    "an index names rows of file {} which this partition does not have; \
                     rebuild the index (DROP INDEX, then CREATE INDEX)",
                    file_name(file)
                );
            }
        }
        if shifted {
            for positions in out.values_mut() {
                positions.sort_unstable();
                positions.dedup();
            }
        }
        Ok(out)
    }

    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// Rows and bytes of one partition, as `SHOW PARTITIONS` reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionStats {
    pub partition: u32,
    pub rows: u64,
    pub bytes: u64,
}

/// A staged write found on disk: (txn, table, partition).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StagedWrite {
    pub txn: u64,
    pub table: String,
    pub partition: u32,
}

/// All partitions stored by one worker.
#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    /// Serialises manifest swaps; writes to distinct partitions are rare
    /// enough at commit time that one lock costs nothing measurable.
    commit_lock: Mutex<()>,
    readers: Mutex<Readers>,
}

/// Scans under way, by the epoch they began in, and files merged away in
/// each epoch: a file retired in epoch `e` is deleted once no scan of an
/// epoch up to `e` is left (later ones read manifests without it).
#[derive(Debug, Default)]
struct Readers {
    epoch: u64,
    live: BTreeMap<u64, usize>,
    retired: Vec<(u64, PathBuf)>,
}

/// Keeps the files a scan may read from being deleted by a compaction
/// until it is dropped. Take it before reading the manifest.
#[derive(Debug)]
pub struct ReadPin {
    storage: Arc<Storage>,
    epoch: u64,
}

impl Readers {
    /// Takes out the retired files no live scan can still read.
    fn deletable(&mut self) -> Vec<PathBuf> {
        if self.retired.is_empty() {
            return vec![];
        }
        let oldest = self.live.keys().next().copied().unwrap_or(u64::MAX);
        let (gone, kept) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(e, _)| *e < oldest);
        self.retired = kept;
        gone.into_iter().map(|(_, p)| p).collect()
    }
}

impl Drop for ReadPin {
    fn drop(&mut self) {
        let gone = match self.storage.readers.lock() {
            Ok(mut r) => {
                if let Some(n) = r.live.get_mut(&self.epoch) {
                    *n -= 1;
                    if *n == 0 {
                        r.live.remove(&self.epoch);
                    }
                }
                r.deletable()
            }
            Err(_) => vec![],
        };
        delete_retired(gone);
    }
}

/// Deletes merged-away files; one that cannot be goes at the next start.
fn delete_retired(paths: Vec<PathBuf>) {
    for path in paths {
        if let Err(e) = remove_if_present(&path) {
            tracing::warn!(error = %e, "a merged-away file stays until the next start");
        }
    }
}

/// What a compaction replaced, kept beside its staged file until commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compaction {
    /// The merged files in the order their rows were appended.
    pub replaces: Vec<DataFile>,
    /// The new file.
    pub file: DataFile,
    /// Record where the rows of the merged files went (index entries may
    /// name them).
    #[serde(default)]
    pub forward: bool,
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
    /// Record where the rows of merged files go, for index entries that
    /// name them (a table with indexes).
    pub forward: bool,
}

impl MergeRule {
    /// The files to merge out of a partition's, in manifest order.
    pub fn choose(&self, files: &[DataFile]) -> Vec<DataFile> {
        let mut chosen: Vec<&DataFile> = files
            .iter()
            .filter(|f| f.bytes < self.max_file_bytes)
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

fn compaction_name(txn: u64) -> String {
    format!("{txn:020}.compaction.json")
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> DataFusionError {
    let hint = match e.kind() {
        ErrorKind::StorageFull => " (the disk is full: free space or move the data dir)",
        ErrorKind::PermissionDenied => " (check the data dir's permissions)",
        _ => "",
    };
    DataFusionError::Execution(format!("{what} {}: {e}{hint}", path.display()))
}

fn file_name(txn: u64) -> String {
    format!("{txn:020}.parquet")
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync directory", dir, e))
}

impl Storage {
    pub fn open(root: impl Into<PathBuf>) -> Result<Arc<Self>> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| io_err("cannot create", &root, e))?;
        let storage = Arc::new(Self {
            root,
            commit_lock: Mutex::new(()),
            readers: Mutex::new(Readers::default()),
        });
        // Nothing reads yet: files merged away before a stop can go.
        for (table, partition, dir) in storage.partition_dirs()? {
            let mut manifest = storage.manifest(&table, partition)?;
            if manifest.retired.is_empty() {
                continue;
            }
            for name in std::mem::take(&mut manifest.retired) {
                remove_if_present(&dir.join(name))?;
            }
            storage.write_manifest(&dir, &manifest)?;
        }
        Ok(storage)
    }

    /// Holds off the deletion of merged-away files while a scan runs.
    pub fn pin(self: &Arc<Self>) -> ReadPin {
        let epoch = match self.readers.lock() {
            Ok(mut r) => {
                let epoch = r.epoch;
                *r.live.entry(epoch).or_default() += 1;
                epoch
            }
            Err(_) => 0,
        };
        ReadPin {
            storage: Arc::clone(self),
            epoch,
        }
    }

    /// Files merged away just now: deleted once earlier scans are done.
    fn retire(&self, paths: Vec<PathBuf>) {
        let gone = match self.readers.lock() {
            Ok(mut r) => {
                let epoch = r.epoch;
                r.retired.extend(paths.into_iter().map(|p| (epoch, p)));
                r.epoch += 1;
                r.deletable()
            }
            Err(_) => vec![],
        };
        delete_retired(gone);
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
        let path = self.partition_dir(table, partition)?.join(MANIFEST);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                DataFusionError::Execution(format!(
                    "manifest {} is corrupt: {e}; restore it from a replica or backup",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Manifest::default()),
            Err(e) => Err(io_err("cannot read", &path, e)),
        }
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

    /// The files of a partition that hold the rows `rows` names (index
    /// locators, forwarded past compactions), with those rows' positions.
    pub fn indexed_files(
        &self,
        table: &str,
        partition: u32,
        rows: crate::index::RowsByFile,
    ) -> Result<Vec<(PathBuf, DataFile, Vec<u32>)>> {
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

    /// The index entries of the rows of a partition written by transactions
    /// up to `max_txn` (a backfill's share): `columns`, then `__part` (if
    /// `schema` has it), `__file`, `__row`.
    pub fn index_entries(
        &self,
        table: &str,
        partition: u32,
        columns: &[String],
        max_txn: u64,
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>> {
        use parquet::arrow::ProjectionMask;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let with_part = schema.field_with_name(tessera_sql::PART_COLUMN).is_ok();
        let mut out = vec![];
        for (path, file) in self.data_files(table, partition)? {
            let Some(txn) = crate::index::file_txn(&file.name) else {
                continue;
            };
            if txn > max_txn {
                continue;
            }
            let f = File::open(&path).map_err(|e| io_err("cannot open", &path, e))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(f)?;
            let roots: Vec<usize> = columns
                .iter()
                .map(|c| {
                    builder.schema().index_of(c).map_err(|_| {
                        DataFusionError::Execution(format!(
                            "indexed column '{c}' is missing from {}",
                            path.display()
                        ))
                    })
                })
                .collect::<Result<_>>()?;
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            let reader = builder.with_projection(mask).build()?;
            let mut row = 0u32;
            for batch in reader {
                let batch = batch?;
                let part = with_part.then_some(partition);
                out.push(crate::index::entries_of(
                    &batch, columns, part, txn, row, schema,
                )?);
                row += batch.num_rows() as u32;
            }
        }
        Ok(out)
    }

    /// Writes the rows of `txn` for one partition to a staged file, in the
    /// order given (the coordinator sorts them by CLUSTER BY, and index
    /// entries name rows by position), and fsyncs it.
    pub fn prepare(
        &self,
        txn: u64,
        table: &str,
        partition: u32,
        schema: SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<DataFile> {
        let dir = self.staged_dir(table, partition)?;
        let batch = concat_batches(&schema, batches)?;
        let file = write_staged(&dir, txn, schema, std::iter::once(Ok(batch)))?;
        sync_dir(&dir)?;
        Ok(file)
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

    /// Merges the files of a partition that `rule` chooses (in manifest
    /// order) into a staged file of `txn`; notes beside it which files it
    /// replaces. The
    /// commit of `txn` swaps them; their rows keep their order, so index
    /// entries naming the old files are forwarded by an offset.
    pub fn compact_prepare(
        &self,
        txn: u64,
        table: &str,
        partition: u32,
        rule: &MergeRule,
    ) -> Result<Option<Compaction>> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let dir = self.partition_dir(table, partition)?;
        let small = rule.choose(&self.manifest(table, partition)?.files);
        if small.is_empty() {
            return Ok(None);
        }
        if small.iter().map(|f| f.rows).sum::<u64>() > u64::from(u32::MAX) {
            return exec_err!(
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
                return exec_err!(
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
            return exec_err!(
                "merging {table} partition {partition} read {} rows where its manifest says \
                 {expected}; nothing was changed",
                file.rows
            );
        }
        let compaction = Compaction {
            replaces: small,
            file,
            forward: rule.forward,
        };
        let body = serde_json::to_vec(&compaction)
            .map_err(|e| DataFusionError::Internal(format!("compaction encoding: {e}")))?;
        write_synced(&staged.join(compaction_name(txn)), &body)?;
        sync_dir(&staged)?;
        Ok(Some(compaction))
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
                    DataFusionError::Execution(format!(
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
                return exec_err!(
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
                manifest.files.push(DataFile { name, rows, bytes });
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
                return exec_err!(
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
            if compaction.forward {
                for (old, offset) in starts {
                    manifest.moved.insert(old, Moved { to: txn, offset });
                }
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

    fn write_manifest(&self, dir: &Path, manifest: &Manifest) -> Result<()> {
        let tmp = dir.join("manifest.json.tmp");
        let bytes = serde_json::to_vec_pretty(manifest)
            .map_err(|e| DataFusionError::Internal(format!("manifest encoding: {e}")))?;
        write_synced(&tmp, &bytes)?;
        fs::rename(&tmp, dir.join(MANIFEST)).map_err(|e| io_err("cannot swap", &tmp, e))?;
        sync_dir(dir)
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

    fn partition_dirs(&self) -> Result<Vec<(String, u32, PathBuf)>> {
        let mut out = vec![];
        let tables = match fs::read_dir(&self.root) {
            Ok(t) => t,
            Err(e) => return Err(io_err("cannot list", &self.root, e)),
        };
        for table in tables.flatten() {
            if !table.path().is_dir() {
                continue;
            }
            let table_name = table.file_name().to_string_lossy().to_string();
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

    /// Rows and bytes of the given partitions of a table.
    pub fn stats(&self, table: &str, partitions: &[u32]) -> Result<Vec<PartitionStats>> {
        partitions
            .iter()
            .map(|p| {
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
        let dir = self.root.join(table);
        match fs::remove_dir_all(&dir) {
            Ok(()) => sync_dir(&self.root),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot remove", &dir, e)),
        }
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

/// Writes `bytes` to a new file at `path` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    (|| {
        let mut f = File::create(path)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()
    })()
    .map_err(|e| io_err("cannot write", path, e))
}

/// Writes `batches` as the staged file of `txn` in `dir` (a partition's
/// staged directory; the caller syncs it).
fn write_staged(
    dir: &Path,
    txn: u64,
    schema: SchemaRef,
    batches: impl Iterator<Item = Result<RecordBatch>>,
) -> Result<DataFile> {
    let path = dir.join(file_name(txn));
    let rows = write_parquet(&path, schema, batches)?;
    let bytes = fs::metadata(&path)
        .map_err(|e| io_err("cannot stat", &path, e))?
        .len();
    Ok(DataFile {
        name: file_name(txn),
        rows,
        bytes,
    })
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot remove", path, e)),
    }
}

/// Writes `batches` to a new Parquet file at `path` and fsyncs it; the
/// rows written. The file is removed again if anything fails.
fn write_parquet(
    path: &Path,
    schema: SchemaRef,
    batches: impl Iterator<Item = Result<RecordBatch>>,
) -> Result<u64> {
    let file = File::create(path).map_err(|e| io_err("cannot create", path, e))?;
    // LZ4 decompresses several times faster than ZSTD, and pages of at
    // most 8192 rows let page statistics and index row selections skip
    // most of a file instead of decoding 1 MB pages for a few rows.
    let props = WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .set_data_page_row_count_limit(PAGE_ROWS)
        .build();
    let result = (|| -> Result<u64> {
        let mut writer = ArrowWriter::try_new(file.try_clone()?, schema, Some(props))?;
        let mut rows = 0u64;
        for batch in batches {
            let batch = batch?;
            rows += batch.num_rows() as u64;
            writer.write(&batch)?;
        }
        writer.close()?;
        file.sync_all()?;
        Ok(rows)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(path);
        match e {
            DataFusionError::IoError(io) => io_err("cannot write", path, io),
            DataFusionError::ParquetError(p) => match *p {
                parquet::errors::ParquetError::External(inner) => {
                    match inner.downcast::<std::io::Error>() {
                        Ok(io) => io_err("cannot write", path, *io),
                        Err(other) => DataFusionError::Execution(format!(
                            "cannot write {}: {other}",
                            path.display()
                        )),
                    }
                }
                other => {
                    DataFusionError::Execution(format!("cannot write {}: {other}", path.display()))
                }
            },
            other => other,
        }
    })
}

/// Refuses table keys that could name a path outside the worker's directory.
fn check_table_key(table: &str) -> Result<()> {
    let bad = table.is_empty()
        || table.starts_with('.')
        || table.contains("..")
        || table.contains(['/', '\\', '\0']);
    if bad {
        return exec_err!("'{table}' is not a valid table key");
    }
    Ok(())
}

fn parquet_rows(path: &Path) -> Result<u64> {
    let file = File::open(path).map_err(|e| io_err("cannot open", path, e))?;
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(file)?;
    let rows = parquet::file::reader::FileReader::metadata(&reader)
        .file_metadata()
        .num_rows();
    Ok(u64::try_from(rows).unwrap_or(0))
}

/// Sorts rows by the given columns (the hybrid scheme's CLUSTER BY, an
/// index's terms).
pub fn sort_by_columns(batch: RecordBatch, sort_by: &[String]) -> Result<RecordBatch> {
    if sort_by.is_empty() || batch.num_rows() < 2 {
        return Ok(batch);
    }
    let columns = sort_by
        .iter()
        .map(|c| {
            let Ok(index) = batch.schema().index_of(c) else {
                return exec_err!("column '{c}' to sort by is missing from the rows");
            };
            Ok(SortColumn {
                values: Arc::clone(batch.column(index)),
                options: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let indices = lexsort_to_indices(&columns, None)?;
    Ok(take_record_batch(&batch, &indices)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn batch(values: Vec<i64>) -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let b =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))]).unwrap();
        (schema, b)
    }

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

    fn write(s: &Storage, txn: u64, table: &str, values: Vec<i64>) {
        let (schema, b) = batch(values);
        s.prepare(txn, table, 0, schema, &[b]).unwrap();
        let w = StagedWrite {
            txn,
            table: table.into(),
            partition: 0,
        };
        s.commit(txn, &[w]).unwrap();
    }

    fn rule(min_files: usize, forward: bool) -> MergeRule {
        MergeRule {
            min_files,
            max_file_bytes: u64::MAX,
            tiered: false,
            forward,
        }
    }

    #[test]
    fn tiered_rule_waits_for_small_files_to_add_up() {
        let f = |name: &str, bytes| DataFile {
            name: name.into(),
            rows: 1,
            bytes,
        };
        let files = vec![f("big", 1000), f("a", 10), f("b", 10), f("huge", 5000)];
        let mut r = rule(2, false);
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

    fn compact(s: &Storage, txn: u64, table: &str) -> Option<Compaction> {
        let c = s.compact_prepare(txn, table, 0, &rule(2, true)).unwrap();
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

    /// Merged files keep their rows in order; locators naming the old
    /// files are forwarded, through two compactions; merged-away files go
    /// once the scans pinned before the merge are done.
    #[test]
    fn compaction_forwards_locators() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        write(&s, 1, "t", vec![10, 11, 12]);
        write(&s, 2, "t", vec![20, 21]);
        assert!(
            s.compact_prepare(3, "t", 0, &rule(3, true))
                .unwrap()
                .is_none()
        );
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
        let forwarded = s.indexed_files("t", 0, rows).unwrap();
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
        assert!(s.indexed_files("t", 0, missing).is_err());
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

    /// An aborted compaction leaves the partition as it was.
    #[test]
    fn aborted_compaction_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        write(&s, 1, "t", vec![1]);
        write(&s, 2, "t", vec![2]);
        let before = s.manifest("t", 0).unwrap();
        s.compact_prepare(3, "t", 0, &rule(2, false))
            .unwrap()
            .unwrap();
        assert_eq!(s.staged().unwrap().len(), 1);
        s.abort(3).unwrap();
        assert!(s.staged().unwrap().is_empty());
        assert_eq!(s.manifest("t", 0).unwrap(), before);
        let staged = dir.path().join("t/p0000").join(STAGED);
        assert_eq!(fs::read_dir(staged).unwrap().count(), 0);
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
    }
}
