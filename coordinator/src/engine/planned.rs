//! A planned statement, and running it.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::TryStreamExt;

use super::errors::name_unreachable_worker;
use crate::catalog::Catalog;
use crate::query_log::QueryRecorder;

/// A planned statement: rows already computed (DDL, DML, SHOW ...) or a
/// physical plan to run when the client asks for the rows.
pub enum Planned {
    Ready(SchemaRef, Vec<RecordBatch>),
    /// The plan, its context, the query log entry it ends in, and the
    /// catalog, whose workers are named in errors.
    Plan(
        Arc<dyn ExecutionPlan>,
        Arc<TaskContext>,
        Option<Box<QueryRecorder>>,
        Arc<Catalog>,
    ),
}

impl Planned {
    /// The query log's number of a query that streams its rows.
    pub fn query_seq(&self) -> Option<u64> {
        match self {
            Planned::Plan(_, _, Some(recorder), _) => Some(recorder.seq()),
            _ => None,
        }
    }

    pub fn schema(&self) -> SchemaRef {
        match self {
            Planned::Ready(s, _) => Arc::clone(s),
            Planned::Plan(p, ..) => p.schema(),
        }
    }

    pub fn execute(self) -> Result<SendableRecordBatchStream> {
        match self {
            Planned::Ready(schema, batches) => Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::iter(batches.into_iter().map(Ok)),
            ))),
            Planned::Plan(plan, ctx, recorder, catalog) => {
                // The context holds the query's snapshot open (see
                // `QuerySnapshot`) until the stream is dropped.
                let held = Arc::clone(&ctx);
                let stream = execute_stream(Arc::clone(&plan), ctx)
                    .map_err(|e| name_unreachable_worker(e, &catalog))?;
                let schema = stream.schema();
                let stream = Box::pin(RecordBatchStreamAdapter::new(
                    schema,
                    stream.map_err(move |e| {
                        let _ = &held;
                        name_unreachable_worker(e, &catalog)
                    }),
                ));
                Ok(match recorder {
                    Some(r) => (*r).watch(plan, stream),
                    None => stream,
                })
            }
        }
    }
}

/// The rows an INSERT reports in its `count` column; 0 for other statements.
pub fn rows_written(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .filter_map(|b| b.column_by_name("count"))
        .filter_map(|c| c.as_any().downcast_ref::<UInt64Array>())
        .map(|a| a.iter().flatten().sum::<u64>())
        .sum()
}

/// A statement with no rows to show.
pub(super) fn empty() -> Planned {
    Planned::Ready(Arc::new(Schema::empty()), vec![])
}
