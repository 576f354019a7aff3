//! `tessera load FILE... --table t`: files on the client's machine (CSV,
//! Parquet, JSON lines) uploaded through Flight SQL bulk ingest as one
//! atomic write, read a batch at a time (memory does not grow with the
//! files) with a progress bar. A value that does not parse stops the load
//! naming its line, and nothing is loaded.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::sql::{
    CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption,
};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Client, error_text};

/// Rows per batch read from a file.
const BATCH_ROWS: usize = 65_536;
/// Rows of a CSV or JSON file its column types are inferred from.
const INFER_ROWS: usize = 20_480;
/// Batches read ahead of the upload.
const READ_AHEAD: usize = 4;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    Csv,
    Parquet,
    Json,
}

/// What `tessera load FILE...` was asked.
pub struct LoadFiles {
    pub files: Vec<PathBuf>,
    pub table: String,
    pub create: bool,
    pub partition_by: Option<String>,
    pub format: Option<FileFormat>,
    pub delimiter: u8,
    pub header: bool,
}

fn format_of(path: &Path, given: Option<FileFormat>) -> Result<FileFormat, String> {
    if let Some(f) = given {
        return Ok(f);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("csv" | "tsv" | "txt") => Ok(FileFormat::Csv),
        Some("parquet" | "pq") => Ok(FileFormat::Parquet),
        Some("json" | "jsonl" | "ndjson") => Ok(FileFormat::Json),
        _ => Err(format!(
            "cannot tell the format of {} from its name; give --format csv|parquet|json",
            path.display()
        )),
    }
}

/// A reader that counts the bytes read through it (for the progress bar).
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, String>> + Send>;

/// The batches of one file, and their schema; `read` counts its bytes.
/// A CSV or JSON file is read with `schema` (the table's, when it exists:
/// a value that does not parse as its column's type names its line), else
/// with the types inferred from its first rows.
fn open(
    path: &Path,
    job: &LoadFiles,
    schema: Option<&SchemaRef>,
    read: Arc<AtomicU64>,
) -> Result<(SchemaRef, Batches), String> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|e| format!("cannot open {name}: {e}"))?;
    match format_of(path, job.format)? {
        FileFormat::Csv => {
            let format = arrow::csv::reader::Format::default()
                .with_header(job.header)
                .with_delimiter(job.delimiter);
            let schema = match schema {
                Some(s) => Arc::clone(s),
                None => {
                    let (inferred, _) = format
                        .infer_schema(BufReader::new(&mut file), Some(INFER_ROWS))
                        .map_err(|e| format!("{name}: {e}"))?;
                    file.rewind()
                        .map_err(|e| format!("cannot read {name}: {e}"))?;
                    Arc::new(inferred)
                }
            };
            let reader = arrow::csv::ReaderBuilder::new(Arc::clone(&schema))
                .with_format(format)
                .with_batch_size(BATCH_ROWS)
                .build(Counting { inner: file, read })
                .map_err(|e| format!("{name}: {e}"))?;
            let (header, columns) = (job.header, Arc::clone(&schema));
            let rows = reader.map(move |b| b.map_err(|e| csv_error(&name, &e, header, &columns)));
            Ok((schema, Box::new(rows)))
        }
        FileFormat::Json => {
            let schema = match schema {
                Some(s) => Arc::clone(s),
                None => {
                    let (inferred, _) = arrow::json::reader::infer_json_schema_from_seekable(
                        BufReader::new(&mut file),
                        Some(INFER_ROWS),
                    )
                    .map_err(|e| format!("{name}: {e}"))?;
                    Arc::new(inferred)
                }
            };
            let reader = arrow::json::ReaderBuilder::new(Arc::clone(&schema))
                .with_batch_size(BATCH_ROWS)
                .build(BufReader::new(Counting { inner: file, read }))
                .map_err(|e| format!("{name}: {e}"))?;
            let rows = reader.map(move |b| b.map_err(|e| format!("{name}: {e}")));
            Ok((schema, Box::new(rows)))
        }
        FileFormat::Parquet => {
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| format!("{name} is not a Parquet file: {e}"))?;
            let total = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
            let schema = Arc::clone(builder.schema());
            let reader = builder
                .with_batch_size(BATCH_ROWS)
                .build()
                .map_err(|e| format!("{name}: {e}"))?;
            // Progress in bytes, as the share of the file's rows read.
            let mut rows = 0u64;
            let batches = reader.map(move |b| {
                let b = b.map_err(|e| format!("{name}: {e}"))?;
                let before = rows;
                rows += b.num_rows() as u64;
                if total > 0 {
                    let bytes = |r: u64| size.saturating_mul(r) / total;
                    read.fetch_add(bytes(rows) - bytes(before), Ordering::Relaxed);
                }
                Ok(b)
            });
            Ok((schema, Box::new(batches)))
        }
    }
}

/// A CSV reader's error, saying the file's line (counting the header, as
/// an editor does) and the column by name.
fn csv_error(file: &str, e: &arrow::error::ArrowError, header: bool, schema: &SchemaRef) -> String {
    let text = e.to_string();
    let number_after = |marker: &str| -> Option<usize> {
        let rest = &text[text.find(marker)? + marker.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    match (number_after(" for column "), number_after(" at line ")) {
        (Some(column), Some(line)) => {
            let name = schema
                .fields()
                .get(column)
                .map_or_else(|| format!("{}", column + 1), |f| format!("'{}'", f.name()));
            format!(
                "{file}: line {}, column {name}: {text}",
                line + usize::from(header)
            )
        }
        _ => format!("{file}: {text}"),
    }
}

/// The types a file's text is parsed into for a table of `schema`: every
/// column nullable (the server names a NULL in a NOT NULL column), views
/// as their plain types.
fn parse_schema(schema: &SchemaRef) -> SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let t = match f.data_type() {
                DataType::Utf8View => DataType::Utf8,
                DataType::BinaryView => DataType::Binary,
                DataType::Dictionary(_, v) => v.as_ref().clone(),
                other => other.clone(),
            };
            Field::new(f.name(), t, true)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Loads the files into the table, as one write.
pub async fn load(client: &mut Client, job: LoadFiles) -> Result<(), String> {
    if job.files.is_empty() {
        return Err("give the files to load: tessera load FILE... --table NAME".into());
    }
    let total: u64 = job
        .files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .map(|m| m.len())
                .map_err(|e| format!("cannot read {}: {e}", f.display()))
        })
        .sum::<Result<u64, String>>()?;
    let read = Arc::new(AtomicU64::new(0));
    // Rows go into an existing table's columns, by position.
    let table_schema = if job.create {
        None
    } else {
        let sql = format!(
            "SELECT * FROM \"{}\" LIMIT 0",
            job.table.replace('"', "\"\"")
        );
        let result = client
            .query(&sql)
            .await
            .map_err(|e| format!("{e}; to make the table from the file, add --create"))?;
        Some(parse_schema(&result.schema))
    };
    // The first file's schema is the upload's (and a new table's).
    let (schema, first) = open(
        &job.files[0],
        &job,
        table_schema.as_ref(),
        Arc::clone(&read),
    )?;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:<12} [{bar:30}] {bytes:>10}/{total_bytes} {bytes_per_sec:>12} {elapsed:>4}",
        )
        .map_err(|e| e.to_string())?
        .progress_chars("=> "),
    );
    bar.set_message(job.table.clone());
    let table = job.table.clone();
    let (create, partition_by) = (job.create, job.partition_by.clone());

    // Files are read on a thread of their own, a few batches ahead.
    let (batches, queue) = mpsc::channel::<Result<RecordBatch, String>>(READ_AHEAD);
    let rest: Vec<PathBuf> = job.files[1..].to_vec();
    let reader = {
        let read = Arc::clone(&read);
        let columns = schema.fields().len();
        // Later CSV and JSON files are read as the first one was.
        let schema_of_upload = table_schema.unwrap_or_else(|| Arc::clone(&schema));
        tokio::task::spawn_blocking(move || {
            let mut rows = 0u64;
            let mut files: Vec<Batches> = vec![first];
            let mut pending = rest.into_iter();
            while let Some(batches_of) = files.pop() {
                for b in batches_of {
                    let b = b.and_then(|b| {
                        if b.num_columns() == columns {
                            Ok(b)
                        } else {
                            Err(format!(
                                "the files differ: {} columns, then {}; load them separately",
                                columns,
                                b.num_columns()
                            ))
                        }
                    });
                    let failed = b.is_err();
                    rows += b.as_ref().map_or(0, |b| b.num_rows() as u64);
                    if batches.blocking_send(b).is_err() || failed {
                        return rows;
                    }
                }
                if let Some(path) = pending.next() {
                    match open(&path, &job, Some(&schema_of_upload), Arc::clone(&read)) {
                        Ok((_, more)) => files.push(more),
                        Err(e) => {
                            let _ = batches.blocking_send(Err(e));
                            return rows;
                        }
                    }
                }
            }
            rows
        })
    };

    // A read that fails stops the upload by cancelling its call (never by
    // ending it, which would commit what was sent): nothing is loaded.
    let (failed, failure) = oneshot::channel::<String>();
    let upload = futures::stream::unfold(
        (Some(failed), ReceiverStream::new(queue)),
        |(failed, mut queue)| async move {
            match queue.next().await {
                Some(Ok(batch)) => Some((Ok(batch), (failed, queue))),
                Some(Err(e)) => {
                    if let Some(f) = failed {
                        let _ = f.send(e);
                    }
                    futures::future::pending::<()>().await;
                    None
                }
                None => None,
            }
        },
    );
    let command = CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: if create {
                TableNotExistOption::Create
            } else {
                TableNotExistOption::Fail
            } as i32,
            if_exists: if create {
                TableExistsOption::Fail
            } else {
                TableExistsOption::Append
            } as i32,
        }),
        table: table.clone(),
        options: partition_by
            .iter()
            .map(|p| ("tessera.partition_by".to_string(), p.clone()))
            .collect(),
        ..Default::default()
    };
    let started = Instant::now();
    let mut flight = client.flight().clone();
    let mut ingest = tokio::spawn(async move { flight.execute_ingest(command, upload).await });
    let ticker = {
        let (bar, read) = (bar.clone(), Arc::clone(&read));
        tokio::spawn(async move {
            loop {
                bar.set_position(read.load(Ordering::Relaxed));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    };
    let result = tokio::select! {
        done = &mut ingest => done.map_err(|e| format!("the upload failed: {e}"))?
            .map_err(error_text),
        Ok(why) = failure => {
            ingest.abort();
            let _ = ingest.await;
            Err(format!("{why}; nothing was loaded"))
        }
    };
    ticker.abort();
    let rows_read = reader.await.unwrap_or(0);
    match result {
        Ok(rows) => {
            bar.set_position(total);
            bar.finish();
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "loaded {rows} rows into {table} in {secs:.1} s ({:.1} MB/s)",
                total as f64 / 1e6 / secs.max(1e-9)
            );
            if u64::try_from(rows).ok() != Some(rows_read) {
                return Err(format!(
                    "the server stored {rows} rows of the {rows_read} read; check the table"
                ));
            }
            Ok(())
        }
        Err(e) => {
            bar.abandon();
            Err(e)
        }
    }
}
