//! The write path: routes each row of an INSERT to its partition and commits
//! the statement atomically across partitions with two-phase commit.
//!
//! ```text
//!  rows ─► partitioner ─► per-partition batches
//!        ─► index entries (LOCAL: beside each partition; GLOBAL SYNC: by term;
//!                          GLOBAL ASYNC: to an outbox beside each partition)
//!        ─► prepare (DoPut to each owner: staged Parquet, fsync)
//!        ─► decide  (txn logged in the metastore, fsync)   ◄─ any prepare failed? abort all
//!        ─► commit  (each owner swaps its manifests; a query sees the statement
//!                    from its decision on, resolving what has not landed yet)
//!        ─► acknowledge
//!        ─► forget  (txn removed from the log, in one metastore write with
//!                    the others finished meanwhile; its counts join stats/)
//! ```
//!
//! A crash after "decide" is finished by recovery at the next start: staged
//! writes of logged transactions are committed, all others aborted.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{FieldRef, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::sink::DataSink;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use futures::TryStreamExt;
use futures::future::join_all;
use tessera_sql::{IndexKind, Partitioner, TableDef};
use tessera_worker::{DataFile, WorkerClient, WorkerUnavailable, sort_by_columns};

use crate::catalog::{Catalog, TxnGuard, WriteTarget};
use crate::catalog_state::CatalogState;

mod commit;
#[cfg(test)]
mod dropped_decided;
pub mod group;
mod index_pieces;
mod prepare;
mod reports;

pub(crate) use commit::{Ack, decide_and_commit, decide_and_commit_together, retry_commit};
use group::Groups;
pub use index_pieces::{global_index_pieces, index_pieces};
pub(crate) use prepare::{Prepared, prepare_pieces};
pub use reports::{OutboxWatcher, Reports, WriteFanout};

/// Where the rows of an INSERT go.
#[derive(Debug)]
pub struct WriteSink {
    catalog: Arc<Catalog>,
    /// Told what a write did.
    reports: Arc<Reports>,
    def: TableDef,
    table_schema: SchemaRef,
    /// The schema DataFusion sees: every column nullable, so that NOT NULL
    /// is checked here (`check_not_null`), naming the column, not by
    /// DataFusion in words no caller can rely on.
    accepts: SchemaRef,
    /// Where a small statement waits to share a transaction with others
    /// (`None`: each writes alone).
    groups: Option<Arc<Groups>>,
}

impl WriteSink {
    pub fn new(
        catalog: Arc<Catalog>,
        reports: Arc<Reports>,
        def: TableDef,
        schema: SchemaRef,
    ) -> Self {
        let nullable: Vec<FieldRef> = schema
            .fields()
            .iter()
            .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
            .collect();
        let accepts = Arc::new(Schema::new_with_metadata(
            nullable,
            schema.metadata().clone(),
        ));
        Self {
            catalog,
            reports,
            def,
            table_schema: schema,
            accepts,
            groups: None,
        }
    }

    /// Small statements through this sink share transactions with others
    /// writing the table at the same time (see [`group`]).
    pub(crate) fn grouped(mut self, groups: Arc<Groups>) -> Self {
        self.groups = Some(groups);
        self
    }

    /// The schema rows are accepted in: the table's, every column nullable.
    pub(crate) fn accepts(&self) -> &SchemaRef {
        &self.accepts
    }

    /// Refuses a NULL in a NOT NULL column, naming it.
    fn check_not_null(&self, batch: &RecordBatch) -> Result<()> {
        for (field, column) in self.table_schema.fields().iter().zip(batch.columns()) {
            if !field.is_nullable() && column.null_count() > 0 {
                return Err(tessera_worker::ErrorKind::InvalidArgument.error(format!(
                    "NULL in column '{}', which is NOT NULL: give it a value or filter such rows \
                     out; nothing was written",
                    field.name()
                )));
            }
        }
        Ok(())
    }

    /// Splits rows by partition, checking them against the table's schema.
    pub(crate) fn route(
        &self,
        batches: Vec<RecordBatch>,
    ) -> Result<BTreeMap<u32, Vec<RecordBatch>>> {
        let layout = self.catalog.layout(&self.def.name, &self.def.scheme)?;
        let partitioner =
            Partitioner::try_new(&self.def.scheme, &self.table_schema)?.with_layout(layout);
        let mut out: BTreeMap<u32, Vec<RecordBatch>> = BTreeMap::new();
        for batch in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            self.check_not_null(&batch)?;
            let batch =
                RecordBatch::try_new(Arc::clone(&self.table_schema), batch.columns().to_vec())
                    .map_err(|e| {
                        DataFusionError::Execution(format!(
                            "rows do not fit table '{}': {e}",
                            self.def.name
                        ))
                    })?;
            split_by_partition(&partitioner, batch, &mut out)?;
        }
        Ok(out)
    }
}

/// Adds the rows of `batch` to `out` by the partition `partitioner` gives.
pub(crate) fn split_by_partition(
    partitioner: &Partitioner,
    batch: RecordBatch,
    out: &mut BTreeMap<u32, Vec<RecordBatch>>,
) -> Result<()> {
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
    Ok(())
}

/// `routed` as it is, when every partition it names is still one of
/// `def`'s; routed again to the partitions there are now otherwise (one
/// split or merged after the rows were routed). Called with the table's
/// gate held, which a split or a merge waits for.
fn still_routed(
    catalog: &Catalog,
    def: &TableDef,
    table_schema: &SchemaRef,
    routed: BTreeMap<u32, Vec<RecordBatch>>,
) -> Result<BTreeMap<u32, Vec<RecordBatch>>> {
    if catalog.holds_partitions(&def.name, routed.keys().copied())? {
        return Ok(routed);
    }
    let layout = catalog.layout(&def.name, &def.scheme)?;
    let partitioner = Partitioner::try_new(&def.scheme, table_schema)?.with_layout(layout);
    let mut out = BTreeMap::new();
    for batch in routed.into_values().flatten() {
        split_by_partition(&partitioner, batch, &mut out)?;
    }
    Ok(out)
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
        &self.accepts
    }

    async fn write_all(
        &self,
        data: SendableRecordBatchStream,
        context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let progress = context
            .session_config()
            .get_extension::<crate::progress::Progress>();
        let batches: Vec<RecordBatch> = data
            .inspect_ok(|b| {
                if let Some(p) = &progress {
                    p.wrote(b.num_rows() as u64);
                }
            })
            .try_collect()
            .await?;
        let routed = self.route(batches)?;
        let rows: u64 = routed.values().flatten().map(|b| b.num_rows() as u64).sum();
        if rows == 0 {
            return Ok(0);
        }
        let (catalog, reports) = (&self.catalog, &self.reports);
        match &self.groups {
            Some(groups) if group::is_small(&routed) => {
                let (def, schema) = (self.def.clone(), Arc::clone(&self.table_schema));
                groups.write(catalog, reports, def, schema, routed).await?
            }
            _ => write_routed(catalog, reports, &self.def, &self.table_schema, routed, 1).await?,
        }
        Ok(rows)
    }
}

/// Writes the rows of `statements` INSERT statements into `def`, routed to
/// their partitions, as one transaction with their index entries.
async fn write_routed(
    catalog: &Arc<Catalog>,
    reports: &Reports,
    def: &TableDef,
    table_schema: &SchemaRef,
    routed: BTreeMap<u32, Vec<RecordBatch>>,
    statements: u64,
) -> Result<()> {
    let table = def.name.as_str();
    let (guard, indexes) = catalog.begin_write_as(def).await?;
    let txn = guard.txn;
    let routed = still_routed(catalog, def, table_schema, routed)?;
    let parts: Vec<u32> = routed.keys().copied().collect();
    let targets = catalog.write_targets(table, &parts)?;

    // Each partition's rows as one batch, in the order they are stored
    // (sorted by CLUSTER BY): an index entry names a row by position.
    let sort_by = def.scheme.cluster_by().to_vec();
    let mut pieces = vec![];
    for (target, (partition, batches)) in targets.into_iter().zip(routed) {
        let batch = concat_batches(table_schema, &batches)?;
        let batch = sort_by_columns(batch, &sort_by)?;
        pieces.push(Piece {
            location: def.storage_key(),
            partition,
            target,
            batch,
            role: Role::Rows,
        });
    }
    // Partitions written before the acknowledgement: the data ones, and
    // those of GLOBAL SYNC indexes (a LOCAL index or an outbox lives in
    // its data partition).
    let mut touched = pieces.len() as u64;
    let mut counts: Vec<(String, IndexKind, u64)> = vec![];
    for index in &indexes {
        let (more, entries) = index_pieces(catalog, def, index, txn, &pieces)?;
        if index.kind == IndexKind::GlobalSync {
            touched += more.len() as u64;
        }
        counts.push((index.name.clone(), index.kind, entries));
        pieces.extend(more);
    }

    let workers = pieces
        .iter()
        .flat_map(|p| p.target.replicas.iter().flatten())
        .map(|r| r.worker_id.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    let stats_of: Vec<(u32, usize)> = pieces
        .iter()
        .enumerate()
        .filter(|(_, p)| p.role == Role::Rows)
        .map(|(i, p)| (p.partition, i))
        .collect();
    let (owned, indexed) = (table.to_string(), counts.clone());
    // Acknowledged once decided: the commits land behind it.
    let result = write_pieces(catalog, guard, pieces, Ack::Decided, move |s, files| {
        add_stats(s, &owned, stats_of.iter().map(|(p, i)| (*p, &files[*i])));
        add_index_stats(s, txn, &indexed);
        Ok(())
    })
    .await;
    if let Err(e) = result {
        return Err(DataFusionError::Execution(format!(
            "INSERT into '{table}' failed and changed nothing: {e}"
        )));
    }
    reports.acknowledged((statements, touched, workers), &counts, txn);
    Ok(())
}

/// Counts the rows and bytes of the files a write adds to `table`'s
/// partitions, in the catalog state the write decides.
pub(crate) fn add_stats<'a>(
    s: &mut CatalogState,
    table: &str,
    files: impl Iterator<Item = (u32, &'a DataFile)>,
) {
    let stats = s.stats.entry(table.to_string()).or_default();
    for (partition, file) in files {
        let p = stats.entry(partition).or_default();
        p.rows += file.rows;
        p.bytes += file.bytes;
    }
}

/// Counts the entries a write (transaction `txn`) adds to each index:
/// (name, kind, entries); an ASYNC index's go to its outbox.
pub(crate) fn add_index_stats(s: &mut CatalogState, txn: u64, counts: &[(String, IndexKind, u64)]) {
    for (name, kind, entries) in counts {
        let st = s.index_stats.entry(name.clone()).or_default();
        match kind {
            IndexKind::GlobalAsync => {
                if *entries > 0 && st.outbox_rows == st.applied_rows {
                    st.pending_since = txn;
                }
                st.outbox_rows += entries;
            }
            _ => st.entries += entries,
        }
    }
}

/// What a piece of a transaction holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Rows,
    /// Index entries: LOCAL, GLOBAL SYNC, or an ASYNC index's outbox.
    Entries,
}

/// One partition's share of a transaction: rows for `location`'s partition
/// `partition`, for the copies `target` names.
#[derive(Debug, Clone)]
pub struct Piece {
    pub location: String,
    pub partition: u32,
    pub target: WriteTarget,
    pub batch: RecordBatch,
    pub role: Role,
}

/// Names the worker in a transport error that gives only its URL.
pub(crate) fn name_worker(id: &str, url: &str, e: DataFusionError) -> DataFusionError {
    let named = |m: &str| m.replacen(url, &format!("{id} at {url}"), 1);
    match e {
        DataFusionError::Execution(m) if m.contains(url) && !m.contains(id) => {
            DataFusionError::Execution(named(&m))
        }
        DataFusionError::External(inner) => match inner.downcast::<WorkerUnavailable>() {
            Ok(u) if u.0.contains(url) && !u.0.contains(id) => {
                WorkerUnavailable::error(named(&u.0))
            }
            Ok(u) => DataFusionError::External(u),
            Err(other) => DataFusionError::External(other),
        },
        other => other,
    }
}

/// Writes `pieces` as transaction `txn`, all or nothing: prepare every
/// piece on its worker; decide (the metastore logs the transaction and
/// `decide` updates counters in the same write); commit, index entries
/// first. Once decided the write lands, even across a crash.
pub async fn write_pieces(
    catalog: &Arc<Catalog>,
    guard: TxnGuard,
    pieces: Vec<Piece>,
    ack: Ack,
    decide: impl FnMut(&mut CatalogState, &[DataFile]) -> Result<()> + Send + 'static,
) -> Result<()> {
    write_pieces_placing(catalog, guard, pieces, ack, |_| Ok(()), decide).await
}

/// [`write_pieces`] to partitions that `place` puts in the partition map
/// as the write is decided (a split's halves), before the copies that took
/// each piece are settled against the map.
pub async fn write_pieces_placing(
    catalog: &Arc<Catalog>,
    guard: TxnGuard,
    pieces: Vec<Piece>,
    ack: Ack,
    mut place: impl FnMut(&mut CatalogState) -> Result<()> + Send + 'static,
    mut decide: impl FnMut(&mut CatalogState, &[DataFile]) -> Result<()> + Send + 'static,
) -> Result<()> {
    let mut prepared = prepare_pieces(guard.txn, pieces).await?;
    let writes = std::mem::take(&mut prepared.writes);
    let urls = std::mem::take(&mut prepared.urls);
    decide_and_commit(catalog, guard, writes, urls, ack, move |s| {
        place(s)?;
        prepared.settle(s)?;
        decide(s, &prepared.files)
    })
    .await?;
    Ok(())
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

pub(crate) async fn abort(txn: u64, urls: impl Iterator<Item = &String>) {
    let aborts = urls.map(|url| async move {
        if let Err(e) = async { WorkerClient::connect(url)?.abort(txn).await }.await {
            tracing::warn!(txn, %url, error = %e, "abort failed; the staged rows stay until recovery");
        }
    });
    join_all(aborts).await;
}
