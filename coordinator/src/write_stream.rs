//! A write whose rows arrive as a stream (bulk ingest): routed to their
//! partitions and sent on to the workers as they come, a few MiB per
//! partition at a time, so that an upload of any size needs bounded
//! memory here. Still one transaction: each worker writes its partitions'
//! rows to staged files as they arrive, and the write is decided and
//! committed (or aborted, changing nothing) once the stream ends.
//!
//! Rows are stored in the order they arrive, so a table that sorts them
//! (CLUSTER BY) or has secondary indexes (whose entries name rows by
//! position) is written by the buffered path instead.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat_batches};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};
use futures::{Stream, StreamExt};
use tessera_sql::TableDef;
use tessera_worker::wire::{PieceHeader, PrepareRequest};
use tessera_worker::{
    DataFile, ErrorKind, StagedWrite, WorkerClient, call_timeout, deadline_for_bytes,
    is_worker_failure,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::catalog::{Catalog, WriteTarget};
use crate::copies::{Failures, settle_copies, short_of_quorum};
use crate::write::{WriteSink, abort, add_stats, decide_and_commit, name_worker};

/// Rows of one partition gathered before they are sent on.
const FLUSH_BYTES: usize = 2 << 20;
/// Rows of all partitions held at most: past it, the largest piece goes.
const HELD_BYTES: usize = 32 << 20;
/// Calls' deadlines an upload may pause for before it is given up.
const IDLE_CALLS: u32 = 10;
/// Pieces one worker's upload may fall behind by before the router waits.
const WORKER_QUEUE: usize = 2;

/// Whether `def`'s rows may be written as they arrive.
pub fn streams(def: &TableDef) -> bool {
    def.scheme.cluster_by().is_empty()
}

/// One worker's share of the write: an open prepare call fed as rows come.
struct Upload {
    url: String,
    pieces: mpsc::Sender<(PieceHeader, RecordBatch)>,
    task: tokio::task::JoinHandle<Result<Vec<DataFile>>>,
    /// Partitions in the order first sent: the order of the files back.
    partitions: Vec<u32>,
    /// Bytes sent, for the deadline of the answer.
    bytes: u64,
}

/// The uploads of one transaction. Dropped before [`Uploads::disarm`]
/// (the write failed, or the client went away mid-stream), it stops them
/// and has the workers drop what they staged.
struct Uploads {
    txn: u64,
    open: BTreeMap<String, Upload>,
    /// Each partition sent so far: its in-sync copies and quorum.
    owners: BTreeMap<u32, WriteTarget>,
    /// Copies that could not be reached or stopped taking rows.
    failed: Failures,
    armed: bool,
}

impl Uploads {
    fn urls(&self) -> BTreeMap<String, String> {
        self.open
            .iter()
            .map(|(worker, u)| (worker.clone(), u.url.clone()))
            .collect()
    }

    /// Fails unless every partition sent so far still has enough copies
    /// taking its rows.
    fn check_quorum(&self) -> Result<()> {
        for target in self.owners.values() {
            let live = target
                .workers()
                .filter(|w| !self.failed.contains_key(*w))
                .count();
            if live < target.needed {
                return Err(short_of_quorum(target, live, &self.failed));
            }
        }
        Ok(())
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for upload in self.open.values() {
            upload.task.abort();
        }
        let urls: Vec<String> = self.open.values().map(|u| u.url.clone()).collect();
        let txn = self.txn;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { abort(txn, urls.iter()).await });
        }
    }
}

/// Writes the rows of `input` (in the table's column order) into `def` as
/// one transaction; the rows written. `Ok(None)` when the table has
/// secondary indexes (found once the transaction began): nothing was read
/// from `input`, and the caller writes it the buffered way.
pub async fn write_stream(
    catalog: &Arc<Catalog>,
    def: &TableDef,
    input: impl Stream<Item = Result<RecordBatch>> + Unpin,
) -> Result<Option<u64>> {
    let table = def.name.clone();
    let table_schema = def.schema()?;
    let (guard, indexes) = catalog.begin_write(&table).await?;
    if !indexes.is_empty() {
        return Ok(None);
    }
    let txn = guard.txn;
    let sink = WriteSink::new(Arc::clone(catalog), def.clone(), Arc::clone(&table_schema));
    // NOT NULL is checked when rows are routed, naming the column.
    let accepts = Arc::clone(sink.accepts());
    let mut uploads = Uploads {
        txn,
        open: BTreeMap::new(),
        owners: BTreeMap::new(),
        failed: Failures::new(),
        armed: true,
    };
    let prepared = match route_all(catalog, def, &sink, &accepts, txn, input, &mut uploads).await {
        Ok(()) => finish_uploads(&mut uploads).await,
        Err(e) => Err(e),
    };
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            // The uploads stop first, so that nothing is staged after the
            // workers drop what the transaction staged.
            let urls = uploads.urls();
            for upload in uploads.open.values() {
                upload.task.abort();
            }
            uploads.disarm();
            abort(txn, urls.values()).await;
            return Err(changed_nothing(&table, e));
        }
    };
    let mut urls = uploads.urls();
    uploads.disarm();
    // Copies that missed the write leave the in-sync set as it is decided;
    // a copy that failed may have staged some rows: they go.
    let failed_urls: Vec<String> = uploads
        .failed
        .keys()
        .filter_map(|w| urls.get(w).cloned())
        .collect();
    abort(txn, failed_urls.iter()).await;
    urls.retain(|w, _| !uploads.failed.contains_key(w));
    // Copies that missed the write leave the in-sync set as it is decided.
    let mut settled: Vec<(WriteTarget, Vec<String>)> = vec![];
    for (partition, target) in &uploads.owners {
        let held: Vec<String> = prepared
            .iter()
            .filter(|(_, p, _)| p == partition)
            .map(|(w, ..)| w.clone())
            .collect();
        settled.push((target.clone(), held));
    }
    // Each partition's rows counted once, from its first copy.
    let mut first: BTreeMap<u32, &DataFile> = BTreeMap::new();
    for (_, partition, file) in &prepared {
        first.entry(*partition).or_insert(file);
    }
    let rows: u64 = first.values().map(|f| f.rows).sum();
    if prepared.is_empty() {
        return Ok(Some(0));
    }
    let mut writes: BTreeMap<String, Vec<StagedWrite>> = BTreeMap::new();
    for (worker, partition, _) in &prepared {
        writes.entry(worker.clone()).or_default().push(StagedWrite {
            txn,
            table: def.storage_key(),
            partition: *partition,
        });
    }
    let touched = first.len() as u64;
    let workers = writes.len() as u64;
    let first: BTreeMap<u32, DataFile> = first.into_iter().map(|(p, f)| (p, f.clone())).collect();
    let owned = table.clone();
    decide_and_commit(catalog, guard, writes, urls, move |s| {
        for (target, held) in &settled {
            settle_copies(s, target, held)?;
        }
        add_stats(s, &owned, first.iter().map(|(p, f)| (*p, f)));
        Ok(())
    })
    .await
    .map_err(|e| changed_nothing(&table, e))?;
    catalog
        .files_added
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    catalog.count_write(touched, workers);
    Ok(Some(rows))
}

/// Ends every upload (all at once) and collects the files each worker
/// staged: (worker, partition, file). A worker that fails is noted in
/// `failed`; the write fails if a partition is then short of copies.
async fn finish_uploads(uploads: &mut Uploads) -> Result<Vec<(String, u32, DataFile)>> {
    let mut waits = vec![];
    for (worker, upload) in &mut uploads.open {
        // The end of its rows: the worker finishes and syncs its files.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut upload.pieces, closed));
        let limit = deadline_for_bytes(upload.bytes);
        let (worker, url) = (worker.clone(), upload.url.clone());
        let task = &mut upload.task;
        let expected = upload.partitions.len();
        waits.push(async move {
            let files = match tokio::time::timeout(limit, task).await {
                Ok(Ok(files)) => files.map_err(|e| name_worker(&worker, &url, e)),
                Ok(Err(e)) => Err(DataFusionError::Internal(format!(
                    "the upload to worker {worker} failed: {e}"
                ))),
                Err(_) => Err(ErrorKind::Unavailable.error(format!(
                    "worker {worker} at {url} did not confirm its rows within {} s; check that \
                     it is running and its disk is healthy, then retry",
                    limit.as_secs()
                ))),
            }?;
            if files.len() != expected {
                return Err(DataFusionError::Execution(format!(
                    "worker {worker} at {url} prepared {} pieces of {expected}",
                    files.len(),
                )));
            }
            Ok(files)
        });
    }
    let answers = futures::future::join_all(waits).await;
    let mut prepared = vec![];
    for ((worker, upload), files) in uploads.open.iter().zip(answers) {
        if uploads.failed.contains_key(worker) {
            continue;
        }
        match files {
            Ok(files) => prepared.extend(
                upload
                    .partitions
                    .iter()
                    .zip(files)
                    .map(|(p, f)| (worker.clone(), *p, f)),
            ),
            Err(e) => {
                let unreachable = is_worker_failure(&e);
                uploads
                    .failed
                    .insert(worker.clone(), (e.to_string(), unreachable));
            }
        }
    }
    uploads.check_quorum()?;
    Ok(prepared)
}

/// `e`, of the same kind, saying that nothing was written.
fn changed_nothing(table: &str, e: DataFusionError) -> DataFusionError {
    let kind = match tessera_worker::kind_of(&e) {
        // An error of this process (not the rows): not the client's to fix.
        ErrorKind::InvalidArgument if matches!(e, DataFusionError::Execution(_)) => {
            ErrorKind::Internal
        }
        kind => kind,
    };
    kind.error(format!(
        "ingest into '{table}' failed and changed nothing: {e}"
    ))
}

/// Reads `input` to its end, sending each partition's rows to its worker
/// in pieces of about [`FLUSH_BYTES`] (and the largest held piece whenever
/// all held rows reach [`HELD_BYTES`]).
async fn route_all(
    catalog: &Arc<Catalog>,
    def: &TableDef,
    sink: &WriteSink,
    accepts: &SchemaRef,
    txn: u64,
    mut input: impl Stream<Item = Result<RecordBatch>> + Unpin,
    uploads: &mut Uploads,
) -> Result<()> {
    let mut held: BTreeMap<u32, (Vec<RecordBatch>, usize)> = BTreeMap::new();
    let mut held_bytes = 0usize;
    let idle = call_timeout() * IDLE_CALLS;
    loop {
        let next = tokio::time::timeout(idle, input.next())
            .await
            .map_err(|_| {
                ErrorKind::Unavailable.error(format!(
                    "the upload sent no rows for {} s; send them without long pauses",
                    idle.as_secs()
                ))
            })?;
        let Some(batch) = next else {
            break;
        };
        let batch = conform(&batch?, accepts, &def.name)?;
        for (partition, batches) in sink.route(vec![batch])? {
            let (pending, bytes) = held.entry(partition).or_default();
            for b in batches {
                let size = b.get_array_memory_size();
                *bytes += size;
                held_bytes += size;
                pending.push(b);
            }
            let flush = if *bytes >= FLUSH_BYTES {
                Some(partition)
            } else if held_bytes >= HELD_BYTES {
                held.iter().max_by_key(|(_, (_, b))| *b).map(|(p, _)| *p)
            } else {
                None
            };
            if let Some(p) = flush
                && let Some((rows, bytes)) = held.get_mut(&p)
            {
                held_bytes -= *bytes;
                *bytes = 0;
                let rows = std::mem::take(rows);
                send(catalog, def, txn, p, rows, uploads).await?;
            }
        }
    }
    for (partition, (rows, _)) in held {
        send(catalog, def, txn, partition, rows, uploads).await?;
    }
    Ok(())
}

/// Sends one piece of `partition`'s rows to each in-sync copy of it,
/// opening a worker's upload on its first piece. A copy that stopped
/// taking rows is noted; the write fails once a partition is short of
/// copies.
async fn send(
    catalog: &Arc<Catalog>,
    def: &TableDef,
    txn: u64,
    partition: u32,
    rows: Vec<RecordBatch>,
    uploads: &mut Uploads,
) -> Result<()> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let batch = concat_batches(&first.schema(), &rows)?;
    if !uploads.owners.contains_key(&partition) {
        open_uploads(catalog, def, txn, partition, uploads)?;
    }
    let workers: Vec<String> = uploads
        .owners
        .get(&partition)
        .map(|t| t.workers().map(String::from).collect())
        .unwrap_or_default();
    for worker in workers {
        if uploads.failed.contains_key(&worker) {
            continue;
        }
        let Some(upload) = uploads.open.get_mut(&worker) else {
            continue;
        };
        upload.bytes += batch.get_array_memory_size() as u64;
        let header = PieceHeader {
            table: def.storage_key(),
            partition,
        };
        let sent =
            tokio::time::timeout(call_timeout(), upload.pieces.send((header, batch.clone()))).await;
        let failure = match sent {
            Ok(Ok(())) => continue,
            // The upload ended early: its task says why.
            Ok(Err(_)) => {
                let why = match tokio::time::timeout(call_timeout(), &mut upload.task).await {
                    Ok(Ok(Err(e))) => e.to_string(),
                    _ => "it stopped taking rows".to_string(),
                };
                name_worker(&worker, &upload.url, ErrorKind::Unavailable.error(why))
            }
            Err(_) => ErrorKind::Unavailable.error(format!(
                "worker {worker} at {} took no rows for {} s; check that it is running and its \
                 disk is healthy, then retry",
                upload.url,
                call_timeout().as_secs()
            )),
        };
        tracing::warn!(txn, %worker, error = %failure, "a copy stopped taking the upload's rows");
        upload.task.abort();
        uploads.failed.insert(worker, (failure.to_string(), true));
        uploads.check_quorum()?;
    }
    Ok(())
}

/// Notes `partition`'s in-sync copies and opens the upload of each that
/// has none yet (the partition noted as its: the order of the files it
/// answers with).
fn open_uploads(
    catalog: &Arc<Catalog>,
    def: &TableDef,
    txn: u64,
    partition: u32,
    uploads: &mut Uploads,
) -> Result<()> {
    let Some(target) = catalog.write_targets(&def.name, &[partition])?.pop() else {
        return Err(DataFusionError::Internal(format!(
            "no owner for partition {partition} of '{}'",
            def.name
        )));
    };
    for replica in &target.replicas {
        let part = match replica {
            Ok(part) => part,
            Err((worker, why)) => {
                uploads.failed.insert(worker.clone(), (why.clone(), true));
                continue;
            }
        };
        if uploads.failed.contains_key(&part.worker_id) {
            continue;
        }
        let upload = uploads
            .open
            .entry(part.worker_id.clone())
            .or_insert_with(|| {
                let (pieces, queue) = mpsc::channel(WORKER_QUEUE);
                let url = part.url.clone();
                let task = tokio::spawn(async move {
                    let client = WorkerClient::connect(&url)?;
                    client
                        .prepare_stream(&PrepareRequest { txn }, ReceiverStream::new(queue))
                        .await
                });
                Upload {
                    url: part.url.clone(),
                    pieces,
                    task,
                    partitions: vec![],
                    bytes: 0,
                }
            });
        upload.partitions.push(partition);
    }
    uploads.owners.insert(partition, target);
    uploads.check_quorum()
}

/// `batch` with the table's column types (by position; `schema` is the
/// table's with every column nullable), or an error naming the column that
/// does not fit.
fn conform(batch: &RecordBatch, schema: &SchemaRef, table: &str) -> Result<RecordBatch> {
    if batch.num_columns() != schema.fields().len() {
        return Err(ErrorKind::InvalidArgument.error(format!(
            "the rows have {} columns and table '{table}' has {}; send its columns in order",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                return Ok(Arc::clone(column));
            }
            // A value that does not fit is an error, not a NULL.
            let options = CastOptions {
                safe: false,
                ..Default::default()
            };
            cast_with_options(column, field.data_type(), &options).map_err(|e| {
                ErrorKind::InvalidArgument.error(format!(
                    "column '{}' of '{table}' is {}, and the rows hold {}: {e}",
                    field.name(),
                    field.data_type(),
                    column.data_type()
                ))
            })
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| {
        ErrorKind::InvalidArgument.error(format!("the rows do not fit table '{table}': {e}"))
    })
}
