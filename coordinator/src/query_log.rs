//! The query log behind the system table `tessera.queries`: one row per
//! query the coordinator ran, with what it cost the cluster.
//!
//! | column             | meaning                                                    |
//! |--------------------|------------------------------------------------------------|
//! | query_id           | increasing number, per coordinator run                     |
//! | started            | wall-clock start (UTC)                                     |
//! | sql                | the statement (first 4000 characters)                      |
//! | status             | `ok`, `error: ...` or `cancelled`                          |
//! | elapsed_ms         | from planning to the last row sent                         |
//! | rows               | rows returned                                              |
//! | partitions_touched | table partitions read (sum over the query's scans)         |
//! | stages             | distributed stages run on workers                          |
//! | tasks              | tasks of those stages                                      |
//! | bytes_shuffled     | bytes sent between workers (shuffles and broadcasts)       |
//! | bytes_gathered     | bytes sent from workers to the coordinator                 |
//!
//! Byte counts are encoded Arrow Flight data as it crossed the network.
//! The log keeps the last [`KEEP`] queries.

use std::collections::{BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{MemTable, SchemaProvider, Session, TableProvider};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::{
    DistributedLeafExec, DistributedMetricsFormat, NetworkBoundaryExt,
    rewrite_distributed_plan_with_metrics,
};
use futures::Stream;
use tessera_worker::PartitionScanExec;

/// Queries kept in the log.
pub const KEEP: usize = 1000;
const MAX_SQL_CHARS: usize = 4000;

/// One finished query.
#[derive(Debug, Clone, Default)]
pub struct QueryRecord {
    pub query_id: u64,
    pub started_micros: i64,
    pub sql: String,
    pub status: String,
    pub elapsed_ms: f64,
    pub rows: u64,
    pub partitions_touched: u64,
    pub stages: u64,
    pub tasks: u64,
    pub bytes_shuffled: u64,
    pub bytes_gathered: u64,
}

#[derive(Debug, Default)]
pub struct QueryLog {
    next_id: Mutex<u64>,
    records: Mutex<VecDeque<QueryRecord>>,
}

impl QueryLog {
    /// Starts a record for `sql`; it enters the log when the query ends.
    pub fn begin(self: &Arc<Self>, sql: &str) -> QueryRecorder {
        let query_id = {
            let mut next = self.next_id.lock().unwrap_or_else(|e| e.into_inner());
            *next += 1;
            *next
        };
        let started_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        QueryRecorder {
            log: Arc::clone(self),
            started: Instant::now(),
            record: QueryRecord {
                query_id,
                started_micros,
                // Passwords of user statements never reach the log.
                sql: tessera_sql::redact(sql)
                    .trim()
                    .chars()
                    .take(MAX_SQL_CHARS)
                    .collect(),
                ..Default::default()
            },
        }
    }

    fn push(&self, record: QueryRecord) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() == KEEP {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// The logged queries, oldest first.
    pub fn snapshot(&self) -> Vec<QueryRecord> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().cloned().collect()
    }
}

/// A query being timed.
pub struct QueryRecorder {
    log: Arc<QueryLog>,
    started: Instant,
    record: QueryRecord,
}

impl QueryRecorder {
    /// Logs a query that returned its rows without a distributed plan
    /// (DDL, SET, SHOW ...) or failed before running.
    pub fn finish(mut self, result: std::result::Result<u64, &DataFusionError>) {
        self.record.elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(rows) => {
                self.record.rows = rows;
                self.record.status = "ok".into();
            }
            Err(e) => self.record.status = format!("error: {e}"),
        }
        self.log.push(self.record);
    }

    /// Wraps the result stream of `plan`: counts rows, and when the stream
    /// ends collects the plan's metrics from the workers and logs the query.
    pub fn watch(
        mut self,
        plan: Arc<dyn ExecutionPlan>,
        stream: SendableRecordBatchStream,
    ) -> SendableRecordBatchStream {
        let shape = PlanShape::of(&plan);
        self.record.partitions_touched = shape.partitions;
        self.record.stages = shape.stages;
        self.record.tasks = shape.tasks;
        Box::pin(WatchedStream {
            inner: stream,
            recorder: Some(self),
            plan,
        })
    }
}

/// What a plan will do, known before it runs.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct PlanShape {
    partitions: u64,
    stages: u64,
    tasks: u64,
}

impl PlanShape {
    fn of(plan: &Arc<dyn ExecutionPlan>) -> Self {
        let mut shape = PlanShape::default();
        let mut stages = BTreeSet::new();
        let _ = plan.apply(|node| {
            if let Some(boundary) = node.as_network_boundary() {
                let stage = boundary.input_stage();
                if stages.insert(stage.num()) {
                    shape.tasks += stage.task_count() as u64;
                }
            }
            if let Some(leaf) = node.downcast_ref::<DistributedLeafExec>() {
                if let Some(scan) = leaf.original().downcast_ref::<PartitionScanExec>() {
                    shape.partitions += u64::from(scan.kept_partitions());
                }
                return Ok(TreeNodeRecursion::Jump);
            }
            if let Some(scan) = node.downcast_ref::<PartitionScanExec>() {
                shape.partitions += u64::from(scan.kept_partitions());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        shape.stages = stages.len() as u64;
        shape
    }
}

/// Bytes that crossed network boundaries in an executed distributed plan:
/// (between workers, to the coordinator). A coalesce feeds the stage above
/// it; only the top one feeds the coordinator, but all are counted as
/// gathered, and shuffles and broadcasts as moved between workers.
async fn bytes_moved(plan: Arc<dyn ExecutionPlan>) -> Result<(u64, u64)> {
    let plan =
        rewrite_distributed_plan_with_metrics(plan, DistributedMetricsFormat::Aggregated).await?;
    let mut shuffled = 0u64;
    let mut gathered = 0u64;
    plan.apply(|node| {
        if let Some(kind) = crate::stages::exchange(node) {
            let bytes = crate::stages::metric(node, "bytes_transferred") as u64;
            if kind == "gather" {
                gathered += bytes;
            } else {
                shuffled += bytes;
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok((shuffled, gathered))
}

struct WatchedStream {
    inner: SendableRecordBatchStream,
    recorder: Option<QueryRecorder>,
    plan: Arc<dyn ExecutionPlan>,
}

impl WatchedStream {
    fn end(&mut self, error: Option<&DataFusionError>) {
        let Some(mut recorder) = self.recorder.take() else {
            return;
        };
        recorder.record.elapsed_ms = recorder.started.elapsed().as_secs_f64() * 1000.0;
        if let Some(e) = error {
            recorder.record.status = format!("error: {e}");
            recorder.log.push(recorder.record);
            return;
        }
        recorder.record.status = "ok".into();
        let plan = Arc::clone(&self.plan);
        // Workers send their metrics when their tasks end; wait for them
        // off the result path.
        tokio::spawn(async move {
            match bytes_moved(plan).await {
                Ok((shuffled, gathered)) => {
                    recorder.record.bytes_shuffled = shuffled;
                    recorder.record.bytes_gathered = gathered;
                }
                Err(e) => tracing::debug!(error = %e, "no metrics for a query"),
            }
            recorder.log.push(recorder.record);
        });
    }
}

impl Drop for WatchedStream {
    fn drop(&mut self) {
        if let Some(mut recorder) = self.recorder.take() {
            recorder.record.elapsed_ms = recorder.started.elapsed().as_secs_f64() * 1000.0;
            recorder.record.status = "cancelled".into();
            recorder.log.push(recorder.record);
        }
    }
}

impl Stream for WatchedStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let poll = self.inner.as_mut().poll_next(cx);
        match &poll {
            Poll::Ready(Some(Ok(batch))) => {
                if let Some(r) = self.recorder.as_mut() {
                    r.record.rows += batch.num_rows() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => self.end(Some(e)),
            Poll::Ready(None) => self.end(None),
            Poll::Pending => {}
        }
        poll
    }
}

impl RecordBatchStream for WatchedStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

fn queries_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("query_id", DataType::UInt64, false),
        Field::new(
            "started",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("sql", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("elapsed_ms", DataType::Float64, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("partitions_touched", DataType::UInt64, false),
        Field::new("stages", DataType::UInt64, false),
        Field::new("tasks", DataType::UInt64, false),
        Field::new("bytes_shuffled", DataType::UInt64, false),
        Field::new("bytes_gathered", DataType::UInt64, false),
    ]))
}

fn queries_batch(records: &[QueryRecord]) -> Result<RecordBatch> {
    let u = |f: fn(&QueryRecord) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(records.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        u(|r| r.query_id),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(records.iter().map(|r| r.started_micros))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.sql.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.status.as_str()),
        )),
        Arc::new(Float64Array::from_iter_values(
            records.iter().map(|r| r.elapsed_ms),
        )),
        u(|r| r.rows),
        u(|r| r.partitions_touched),
        u(|r| r.stages),
        u(|r| r.tasks),
        u(|r| r.bytes_shuffled),
        u(|r| r.bytes_gathered),
    ];
    Ok(RecordBatch::try_new(queries_schema(), columns)?)
}

/// The `tessera` schema: system tables.
#[derive(Debug)]
pub struct SystemSchema {
    log: Arc<QueryLog>,
    catalog: Arc<crate::catalog::Catalog>,
}

impl SystemSchema {
    pub fn new(log: Arc<QueryLog>, catalog: Arc<crate::catalog::Catalog>) -> Self {
        Self { log, catalog }
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        vec!["queries".into(), "compactions".into()]
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(match name {
            "queries" => {
                let log = Arc::clone(&self.log);
                Some(Arc::new(SystemTable {
                    schema: queries_schema(),
                    rows: Box::new(move || queries_batch(&log.snapshot())),
                }))
            }
            "compactions" => {
                let catalog = Arc::clone(&self.catalog);
                Some(Arc::new(SystemTable {
                    schema: crate::compaction_log::compactions_schema(),
                    rows: Box::new(move || {
                        crate::compaction_log::compactions_batch(&catalog.compactions.snapshot())
                    }),
                }))
            }
            _ => None,
        })
    }

    fn table_exist(&self, name: &str) -> bool {
        name == "queries" || name == "compactions"
    }
}

/// A table of the `tessera` schema: a snapshot of `rows` when the query
/// is planned.
struct SystemTable {
    schema: SchemaRef,
    rows: Box<dyn Fn() -> Result<RecordBatch> + Send + Sync>,
}

impl std::fmt::Debug for SystemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemTable")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mem = MemTable::try_new(self.schema(), vec![vec![(self.rows)()?]])?;
        mem.scan(state, projection, filters, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_last_queries() {
        let log = Arc::new(QueryLog::default());
        for i in 0..(KEEP + 5) {
            log.begin(&format!("SELECT {i}")).finish(Ok(1));
        }
        let all = log.snapshot();
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].sql, "SELECT 5");
        assert_eq!(all[0].query_id, 6);
        assert_eq!(all[KEEP - 1].status, "ok");
        let batch = queries_batch(&all).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(batch.num_rows(), KEEP);
    }
}
