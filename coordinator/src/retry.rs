//! Read-only queries that fail because a worker could not be reached (it
//! is down or restarting, or a connection broke when it went), or that ran
//! while a worker rejoined (its new process knows nothing of the tasks the
//! old one was given), run again whole, on a fresh plan, as long as no row
//! has reached the client yet (rows are held back up to [`HOLD_BYTES`], so
//! a query with a small result can always be run again): up to [`MAX_RUNS`] runs, with pauses
//! doubling from 100 ms (about 6 s in all when each run fails at once), and
//! never past [`RETRY_WINDOW`] after the first failure. datafusion-distributed does not retry
//! tasks, so a query is the unit of retry; with one copy of each partition
//! this rides out a worker restart, and a worker that stays away ends the
//! query with an error that names it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use tessera_worker::{WorkerUnavailable, is_worker_failure};

use crate::engine::{Coordinator, ParamRow, Planned, in_session};
use crate::query_log::{Caller, as_caller};
use datafusion::prelude::SessionContext;

/// Runs of one read-only query at most (`tessera.query_runs` may ask for
/// fewer): enough for a worker to restart, few enough that a worker that
/// stays down is reported within seconds.
pub const MAX_RUNS: u32 = 6;

/// How long after its first failure a read-only query may still be run
/// again (a run may itself wait out datafusion-distributed's 10 s for a
/// task plan that a restarted worker never got).
pub const RETRY_WINDOW: Duration = Duration::from_secs(30);

/// For this long after a worker rejoins, any failure of a read-only query
/// counts as one its restart may explain.
const AFTER_REJOIN: Duration = Duration::from_secs(30);

/// How a failed run of a read-only query is retried.
pub struct Retry {
    /// The membership epoch when the run was planned.
    epoch: u64,
    /// Set at the first failure.
    deadline: Option<Instant>,
    delay: Duration,
    runs: u32,
    /// Runs at most (`SET tessera.query_runs`).
    max_runs: u32,
}

impl Retry {
    /// Call before planning the first run.
    pub fn begin(coordinator: &Coordinator) -> Self {
        Self {
            epoch: coordinator.catalog().membership_epoch(),
            deadline: None,
            delay: Duration::from_millis(100),
            runs: 1,
            max_runs: coordinator.options().query_runs.clamp(1, MAX_RUNS),
        }
    }

    /// Whether a run that failed with `e` is worth another, after a pause
    /// (taken here); the next run counts from the membership as it is now.
    pub async fn again(&mut self, coordinator: &Coordinator, e: &DataFusionError) -> bool {
        let deadline = *self
            .deadline
            .get_or_insert_with(|| Instant::now() + RETRY_WINDOW);
        if self.runs >= self.max_runs || Instant::now() + self.delay >= deadline {
            return false;
        }
        let epoch = coordinator.catalog().membership_epoch();
        // A failure that crossed a process keeps only its text: a worker
        // that does not answer now explains it as well.
        // Connections cached to a worker before it restarted fail once
        // each, on the coordinator or on other workers, after it is back.
        let rejoined_lately = coordinator
            .catalog()
            .since_membership_change()
            .is_some_and(|d| d < AFTER_REJOIN);
        let worth = is_worker_failure(e)
            || epoch != self.epoch
            || rejoined_lately
            || !down_members(coordinator).await.is_empty();
        if !worth {
            return false;
        }
        tracing::info!(error = %e, "a worker failed or rejoined during the query; running it again");
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(2));
        self.runs += 1;
        self.epoch = coordinator.catalog().membership_epoch();
        true
    }
}

/// Plans a statement; if planning fails and the statement only reads (a
/// GLOBAL index is looked up while planning), plans it again while
/// [`Retry::again`] says so. Whether it only reads is asked after a
/// failure, so a statement that plans is planned once.
pub async fn plan_statement(
    coordinator: &Coordinator,
    sql: &str,
    params: &[ParamRow],
    retry: &mut Retry,
) -> Result<Planned> {
    let mut result = coordinator.plan_with(sql, params).await;
    let mut read_only = None;
    loop {
        let e = match result {
            Ok(planned) => return Ok(planned),
            Err(e) => e,
        };
        let only_reads = match read_only {
            Some(r) => r,
            None => *read_only.insert(coordinator.is_read_only(sql).await),
        };
        if !only_reads {
            return Err(e);
        }
        if !retry.again(coordinator, &e).await {
            return Err(name_missing_worker(e, coordinator).await);
        }
        let caller = Caller {
            run: retry.runs,
            ..crate::query_log::current_caller()
        };
        result = as_caller(caller, coordinator.plan_with(sql, params)).await;
    }
}

/// Rows held back before any reaches the client: a query whose result fits
/// can be run again whole if a run fails; a larger one streams on, and
/// from then on a failure ends it.
pub const HOLD_BYTES: usize = 8 << 20;

struct Attempt {
    coordinator: Arc<Coordinator>,
    sql: String,
    params: Vec<ParamRow>,
    session: SessionContext,
    /// Who runs it: the run again is theirs too.
    caller: Caller,
    stream: SendableRecordBatchStream,
    /// Rows of this run not sent yet, and their size.
    held: VecDeque<RecordBatch>,
    held_bytes: usize,
    /// Rows went to the client: no run again.
    streaming: bool,
    retry: Retry,
}

/// `first`, the stream of `sql`'s first run, run again while
/// [`Retry::again`] says so and no row has reached the client: rows are held
/// back until the run ends or they pass [`HOLD_BYTES`].
pub fn retrying(
    coordinator: Arc<Coordinator>,
    sql: String,
    params: Vec<ParamRow>,
    session: SessionContext,
    caller: Caller,
    first: SendableRecordBatchStream,
    retry: Retry,
) -> SendableRecordBatchStream {
    let schema = first.schema();
    let attempt = Attempt {
        coordinator,
        sql,
        params,
        session,
        caller,
        stream: first,
        held: VecDeque::new(),
        held_bytes: 0,
        streaming: false,
        retry,
    };
    let stream = futures::stream::unfold(Some(attempt), |attempt| async move {
        let mut a = attempt?;
        loop {
            if a.streaming
                && let Some(batch) = a.held.pop_front()
            {
                return Some((Ok(batch), Some(a)));
            }
            match a.stream.next().await {
                None if a.held.is_empty() => return None,
                None => a.streaming = true,
                Some(Ok(batch)) if a.streaming => return Some((Ok(batch), Some(a))),
                Some(Ok(batch)) => {
                    a.held_bytes += batch.get_array_memory_size();
                    a.held.push_back(batch);
                    a.streaming = a.held_bytes > HOLD_BYTES;
                }
                Some(Err(e)) => {
                    if a.streaming || !a.retry.again(&a.coordinator, &e).await {
                        let e = name_missing_worker(e, &a.coordinator).await;
                        return Some((Err(e), None));
                    }
                    a.held.clear();
                    a.held_bytes = 0;
                    let again = in_session(
                        a.session.clone(),
                        as_caller(
                            Caller {
                                run: a.retry.runs,
                                ..a.caller.clone()
                            },
                            a.coordinator.plan_with(&a.sql, &a.params),
                        ),
                    );
                    match again.await.and_then(|p| p.execute()) {
                        Ok(stream) => a.stream = stream,
                        Err(e) => {
                            let schema = a.stream.schema();
                            a.stream = Box::pin(RecordBatchStreamAdapter::new(
                                schema,
                                futures::stream::once(async move { Err(e) }),
                            ));
                        }
                    }
                }
            }
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, stream))
}

/// A failure whose text names no worker (a connection that broke mid-call
/// says only that, and one that crossed a process only its text): name the
/// workers that do not accept connections now, if any.
async fn name_missing_worker(e: DataFusionError, coordinator: &Coordinator) -> DataFusionError {
    let members: BTreeMap<String, String> = coordinator.catalog().members().unwrap_or_default();
    let text = e.to_string();
    if members.keys().any(|id| text.contains(id.as_str())) {
        return e;
    }
    let down = down_members(coordinator).await;
    match (down.is_empty(), is_worker_failure(&e)) {
        (true, true) => WorkerUnavailable::error(format!(
            "a connection to a worker broke while the query ran ({text}); every worker answers \
             now: run the query again"
        )),
        (true, false) => e,
        (false, _) => WorkerUnavailable::error(format!(
            "worker {} is unreachable and the query needs the partitions it holds ({text}); \
             check that it is running, then retry",
            down.join(", ")
        )),
    }
}

/// Members that do not accept a connection within a second, as "id at url".
async fn down_members(coordinator: &Coordinator) -> Vec<String> {
    let members = coordinator.catalog().members().unwrap_or_default();
    let probes = members.iter().map(|(id, url)| async move {
        let addr = url.split("://").last().unwrap_or(url).trim_end_matches('/');
        let probe = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(addr.to_string()),
        )
        .await;
        (!matches!(probe, Ok(Ok(_)))).then(|| format!("{id} at {url}"))
    });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}
