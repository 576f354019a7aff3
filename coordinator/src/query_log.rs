//! The query log behind the system table `tessera.queries`: one row per
//! query the coordinator ran, with what it cost the cluster.
//!
//! | column             | meaning                                                    |
//! |--------------------|------------------------------------------------------------|
//! | query_id           | `<coordinator>-<n>`: unique in the cluster (`CANCEL QUERY`) |
//! | started            | wall-clock start (UTC)                                     |
//! | user_name          | who ran it (NULL without sign-in)                          |
//! | client             | the client's address (NULL for the server's own work)      |
//! | sql                | the statement (first 4000 characters)                      |
//! | run                | 1; n for the n-th run of a read-only query run again after |
//! |                    | a worker failed (the failed runs are listed too)           |
//! | status             | `waiting` (rows not asked for yet), `running`, `ok`,       |
//! |                    | `error: ...` or `cancelled`                                |
//! | elapsed_ms         | from planning to the last row sent (so far, if running)    |
//! | rows               | rows returned                                              |
//! | partitions_touched | table partitions read (sum over the query's scans)         |
//! | stages             | distributed stages run on workers                          |
//! | tasks              | tasks of those stages                                      |
//! | bytes_shuffled     | bytes sent between workers (shuffles and broadcasts)       |
//! | bytes_gathered     | bytes sent from workers to the coordinator                 |
//!
//! Byte counts are encoded Arrow Flight data as it crossed the network.
//! The log keeps the last [`KEEP`] queries, and every running one. A user
//! of role reader sees its own queries only, and cancels only those.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::{
    DistributedLeafExec, DistributedMetricsFormat, NetworkBoundaryExt,
    rewrite_distributed_plan_with_metrics,
};
use futures::Stream;
use tessera_worker::{ErrorKind, PartitionScanExec};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

mod table;

pub(crate) use table::{queries_batch, queries_schema};

/// Queries kept in the log.
pub const KEEP: usize = 1000;
const MAX_SQL_CHARS: usize = 4000;

/// Who runs a statement: shown in `tessera.queries`, and deciding whose
/// queries it sees and may cancel.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The signed-in user (`None` on a server without sign-in).
    pub user: Option<String>,
    /// The client's address.
    pub client: Option<String>,
    /// Whether it sees and cancels every query (an admin, anyone on a
    /// server without sign-in, the server itself).
    pub admin: bool,
    /// Which run of its statement this is: 0 or 1 for the first, more for
    /// a read-only query run again after a worker failed.
    pub run: u32,
    /// The client's name for the statement (see `progress`).
    pub tag: Option<String>,
}

impl Caller {
    /// The server's own work.
    fn server() -> Self {
        Self {
            user: None,
            client: None,
            admin: true,
            run: 0,
            tag: None,
        }
    }

    fn may_see(&self, record: &QueryRecord) -> bool {
        self.admin || (self.user.is_some() && record.user == self.user)
    }
}

tokio::task_local! {
    static CALLER: Caller;
}

/// Runs `f` on behalf of `caller` (boxed, as [`crate::engine::in_session`]).
pub fn as_caller<F: Future>(caller: Caller, f: F) -> impl Future<Output = F::Output> {
    CALLER.scope(caller, Box::pin(f))
}

/// Who runs the statement running now.
pub fn current_caller() -> Caller {
    CALLER
        .try_with(Caller::clone)
        .unwrap_or_else(|_| Caller::server())
}

/// One query, finished or running.
#[derive(Debug, Clone, Default)]
pub struct QueryRecord {
    /// Order of start on this coordinator.
    pub seq: u64,
    /// `<coordinator>-<seq>`: unique in the cluster.
    pub query_id: String,
    pub started_micros: i64,
    pub user: Option<String>,
    pub client: Option<String>,
    pub sql: String,
    /// 1, or the n-th run of a query run again after a worker failed.
    pub run: u32,
    pub status: String,
    pub elapsed_ms: f64,
    pub rows: u64,
    pub partitions_touched: u64,
    pub stages: u64,
    pub tasks: u64,
    pub bytes_shuffled: u64,
    pub bytes_gathered: u64,
}

/// A query that has not ended.
#[derive(Debug)]
struct Running {
    record: QueryRecord,
    started: Instant,
    cancel: CancellationToken,
    /// The Flight SQL result handle its rows are fetched with.
    handle: Option<String>,
    /// Planned, its rows not asked for yet.
    waiting: bool,
    /// The client's tag, and how far it got.
    tag: Option<String>,
    progress: Arc<crate::progress::Progress>,
}

#[derive(Debug)]
pub struct QueryLog {
    /// This coordinator's part of every query id: random per start.
    tag: String,
    next_id: Mutex<u64>,
    records: Mutex<VecDeque<QueryRecord>>,
    running: Mutex<BTreeMap<u64, Running>>,
}

impl Default for QueryLog {
    fn default() -> Self {
        Self {
            tag: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
            next_id: Mutex::default(),
            records: Mutex::default(),
            running: Mutex::default(),
        }
    }
}

/// How a cancellation went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// Asked to stop; it ends with a `cancelled` error.
    Yes,
    /// Not running here (ended, or never known).
    NotRunning,
}

impl QueryLog {
    /// Starts a record for `sql`, run by the current caller; it is listed
    /// as running until it ends.
    pub fn begin(self: &Arc<Self>, sql: &str) -> QueryRecorder {
        let seq = {
            let mut next = self.next_id.lock().unwrap_or_else(|e| e.into_inner());
            *next += 1;
            *next
        };
        let started_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let caller = current_caller();
        let record = QueryRecord {
            seq,
            query_id: format!("{}-{seq}", self.tag),
            started_micros,
            user: caller.user,
            client: caller.client,
            run: caller.run.max(1),
            // Passwords of user statements never reach the log.
            sql: tessera_sql::redact(sql)
                .trim()
                .chars()
                .take(MAX_SQL_CHARS)
                .collect(),
            ..Default::default()
        };
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let progress = Arc::new(crate::progress::Progress::new(&record.query_id));
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                seq,
                Running {
                    record: record.clone(),
                    started,
                    cancel: cancel.clone(),
                    handle: None,
                    waiting: false,
                    tag: caller.tag,
                    progress: Arc::clone(&progress),
                },
            );
        QueryRecorder {
            log: Arc::clone(self),
            started,
            record: Some(record),
            cancel,
            progress,
        }
    }

    /// Notes the result handle query `seq` is fetched with.
    pub fn attach_handle(&self, seq: u64, handle: &str) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = running.get_mut(&seq) {
            r.handle = Some(handle.to_string());
            r.waiting = true;
        }
    }

    /// The progress of `caller`'s running statement tagged `tag`, and how
    /// long it has run.
    pub fn progress_of(
        &self,
        tag: &str,
        caller: &Caller,
    ) -> Option<(Arc<crate::progress::Progress>, std::time::Duration)> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .values()
            .filter(|r| r.tag.as_deref() == Some(tag) && caller.may_see(&r.record))
            .max_by_key(|r| r.record.seq)
            .map(|r| (Arc::clone(&r.progress), r.started.elapsed()))
    }

    /// Notes that the client asks for query `seq`'s rows now.
    pub fn fetching(&self, seq: u64) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = running.get_mut(&seq) {
            r.waiting = false;
        }
    }

    fn push(&self, record: QueryRecord) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&record.seq);
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() == KEEP {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// The finished queries, oldest first.
    pub fn snapshot(&self) -> Vec<QueryRecord> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().cloned().collect()
    }

    /// The running queries, oldest first, as far as they got.
    pub fn running(&self) -> Vec<QueryRecord> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .values()
            .map(|r| QueryRecord {
                status: if r.waiting { "waiting" } else { "running" }.into(),
                elapsed_ms: r.started.elapsed().as_secs_f64() * 1000.0,
                ..r.record.clone()
            })
            .collect()
    }

    /// Finished and running queries `caller` may see, in order of start.
    pub(crate) fn visible(&self, caller: &Caller) -> Vec<QueryRecord> {
        let mut all = self.snapshot();
        all.extend(self.running());
        all.retain(|r| caller.may_see(r));
        all.sort_by_key(|r| r.seq);
        all
    }

    /// Cancels the running query `query_id` for `by` (an admin, or the
    /// user who runs it).
    pub fn cancel(&self, query_id: &str, by: &Caller) -> Result<()> {
        match self.cancel_where(|r| r.record.query_id == query_id, by)? {
            Cancelled::Yes => Ok(()),
            Cancelled::NotRunning => Err(ErrorKind::NotFound.error(format!(
                "no query '{query_id}' is running on this coordinator: it ended, or another \
                 coordinator runs it (SELECT query_id FROM tessera.queries WHERE status = \
                 'running' on each lists theirs)"
            ))),
        }
    }

    /// Cancels the running query `seq` of this coordinator, for `by`.
    pub fn cancel_seq(&self, seq: u64, by: &Caller) -> Result<Cancelled> {
        self.cancel_where(|r| r.record.seq == seq, by)
    }

    /// Cancels the running query fetched with result `handle`, for `by`.
    pub fn cancel_handle(&self, handle: &str, by: &Caller) -> Result<Cancelled> {
        self.cancel_where(|r| r.handle.as_deref() == Some(handle), by)
    }

    /// Cancels the running query `which` finds, if `by` may.
    fn cancel_where(&self, which: impl Fn(&Running) -> bool, by: &Caller) -> Result<Cancelled> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some(query) = running.values().find(|r| which(r)) else {
            return Ok(Cancelled::NotRunning);
        };
        if !by.may_see(&query.record) {
            return Err(ErrorKind::PermissionDenied.error(format!(
                "query '{}' is not yours to cancel: a user of role reader cancels only its own \
                 queries",
                query.record.query_id
            )));
        }
        query.cancel.cancel();
        Ok(Cancelled::Yes)
    }
}

/// A query being timed. Dropped before it ends (its rows never fetched),
/// it is logged as cancelled.
pub struct QueryRecorder {
    log: Arc<QueryLog>,
    started: Instant,
    record: Option<QueryRecord>,
    cancel: CancellationToken,
    progress: Arc<crate::progress::Progress>,
}

impl Drop for QueryRecorder {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0;
            record.status = "cancelled".into();
            self.log.push(record);
        }
    }
}

impl QueryRecorder {
    /// How far this query got.
    pub fn progress(&self) -> Arc<crate::progress::Progress> {
        Arc::clone(&self.progress)
    }

    /// This query's order of start on this coordinator.
    pub fn seq(&self) -> u64 {
        self.record.as_ref().map_or(0, |r| r.seq)
    }

    /// Logs a query that returned its rows without a distributed plan
    /// (DDL, SET, SHOW ...) or failed before running.
    pub fn finish(mut self, result: std::result::Result<u64, &DataFusionError>) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        record.elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(rows) => {
                record.rows = rows;
                record.status = "ok".into();
            }
            Err(e) => record.status = format!("error: {e}"),
        }
        self.log.push(record);
    }

    /// Wraps the result stream of `plan`: counts rows, stops with an error
    /// when the query is cancelled, and when the stream ends collects the
    /// plan's metrics from the workers and logs the query.
    pub fn watch(
        mut self,
        plan: Arc<dyn ExecutionPlan>,
        stream: SendableRecordBatchStream,
    ) -> SendableRecordBatchStream {
        let shape = PlanShape::of(&plan);
        if let Some(r) = self.record.as_mut() {
            r.partitions_touched = shape.partitions;
            r.stages = shape.stages;
            r.tasks = shape.tasks;
        }
        let cancelled = Box::pin(self.cancel.clone().cancelled_owned());
        Box::pin(WatchedStream {
            inner: stream,
            recorder: Some(self),
            plan,
            cancelled,
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
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl WatchedStream {
    /// The query's record, until it is logged.
    fn record(&self) -> Option<&QueryRecord> {
        self.recorder.as_ref().and_then(|r| r.record.as_ref())
    }

    fn end(&mut self, error: Option<&DataFusionError>, status: &str) {
        let Some(mut recorder) = self.recorder.take() else {
            return;
        };
        let Some(mut record) = recorder.record.take() else {
            return;
        };
        record.elapsed_ms = recorder.started.elapsed().as_secs_f64() * 1000.0;
        if let Some(e) = error {
            record.status = match status {
                "cancelled" => status.to_string(),
                _ => format!("error: {e}"),
            };
            recorder.log.push(record);
            return;
        }
        record.status = status.into();
        let plan = Arc::clone(&self.plan);
        let log = Arc::clone(&recorder.log);
        // Workers send their metrics when their tasks end; wait for them
        // off the result path.
        tokio::spawn(async move {
            match bytes_moved(plan).await {
                Ok((shuffled, gathered)) => {
                    record.bytes_shuffled = shuffled;
                    record.bytes_gathered = gathered;
                }
                Err(e) => tracing::debug!(error = %e, "no metrics for a query"),
            }
            log.push(record);
        });
    }
}

impl Stream for WatchedStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.record().is_none() {
            // Ended (or cancelled): nothing more.
            return Poll::Ready(None);
        }
        if self.cancelled.as_mut().poll(cx).is_ready() {
            let id = self
                .record()
                .map(|r| r.query_id.clone())
                .unwrap_or_default();
            let e = ErrorKind::Cancelled.error(format!("query {id} was cancelled"));
            self.end(Some(&e), "cancelled");
            return Poll::Ready(Some(Err(e)));
        }
        let poll = self.inner.as_mut().poll_next(cx);
        match &poll {
            Poll::Ready(Some(Ok(batch))) => {
                if let Some(r) = self.recorder.as_mut().and_then(|r| r.record.as_mut()) {
                    r.rows += batch.num_rows() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => self.end(Some(e), "error"),
            Poll::Ready(None) => self.end(None, "ok"),
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

#[cfg(test)]
mod tests;
