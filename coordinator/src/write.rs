//! The write path: routes each row of an INSERT to its partition and commits
//! the statement atomically across partitions with two-phase commit.
//!
//! ```text
//!  rows ─► partitioner ─► per-partition batches
//!        ─► prepare (DoPut to each owner: staged Parquet, fsync)
//!        ─► decide  (txn logged in the metastore, fsync)   ◄─ any prepare failed? abort all
//!        ─► commit  (each owner swaps its manifests)
//!        ─► forget  (txn removed from the log)
//! ```
//!
//! A crash after "decide" is finished by recovery at the next start: staged
//! writes of logged transactions are committed, all others aborted.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::sink::DataSink;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use futures::TryStreamExt;
use futures::future::join_all;
use tessera_sql::{Partitioner, TableDef};
use tessera_worker::wire::PrepareRequest;
use tessera_worker::{StagedWrite, WorkerClient};

use crate::catalog::Catalog;

/// Where the rows of an INSERT go.
#[derive(Debug)]
pub struct WriteSink {
    catalog: Arc<Catalog>,
    def: TableDef,
    schema: SchemaRef,
}

impl WriteSink {
    pub fn new(catalog: Arc<Catalog>, def: TableDef, schema: SchemaRef) -> Self {
        Self {
            catalog,
            def,
            schema,
        }
    }

    /// Splits rows by partition, checking them against the table's schema.
    fn route(&self, batches: Vec<RecordBatch>) -> Result<BTreeMap<u32, Vec<RecordBatch>>> {
        let partitioner = Partitioner::try_new(&self.def.scheme, &self.schema)?;
        let mut out: BTreeMap<u32, Vec<RecordBatch>> = BTreeMap::new();
        for batch in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            let batch = RecordBatch::try_new(Arc::clone(&self.schema), batch.columns().to_vec())
                .map_err(|e| {
                    DataFusionError::Execution(format!(
                        "rows do not fit table '{}': {e}",
                        self.def.name
                    ))
                })?;
            let assigned = partitioner.assign(&batch)?;
            let mut rows_of: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            for (row, p) in assigned.iter().enumerate() {
                rows_of.entry(*p).or_default().push(row as u32);
            }
            for (p, rows) in rows_of {
                let piece = if rows.len() == batch.num_rows() {
                    compact_views(batch.clone())?
                } else {
                    compact_views(take_record_batch(&batch, &UInt32Array::from(rows))?)?
                };
                out.entry(p).or_default().push(piece);
            }
        }
        Ok(out)
    }
}

impl DisplayAs for WriteSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "TesseraWrite: table={}, {}",
            self.def.name, self.def.scheme
        )
    }
}

#[async_trait]
impl DataSink for WriteSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let batches: Vec<RecordBatch> = data
            .try_collect()
            .await
            .map_err(|e| explain_not_null(e, &self.schema))?;
        let routed = self.route(batches)?;
        let rows: u64 = routed.values().flatten().map(|b| b.num_rows() as u64).sum();
        if rows == 0 {
            return Ok(0);
        }
        let table = self.def.name.as_str();
        let location = self.def.storage_key();
        let txn = self.catalog.next_txn();
        let parts: Vec<u32> = routed.keys().copied().collect();
        let targets = self.catalog.scan_parts(table, &parts)?;

        // Phase 1: every partition's rows durable on its owner.
        let sort_by = self.def.scheme.cluster_by().to_vec();
        // Keyed by worker id: URLs change across restarts, ids do not.
        let mut writes: BTreeMap<String, Vec<StagedWrite>> = BTreeMap::new();
        let mut urls: BTreeMap<String, String> = BTreeMap::new();
        let mut prepares = vec![];
        for (target, (partition, batches)) in targets.iter().zip(routed) {
            urls.insert(target.worker_id.clone(), target.url.clone());
            writes
                .entry(target.worker_id.clone())
                .or_default()
                .push(StagedWrite {
                    txn,
                    table: location.clone(),
                    partition,
                });
            let request = PrepareRequest {
                txn,
                table: location.clone(),
                partition,
                sort_by: sort_by.clone(),
            };
            let url = target.url.clone();
            prepares.push(async move {
                let client = WorkerClient::connect(&url)?;
                let file = client.prepare(&request, batches).await?;
                Ok::<_, DataFusionError>((partition, file))
            });
        }
        let mut files = vec![];
        for result in join_all(prepares).await {
            match result {
                Ok(f) => files.push(f),
                Err(err) => {
                    abort(txn, urls.values()).await;
                    return Err(DataFusionError::Execution(format!(
                        "INSERT into '{table}' failed and changed nothing: {err}"
                    )));
                }
            }
        }

        // Decide: once logged, the write will land even across a crash.
        let logged = writes.clone();
        if let Err(e) = self.catalog.update(|s| {
            s.decided.insert(txn, logged);
            s.last_txn = s.last_txn.max(txn);
            let stats = s.stats.entry(table.to_string()).or_default();
            for (partition, file) in &files {
                let p = stats.entry(*partition).or_default();
                p.rows += file.rows;
                p.bytes += file.bytes;
            }
            Ok(())
        }) {
            abort(txn, urls.values()).await;
            return Err(DataFusionError::Execution(format!(
                "INSERT into '{table}' failed and changed nothing: {e}"
            )));
        }

        // Phase 2: make it visible everywhere. The statement is decided, so
        // it succeeds; a worker that did not confirm is retried in the
        // background until it does (commit is idempotent).
        let failed = commit_all(txn, &writes, &urls).await;
        if failed.is_empty() {
            forget(&self.catalog, txn);
        } else {
            let catalog = Arc::clone(&self.catalog);
            tokio::spawn(retry_commit(catalog, txn, failed, urls));
        }
        Ok(rows)
    }
}

/// Commits `txn` on every worker; returns the writes of workers that failed.
async fn commit_all(
    txn: u64,
    writes: &BTreeMap<String, Vec<StagedWrite>>,
    urls: &BTreeMap<String, String>,
) -> BTreeMap<String, Vec<StagedWrite>> {
    let commits = writes.iter().map(|(worker, w)| async move {
        let result = match urls.get(worker) {
            Some(url) => match WorkerClient::connect(url) {
                Ok(client) => client.commit(txn, w.clone()).await,
                Err(e) => Err(e),
            },
            None => Err(DataFusionError::Internal(format!("no url for {worker}"))),
        };
        (worker, w, result)
    });
    let mut failed = BTreeMap::new();
    for (worker, w, result) in join_all(commits).await {
        if let Err(e) = result {
            tracing::warn!(txn, %worker, error = %e, "commit not confirmed; retrying");
            failed.insert(worker.clone(), w.clone());
        }
    }
    failed
}

/// Drops a finished transaction from the decision log. If that cannot be
/// saved the entry stays, which is harmless: recovery commits it again.
fn forget(catalog: &Catalog, txn: u64) {
    if let Err(e) = catalog.update(|s| {
        s.decided.remove(&txn);
        Ok(())
    }) {
        tracing::warn!(txn, error = %e, "could not clear a finished write from the log");
    }
}

/// Keeps committing on workers that did not confirm, backing off up to 30 s,
/// until all have; the next start's recovery covers a stop before that.
async fn retry_commit(
    catalog: Arc<Catalog>,
    txn: u64,
    mut pending: BTreeMap<String, Vec<StagedWrite>>,
    urls: BTreeMap<String, String>,
) {
    let mut delay = std::time::Duration::from_millis(200);
    while !pending.is_empty() {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
        pending = commit_all(txn, &pending, &urls).await;
    }
    forget(&catalog, txn);
}

/// Copies the strings a view column still points at into buffers of its
/// own. A slice of or a `take` from a string-view column keeps the source's
/// whole data buffers, and Arrow IPC sends every buffer a column holds: without this,
/// each partition's share of a batch would carry all of the batch's
/// strings to its worker.
fn compact_views(batch: RecordBatch) -> Result<RecordBatch> {
    use datafusion::arrow::array::{Array, ArrayRef, AsArray};
    use datafusion::arrow::datatypes::DataType;
    if !batch
        .columns()
        .iter()
        .any(|c| matches!(c.data_type(), DataType::Utf8View | DataType::BinaryView))
    {
        return Ok(batch);
    }
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View => Arc::new(c.as_string_view().gc()) as ArrayRef,
            DataType::BinaryView => Arc::new(c.as_binary_view().gc()) as ArrayRef,
            _ => Arc::clone(c),
        })
        .collect();
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// DataFusion reports a NULL in a NOT NULL column by index; say which
/// column and what to do instead.
fn explain_not_null(e: DataFusionError, schema: &SchemaRef) -> DataFusionError {
    let text = e.to_string();
    let marker = "Invalid batch column at '";
    let Some(rest) = text.split(marker).nth(1) else {
        return e;
    };
    let Some(index) = rest
        .split('\'')
        .next()
        .and_then(|i| i.parse::<usize>().ok())
    else {
        return e;
    };
    let Some(field) = schema.fields().get(index) else {
        return e;
    };
    DataFusionError::Execution(format!(
        "NULL in column '{}', which is NOT NULL (partition key columns always are): give it a \
         value or filter such rows out; nothing was written",
        field.name()
    ))
}

async fn abort(txn: u64, urls: impl Iterator<Item = &String>) {
    let aborts = urls.map(|url| async move {
        if let Err(e) = async { WorkerClient::connect(url)?.abort(txn).await }.await {
            tracing::warn!(txn, %url, error = %e, "abort failed; the staged rows stay until recovery");
        }
    });
    join_all(aborts).await;
}
