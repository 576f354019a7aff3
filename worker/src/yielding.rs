//! `YieldingSliceExec` bounds the work an operator can do between two
//! points where its task gives the thread back to the runtime.
//!
//! A task on a worker is cancelled by dropping its future, which takes
//! effect the next time the future returns `Pending`. A nested-loop or
//! cross join holds its whole build side and loops over it for every probe
//! batch without returning; when its filter matches nothing it produces no
//! output either, so it never waits on a consumer. Its only wait is on the
//! probe input, and if that input is ready (decoded from a row group in
//! memory) the join can run for minutes without one, long after the query
//! was cancelled, and keeps other tasks of its thread waiting meanwhile.
//!
//! Below such a join, this node hands the probe rows on in slices and
//! returns `Pending` once before each slice. It times how long its consumer
//! takes over a slice and sizes the next one to stay under [`TARGET`]: a
//! join against a small build side gets whole batches, one against a large
//! build side smaller slices. A cancelled query thus stops within about one
//! slice. Slices are cut only as far as needed: each one costs the join a
//! fixed amount of work, and one under a tenth of a batch makes
//! DataFusion's nested-loop join pair it with several build rows at once,
//! which costs several times more per pair.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, Statistics, internal_err};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{Stream, StreamExt};

/// Streams of this node alive in this process: the nested-loop and cross
/// joins running here.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// How many nested-loop and cross joins are running in this process (on
/// all its workers); a cancelled query's joins are dropped, so this falls.
pub fn running_loop_joins() -> usize {
    RUNNING.load(Ordering::SeqCst)
}

/// The most time the consumer should take over one slice.
pub const TARGET: Duration = Duration::from_millis(200);

/// Passes its input on in slices sized to take its consumer less than
/// [`TARGET`] each, returning `Pending` once before each slice.
#[derive(Debug)]
pub struct YieldingSliceExec {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl YieldingSliceExec {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = Arc::clone(input.properties());
        Self { input, properties }
    }
}

impl DisplayAs for YieldingSliceExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "YieldingSliceExec: target={}ms", TARGET.as_millis())
    }
}

impl ExecutionPlan for YieldingSliceExec {
    fn name(&self) -> &str {
        "YieldingSliceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        match input_stats {
            [input] => Ok(Arc::clone(input)),
            _ => internal_err!("YieldingSliceExec has one child"),
        }
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self::new(input))),
            _ => internal_err!("YieldingSliceExec has one child"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let max_rows = context.session_config().batch_size().max(1);
        let input = self.input.execute(partition, context)?;
        RUNNING.fetch_add(1, Ordering::SeqCst);
        Ok(Box::pin(YieldingSliceStream {
            input,
            rows: Rows::new(max_rows),
            current: None,
            yielded: false,
            handed_at: None,
        }))
    }
}

/// The size of the next slice, adapted to the consumer's time per slice.
#[derive(Debug, Clone, Copy)]
struct Rows {
    next: usize,
    max: usize,
}

impl Rows {
    /// Up to a batch of `max` rows, starting at an eighth of one.
    fn new(max: usize) -> Self {
        Self {
            next: (max / 8).max(1),
            max,
        }
    }

    /// The consumer took `took` over a slice of `rows` rows: past the
    /// target, the next slice aims at half of it; well under, it doubles.
    fn took(&mut self, rows: usize, took: Duration) {
        if took > TARGET {
            let aimed = rows as u128 * (TARGET / 2).as_nanos() / took.as_nanos().max(1);
            self.next = usize::try_from(aimed)
                .unwrap_or(usize::MAX)
                .clamp(1, self.max);
        } else if took < TARGET / 2 && rows >= self.next {
            self.next = self.next.saturating_mul(2).min(self.max);
        }
    }
}

struct YieldingSliceStream {
    input: SendableRecordBatchStream,
    rows: Rows,
    /// A batch being handed on, and the offset of its next slice.
    current: Option<(RecordBatch, usize)>,
    /// Whether the stream returned `Pending` since its last slice.
    yielded: bool,
    /// The last slice's rows, and when it was handed on.
    handed_at: Option<(usize, Instant)>,
}

impl YieldingSliceStream {
    fn hand_on(&mut self, batch: RecordBatch, offset: usize) -> RecordBatch {
        let len = self.rows.next.min(batch.num_rows() - offset);
        let slice = batch.slice(offset, len);
        if offset + len < batch.num_rows() {
            self.current = Some((batch, offset + len));
        }
        self.yielded = false;
        self.handed_at = Some((len, Instant::now()));
        slice
    }
}

impl Stream for YieldingSliceStream {
    type Item = Result<RecordBatch>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if !this.yielded {
            if let Some((rows, at)) = this.handed_at.take() {
                this.rows.took(rows, at.elapsed());
            }
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some((batch, offset)) = this.current.take() {
            return Poll::Ready(Some(Ok(this.hand_on(batch, offset))));
        }
        match this.input.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => Poll::Ready(Some(Ok(this.hand_on(batch, 0)))),
            other => other,
        }
    }
}

impl Drop for YieldingSliceStream {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RecordBatchStream for YieldingSliceStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use std::task::Wake;

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A fast consumer gets slices that double from an eighth of a batch,
    /// in order, each after one `Pending`.
    #[test]
    fn slices_in_order_and_yields_before_each_slice() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = |from: i64, n: i64| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from_iter_values(from..from + n))],
            )
            .unwrap()
        };
        let input = MemorySourceConfig::try_new_exec(
            &[vec![batch(0, 10), batch(10, 3)]],
            Arc::clone(&schema),
            None,
        )
        .unwrap();
        let exec = YieldingSliceExec::new(input);
        let config = datafusion::prelude::SessionConfig::new().with_batch_size(16);
        let ctx = TaskContext::default().with_session_config(config);
        let mut stream = exec.execute(0, Arc::new(ctx)).unwrap();
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Arc::clone(&wakes).into();
        let mut cx = Context::from_waker(&waker);
        let (mut sizes, mut values, mut pendings) = (vec![], vec![], 0);
        loop {
            match stream.poll_next_unpin(&mut cx) {
                Poll::Pending => pendings += 1,
                Poll::Ready(Some(b)) => {
                    let b = b.unwrap();
                    sizes.push(b.num_rows());
                    values.extend(b.column(0).as_primitive::<Int64Type>().values().to_vec());
                }
                Poll::Ready(None) => break,
            }
        }
        assert_eq!(sizes, vec![2, 4, 4, 3]);
        assert_eq!(values, (0..13).collect::<Vec<_>>());
        // One before each slice and one before the end of the input.
        assert_eq!(pendings, 5);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 5);
    }

    /// A slow consumer gets smaller slices, in proportion; a fast one
    /// larger, up to the batch size.
    #[test]
    fn slices_follow_the_consumer_time() {
        let mut rows = Rows::new(8192);
        assert_eq!(rows.next, 1024);
        rows.took(1024, Duration::from_millis(60));
        assert_eq!(rows.next, 2048);
        rows.took(2048, TARGET * 3 / 4);
        assert_eq!(rows.next, 2048);
        rows.took(2048, TARGET * 4);
        assert_eq!(rows.next, 256);
        rows.took(256, TARGET * 10_000);
        assert_eq!(rows.next, 1);
        rows.next = 8000;
        rows.took(8000, Duration::ZERO);
        assert_eq!(rows.next, 8192);
        // A short slice (the end of a batch) says nothing of a larger one.
        rows.next = 2048;
        rows.took(3, Duration::ZERO);
        assert_eq!(rows.next, 2048);
    }
}
