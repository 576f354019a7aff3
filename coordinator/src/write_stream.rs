//! A write whose rows arrive as a stream (bulk ingest): routed to their
//! partitions and sent on to the workers as they come, a few MiB per
//! partition at a time, so that an upload of any size needs bounded
//! memory here. Still one transaction: each worker writes its partitions'
//! rows to staged files as they arrive, and the write is decided and
//! committed (or aborted, changing nothing) once the stream ends.
//!
//! Each piece of a partition's rows is appended to the partition's staged
//! file as it comes: a CLUSTER BY table's piece is sorted first (the file
//! is then sorted in runs, one per piece, as a merged file is), and the
//! entries of the table's secondary indexes are made from the piece as it
//! is stored (a row's position is the rows sent before it in its
//! partition) and sent on with it: LOCAL entries and an ASYNC index's
//! outbox to the partition's copies, GLOBAL SYNC entries to the index
//! partitions their terms hash to.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
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
use crate::write::Reports;
use crate::write::{
    Ack, WriteSink, abort, add_index_stats, add_stats, decide_and_commit, name_worker,
};

mod pieces;
use pieces::Pieces;

/// Rows of one partition gathered before they are sent on.
const FLUSH_BYTES: usize = 2 << 20;
/// Rows of all partitions held at most: past it, the largest piece goes.
const HELD_BYTES: usize = 32 << 20;
/// Calls' deadlines an upload may pause for before it is given up.
const IDLE_CALLS: u32 = 10;
/// Pieces one worker's upload may fall behind by before the router waits.
const WORKER_QUEUE: usize = 2;

/// Where pieces of the write go: a directory on workers (the table's, a
/// LOCAL index's, an outbox's or a GLOBAL index's) and its partition.
type Slot = (String, u32);

/// One worker's share of the write: an open prepare call fed as rows come.
struct Upload {
    url: String,
    pieces: mpsc::Sender<(PieceHeader, RecordBatch)>,
    task: tokio::task::JoinHandle<Result<Vec<DataFile>>>,
    /// Slots in the order first sent: the order of the files back.
    slots: Vec<Slot>,
    /// Bytes sent, for the deadline of the answer.
    bytes: u64,
}

/// The uploads of one transaction. Dropped before [`Uploads::disarm`]
/// (the write failed, or the client went away mid-stream), it stops them
/// and has the workers drop what they staged.
struct Uploads {
    txn: u64,
    open: BTreeMap<String, Upload>,
    /// Each slot sent so far: its in-sync copies and quorum.
    owners: BTreeMap<Slot, WriteTarget>,
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
/// one transaction, with the entries of its secondary indexes; the rows
/// written.
pub async fn write_stream(
    catalog: &Arc<Catalog>,
    reports: &Arc<Reports>,
    def: &TableDef,
    input: impl Stream<Item = Result<RecordBatch>> + Unpin,
) -> Result<u64> {
    let table = def.name.clone();
    let table_schema = def.schema()?;
    let (guard, indexes) = catalog.begin_write(&table).await?;
    let txn = guard.txn;
    let sink = WriteSink::new(
        Arc::clone(catalog),
        Arc::clone(reports),
        def.clone(),
        Arc::clone(&table_schema),
    );
    // NOT NULL is checked when rows are routed, naming the column.
    let accepts = Arc::clone(sink.accepts());
    let mut uploads = Uploads {
        txn,
        open: BTreeMap::new(),
        owners: BTreeMap::new(),
        failed: Failures::new(),
        armed: true,
    };
    let mut pieces = Pieces::new(catalog, def, indexes, txn)?;
    let prepared = match route_all(&sink, &accepts, input, &mut pieces, &mut uploads).await {
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
    for (slot, target) in &uploads.owners {
        let held: Vec<String> = prepared
            .iter()
            .filter(|(_, s, _)| s == slot)
            .map(|(w, ..)| w.clone())
            .collect();
        settled.push((target.clone(), held));
    }
    // Each partition's rows counted once, from its first copy.
    let location = def.storage_key();
    let mut first: BTreeMap<u32, DataFile> = BTreeMap::new();
    for (_, (at, partition), file) in &prepared {
        if *at == location {
            first.entry(*partition).or_insert_with(|| file.clone());
        }
    }
    let rows: u64 = first.values().map(|f| f.rows).sum();
    if prepared.is_empty() {
        return Ok(0);
    }
    let mut writes: BTreeMap<String, Vec<StagedWrite>> = BTreeMap::new();
    for (worker, (at, partition), _) in &prepared {
        writes.entry(worker.clone()).or_default().push(StagedWrite {
            txn,
            table: at.clone(),
            partition: *partition,
        });
    }
    // Partitions written before the acknowledgement: the data ones and
    // those of GLOBAL SYNC indexes.
    let touched = uploads
        .owners
        .keys()
        .filter(|(at, _)| *at == location || pieces.synced.contains(at))
        .count() as u64;
    let workers = writes.len() as u64;
    let counts = pieces.counts();
    let (owned, indexed, ids, table_id) = (table.clone(), counts.clone(), pieces.ids(), def.id);
    decide_and_commit(catalog, guard, writes, urls, Ack::Committed, move |s| {
        // An upload takes a while: the table or an index it wrote entries
        // for may have been dropped (or made again) meanwhile.
        if s.tables.get(&owned).map(|t| t.id) != Some(table_id) {
            return tessera_worker::precondition_err!(
                "table '{owned}' was dropped while the rows were uploaded"
            );
        }
        if let Some((name, _)) = ids
            .iter()
            .find(|(name, id)| s.indexes.get(name).map(|i| i.id) != Some(*id))
        {
            return tessera_worker::precondition_err!(
                "index '{name}' was dropped while the rows were uploaded; upload them again"
            );
        }
        for (target, held) in &settled {
            settle_copies(s, target, held)?;
        }
        add_stats(s, &owned, first.iter().map(|(p, f)| (*p, f)));
        add_index_stats(s, txn, &indexed);
        Ok(())
    })
    .await
    .map_err(|e| changed_nothing(&table, e))?;
    reports.acknowledged((1, touched, workers), &counts, txn);
    Ok(rows)
}

/// Ends every upload (all at once) and collects the files each worker
/// staged: (worker, partition, file). A worker that fails is noted in
/// `failed`; the write fails if a partition is then short of copies.
async fn finish_uploads(uploads: &mut Uploads) -> Result<Vec<(String, Slot, DataFile)>> {
    let mut waits = vec![];
    for (worker, upload) in &mut uploads.open {
        // The end of its rows: the worker finishes and syncs its files.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut upload.pieces, closed));
        let limit = deadline_for_bytes(upload.bytes);
        let (worker, url) = (worker.clone(), upload.url.clone());
        let task = &mut upload.task;
        let expected = upload.slots.len();
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
                    .slots
                    .iter()
                    .zip(files)
                    .map(|(slot, f)| (worker.clone(), slot.clone(), f)),
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
    sink: &WriteSink,
    accepts: &SchemaRef,
    mut input: impl Stream<Item = Result<RecordBatch>> + Unpin,
    pieces: &mut Pieces<'_>,
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
        let batch = conform(&batch?, accepts, &pieces.def.name)?;
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
                pieces.send(p, rows, uploads).await?;
            }
        }
    }
    for (partition, (rows, _)) in held {
        pieces.send(partition, rows, uploads).await?;
    }
    Ok(())
}

/// Sends `batch` to each in-sync copy of `slot` (`target` names them the
/// first time), opening a worker's upload on its first piece. A copy that
/// stopped taking rows is noted; the write fails once a slot is short of
/// copies.
async fn send(
    uploads: &mut Uploads,
    slot: Slot,
    target: &WriteTarget,
    batch: &RecordBatch,
) -> Result<()> {
    if !uploads.owners.contains_key(&slot) {
        open_uploads(uploads, slot.clone(), target.clone())?;
    }
    let workers: Vec<String> = uploads
        .owners
        .get(&slot)
        .map(|t| t.workers().map(String::from).collect())
        .unwrap_or_default();
    let txn = uploads.txn;
    for worker in workers {
        if uploads.failed.contains_key(&worker) {
            continue;
        }
        let Some(upload) = uploads.open.get_mut(&worker) else {
            continue;
        };
        upload.bytes += batch.get_array_memory_size() as u64;
        let header = PieceHeader {
            table: slot.0.clone(),
            partition: slot.1,
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

/// Notes `slot`'s in-sync copies (`target`) and opens the upload of each
/// that has none yet (the slot noted as its: the order of the files it
/// answers with).
fn open_uploads(uploads: &mut Uploads, slot: Slot, target: WriteTarget) -> Result<()> {
    let txn = uploads.txn;
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
                    slots: vec![],
                    bytes: 0,
                }
            });
        upload.slots.push(slot.clone());
    }
    uploads.owners.insert(slot, target);
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
