//! The record of the running (or last) rebalance's steps, which `SHOW
//! REBALANCE` lists and `REBALANCE CANCEL` stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};

use super::Step;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum State {
    Pending,
    Running,
    Done,
    Skipped(String),
    Failed(String),
    Cancelled,
}

impl State {
    pub(super) fn label(&self) -> String {
        match self {
            State::Pending => "pending".into(),
            State::Running => "running".into(),
            State::Done => "done".into(),
            State::Skipped(why) => format!("skipped: {why}"),
            State::Failed(why) => format!("failed: {why}"),
            State::Cancelled => "cancelled".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Record {
    pub(super) step: Step,
    pub(super) state: State,
    pub(super) bytes_copied: u64,
    pub(super) seconds: f64,
}

/// The steps of the running (or last) rebalance.
#[derive(Debug, Default)]
pub struct RebalanceLog {
    pub(super) steps: Mutex<Vec<Record>>,
    pub(super) running: AtomicBool,
    pub(super) cancel: AtomicBool,
}

impl RebalanceLog {
    /// Whether a rebalance is running.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Whether the last rebalance, finished, left a step failed.
    pub fn last_failed(&self) -> bool {
        !self.is_running()
            && self
                .steps
                .lock()
                .is_ok_and(|steps| steps.iter().any(|r| matches!(r.state, State::Failed(_))))
    }

    /// Stops the running rebalance after its running step; whether one ran.
    pub fn cancel(&self) -> bool {
        let running = self.running.load(Ordering::SeqCst);
        if running {
            self.cancel.store(true, Ordering::SeqCst);
        }
        running
    }

    pub(super) fn set(&self, i: usize, f: impl FnOnce(&mut Record)) {
        if let Ok(mut steps) = self.steps.lock()
            && let Some(r) = steps.get_mut(i)
        {
            f(r);
        }
    }

    /// `SHOW REBALANCE`: one row per step.
    pub fn show(&self) -> Result<RecordBatch> {
        let steps = self
            .steps
            .lock()
            .map_err(|_| DataFusionError::Internal("rebalance log poisoned".into()))?
            .clone();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from_iter_values(1..=steps.len() as u32)),
            Arc::new(StringArray::from_iter_values(
                steps.iter().map(|r| &r.step.table),
            )),
            Arc::new(UInt32Array::from_iter_values(
                steps.iter().map(|r| r.step.partition),
            )),
            Arc::new(StringArray::from_iter_values(
                steps.iter().map(|r| r.step.operation.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                steps.iter().map(|r| &r.step.from),
            )),
            Arc::new(StringArray::from_iter(
                steps.iter().map(|r| r.step.to.as_deref()),
            )),
            Arc::new(UInt32Array::from_iter(steps.iter().map(|r| r.step.with))),
            Arc::new(StringArray::from_iter(
                steps.iter().map(|r| r.step.new_partitions()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                steps.iter().map(|r| r.step.bytes),
            )),
            Arc::new(StringArray::from_iter_values(
                steps.iter().map(|r| r.state.label()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                steps.iter().map(|r| r.bytes_copied),
            )),
            Arc::new(Float64Array::from_iter_values(
                steps.iter().map(|r| r.seconds),
            )),
        ];
        Ok(RecordBatch::try_new(show_schema(), columns)?)
    }
}

pub fn show_schema() -> SchemaRef {
    let field = |n: &str, t: DataType, null: bool| Field::new(n, t, null);
    Arc::new(Schema::new(vec![
        field("step", DataType::UInt32, false),
        field("table_name", DataType::Utf8, false),
        field("partition", DataType::UInt32, false),
        field("operation", DataType::Utf8, false),
        field("from_worker", DataType::Utf8, false),
        field("to_worker", DataType::Utf8, true),
        field("with_partition", DataType::UInt32, true),
        field("new_partitions", DataType::Utf8, true),
        field("bytes", DataType::UInt64, false),
        field("state", DataType::Utf8, false),
        field("bytes_copied", DataType::UInt64, false),
        field("seconds", DataType::Float64, false),
    ]))
}
