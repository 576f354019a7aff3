//! `EXPLAIN REBALANCE [t]`, `REBALANCE APPLY [t]`, `SHOW REBALANCE` and
//! `REBALANCE CANCEL` (see [`crate::rebalance`]).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray, UInt32Array, UInt64Array};
use datafusion::common::Result;

use super::ddl::ready_with_nulls;
use super::{Coordinator, Planned};
use crate::rebalance::Plan;
use tessera_sql::Strategy;

/// The copy rate a plan's time estimate assumes, bytes a second, unless
/// `tessera.rebalance_rate` is lower.
const ESTIMATED_RATE: f64 = 100e6;
/// What each step costs besides copying (catch-up round, switch).
const STEP_OVERHEAD_S: f64 = 0.5;

impl Coordinator {
    fn rebalance_plan(&self, table: Option<&str>) -> Result<Plan> {
        if let Some(t) = table
            && self.catalog.table_def(t)?.is_none()
        {
            return Err(crate::catalog::no_such_table(t));
        }
        Ok(crate::rebalance::plan(
            &self.catalog.state()?,
            &crate::rebalance::roles(&self.catalog)?,
            table,
            &self.rebalancer.held,
        ))
    }

    /// The copy rate a plan's time estimate assumes: 100 MB/s, or
    /// `tessera.rebalance_rate` when lower.
    fn copy_rate(&self) -> f64 {
        match self.rebalancer.copy_rate.get() {
            0 => ESTIMATED_RATE,
            limit => ESTIMATED_RATE.min(limit as f64),
        }
    }

    /// `ALTER TABLE t SET REBALANCE ...`: the table's strategy from now on
    /// (the next plan follows it; nothing moves now).
    pub(super) async fn set_rebalance(&self, table: &str, strategy: Strategy) -> Result<Planned> {
        let Some(def) = self.catalog.table_def(table)? else {
            return Err(crate::catalog::no_such_table(table));
        };
        strategy.check(&def.name, &def.scheme)?;
        let name = def.name.clone();
        self.catalog
            .update(|s| match s.tables.get_mut(&name) {
                Some(t) if t.id == def.id => {
                    t.rebalance = strategy;
                    Ok(())
                }
                _ => Err(crate::catalog::no_such_table(&name)),
            })
            .await?;
        self.rebalancer.wake();
        Ok(super::planned::empty())
    }

    pub(super) fn explain_rebalance(&self, table: Option<&str>) -> Result<Planned> {
        plan_rows(&self.rebalance_plan(table)?, self.copy_rate())
    }

    /// Starts the plan in the background and returns it.
    pub(super) fn rebalance_apply(&self, table: Option<&str>) -> Result<Planned> {
        let plan = self.rebalance_plan(table)?;
        crate::rebalance::apply(&self.catalog, &self.rebalancer, plan.steps.clone())?;
        plan_rows(&plan, self.copy_rate())
    }

    pub(super) fn show_rebalance(&self) -> Result<Planned> {
        let batch = self.rebalancer.log.show()?;
        Ok(Planned::Ready(batch.schema(), vec![batch]))
    }

    pub(super) fn rebalance_cancel(&self) -> Result<Planned> {
        if !self.rebalancer.log.cancel() {
            return Err(tessera_worker::ErrorKind::FailedPrecondition
                .error("no rebalance is running (SHOW REBALANCE shows the last one)"));
        }
        Ok(super::planned::empty())
    }
}

/// One row per step, then a `total` row with the bytes moved, the skew
/// before and after and the bytes moved over the optimum.
fn plan_rows(plan: &Plan, rate: f64) -> Result<Planned> {
    let n = plan.steps.len();
    let seconds = |bytes: u64| bytes as f64 / rate + STEP_OVERHEAD_S;
    let total_seconds: f64 = plan.steps.iter().map(|s| seconds(s.bytes)).sum();
    let moved = plan.moved_bytes();
    let mut step: Vec<Option<u32>> = (1..=n as u32).map(Some).collect();
    step.push(None);
    let mut table: Vec<&str> = plan.steps.iter().map(|s| s.table.as_str()).collect();
    table.push("");
    let mut partition: Vec<Option<u32>> = plan.steps.iter().map(|s| Some(s.partition)).collect();
    partition.push(None);
    let mut operation: Vec<&str> = plan.steps.iter().map(|s| s.operation.as_str()).collect();
    operation.push("total");
    let mut bytes: Vec<u64> = plan.steps.iter().map(|s| s.bytes).collect();
    bytes.push(moved);
    let mut from: Vec<Option<&str>> = plan.steps.iter().map(|s| Some(s.from.as_str())).collect();
    from.push(None);
    let mut to: Vec<Option<&str>> = plan.steps.iter().map(|s| s.to.as_deref()).collect();
    to.push(None);
    let mut with: Vec<Option<u32>> = plan.steps.iter().map(|s| s.with).collect();
    with.push(None);
    let mut makes: Vec<Option<String>> = plan.steps.iter().map(|s| s.new_partitions()).collect();
    makes.push(None);
    let mut est: Vec<f64> = plan.steps.iter().map(|s| seconds(s.bytes)).collect();
    est.push(total_seconds);
    let only_total = |v: f64| -> Vec<Option<f64>> {
        let mut out = vec![None; n];
        out.push(Some((v * 1000.0).round() / 1000.0));
        out
    };
    let ratio = if plan.optimum_bytes == 0 {
        None
    } else {
        Some(moved as f64 / plan.optimum_bytes as f64)
    };
    let mut optimum: Vec<Option<u64>> = vec![None; n];
    optimum.push(Some(plan.optimum_bytes));
    let mut vs: Vec<Option<f64>> = vec![None; n];
    vs.push(ratio.map(|r| (r * 1000.0).round() / 1000.0));
    ready_with_nulls(
        vec![
            ("step", Arc::new(UInt32Array::from(step)) as ArrayRef),
            ("table_name", Arc::new(StringArray::from(table))),
            ("partition", Arc::new(UInt32Array::from(partition))),
            ("operation", Arc::new(StringArray::from(operation))),
            ("bytes", Arc::new(UInt64Array::from(bytes))),
            ("from_worker", Arc::new(StringArray::from(from))),
            ("to_worker", Arc::new(StringArray::from(to))),
            ("with_partition", Arc::new(UInt32Array::from(with))),
            ("new_partitions", Arc::new(StringArray::from(makes))),
            ("est_seconds", Arc::new(Float64Array::from(est))),
            (
                "skew_bytes_before",
                Arc::new(Float64Array::from(only_total(plan.before.bytes))),
            ),
            (
                "skew_bytes_after",
                Arc::new(Float64Array::from(only_total(plan.after.bytes))),
            ),
            (
                "skew_partitions_before",
                Arc::new(Float64Array::from(only_total(plan.before.partitions))),
            ),
            (
                "skew_partitions_after",
                Arc::new(Float64Array::from(only_total(plan.after.partitions))),
            ),
            ("optimum_bytes", Arc::new(UInt64Array::from(optimum))),
            ("moved_vs_optimum", Arc::new(Float64Array::from(vs))),
        ],
        &[
            "step",
            "partition",
            "from_worker",
            "to_worker",
            "with_partition",
            "new_partitions",
            "skew_bytes_before",
            "skew_bytes_after",
            "skew_partitions_before",
            "skew_partitions_after",
            "optimum_bytes",
            "moved_vs_optimum",
        ],
    )
}
