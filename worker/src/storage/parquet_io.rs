//! Parquet and file I/O: durable writes of data files and small files,
//! the row count of a file, sorting rows, and reading index entries.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result, internal_err};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::{DataFile, Storage, file_name};

/// Rows per Parquet data page, at most.
const PAGE_ROWS: usize = 8192;

pub(super) fn io_err(what: &str, path: &Path, e: std::io::Error) -> DataFusionError {
    let hint = match e.kind() {
        ErrorKind::StorageFull => " (the disk is full: free space or move the data dir)",
        ErrorKind::PermissionDenied => " (check the data dir's permissions)",
        _ => "",
    };
    crate::kind::ErrorKind::of_io(&e).error(format!("{what} {}: {e}{hint}", path.display()))
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync directory", dir, e))
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    (|| {
        let mut f = File::create(path)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()
    })()
    .map_err(|e| io_err("cannot write", path, e))
}

/// Writes `batches` as the staged file of `txn` in `dir` (a partition's
/// staged directory; the caller syncs it).
pub(super) fn write_staged(
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
    Ok(DataFile::new(file_name(txn), rows, bytes))
}

pub(super) fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot remove", path, e)),
    }
}

/// LZ4 decompresses several times faster than ZSTD, and pages of at most
/// 8192 rows let page statistics and index row selections skip most of a
/// file instead of decoding 1 MB pages for a few rows.
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .set_data_page_row_count_limit(PAGE_ROWS)
        .build()
}

/// Writes `batches` to a new Parquet file at `path` and fsyncs it; the
/// rows written. The file is removed again if anything fails.
fn write_parquet(
    path: &Path,
    schema: SchemaRef,
    batches: impl Iterator<Item = Result<RecordBatch>>,
) -> Result<u64> {
    let file = File::create(path).map_err(|e| io_err("cannot create", path, e))?;
    let result = (|| -> Result<u64> {
        let mut writer =
            ArrowWriter::try_new(file.try_clone()?, schema, Some(writer_properties()))?;
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
        write_error(path, e)
    })
}

/// A failed write of `path`, as an I/O error of its kind where it is one.
fn write_error(path: &Path, e: DataFusionError) -> DataFusionError {
    match e {
        DataFusionError::IoError(io) => io_err("cannot write", path, io),
        DataFusionError::ParquetError(p) => match *p {
            parquet::errors::ParquetError::External(inner) => {
                match inner.downcast::<std::io::Error>() {
                    Ok(io) => io_err("cannot write", path, *io),
                    Err(other) => crate::ErrorKind::FailedPrecondition
                        .error(format!("cannot write {}: {other}", path.display())),
                }
            }
            other => crate::ErrorKind::FailedPrecondition
                .error(format!("cannot write {}: {other}", path.display())),
        },
        other => other,
    }
}

/// Bytes of rows a staged file being written holds in memory before they
/// go to disk as a row group.
const STAGED_ROW_GROUP_BYTES: usize = 32 << 20;

/// A staged file written a batch at a time (rows that arrive over a
/// stream); [`StagedFile::finish`] makes it durable, dropping it unfinished
/// removes it.
pub struct StagedFile {
    dir: PathBuf,
    path: PathBuf,
    name: String,
    file: File,
    writer: Option<ArrowWriter<File>>,
    rows: u64,
}

impl StagedFile {
    pub(super) fn create(dir: &Path, txn: u64, schema: SchemaRef) -> Result<Self> {
        let name = file_name(txn);
        let path = dir.join(&name);
        let file = File::create(&path).map_err(|e| io_err("cannot create", &path, e))?;
        let writer = file
            .try_clone()
            .map_err(DataFusionError::from)
            .and_then(|f| Ok(ArrowWriter::try_new(f, schema, Some(writer_properties()))?))
            .map_err(|e| {
                let _ = fs::remove_file(&path);
                write_error(&path, e)
            })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            path,
            name,
            file,
            writer: Some(writer),
            rows: 0,
        })
    }

    /// Appends `batch`; a row group goes to disk once enough is held.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return internal_err!("a staged file written after it was finished");
        };
        let written = writer.write(batch).and_then(|()| {
            if writer.in_progress_size() >= STAGED_ROW_GROUP_BYTES {
                writer.flush()?;
            }
            Ok(())
        });
        written.map_err(|e| write_error(&self.path, e.into()))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Closes the file and makes it (and its directory entry) durable.
    pub fn finish(mut self) -> Result<DataFile> {
        let Some(writer) = self.writer.take() else {
            return internal_err!("a staged file finished twice");
        };
        let closed = writer
            .close()
            .map_err(DataFusionError::from)
            .and_then(|_| Ok(self.file.sync_all()?));
        if let Err(e) = closed {
            let _ = fs::remove_file(&self.path);
            return Err(write_error(&self.path, e));
        }
        let bytes = fs::metadata(&self.path)
            .map_err(|e| io_err("cannot stat", &self.path, e))?
            .len();
        sync_dir(&self.dir)?;
        Ok(DataFile::new(
            std::mem::take(&mut self.name),
            self.rows,
            bytes,
        ))
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        // Unfinished: the write it was part of failed.
        if self.writer.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

pub(super) fn parquet_rows(path: &Path) -> Result<u64> {
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
                return internal_err!("column '{c}' to sort by is missing from the rows");
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

impl Storage {
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
                        crate::ErrorKind::FailedPrecondition.error(format!(
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
}
