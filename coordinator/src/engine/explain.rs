//! EXPLAIN and EXPLAIN ANALYZE: recognising them in the SQL text, and the
//! plans (with metrics and stages, for ANALYZE) they return as rows.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::Result;
use datafusion_distributed::{
    DistributedMetricsFormat, display_plan_ascii, rewrite_distributed_plan_with_metrics,
};
use futures::TryStreamExt;

use super::{Coordinator, Planned};

impl Coordinator {
    /// `EXPLAIN q`: the logical plan and the distributed physical plan, with
    /// stages, tasks and for every scan the partitions kept and the workers.
    pub(super) async fn explain(&self, inner: &str) -> Result<Planned> {
        let df = self.query(inner).await?;
        let logical = format!("{}", df.logical_plan().display_indent());
        let physical = df.create_physical_plan().await?;
        let distributed = display_plan_ascii(physical.as_ref(), false);
        explained(vec![
            ("logical_plan", logical),
            ("physical_plan", distributed),
        ])
    }

    /// `EXPLAIN ANALYZE`: runs the query, then shows the distributed plan
    /// with each operator's metrics and a table of its stages.
    pub(super) async fn explain_analyze(&self, inner: &str) -> Result<Planned> {
        let df = self.query(inner).await?;
        let task_ctx = Arc::new(df.task_ctx());
        let snapshot = task_ctx
            .session_config()
            .get_extension::<crate::snapshot::QuerySnapshot>()
            .map(|q| q.snapshot.to_string())
            .unwrap_or_default();
        let map = task_ctx
            .session_config()
            .options()
            .extensions
            .get::<crate::query_map::QueryMap>()
            .map_or(0, |m| m.revision());
        let plan = df.create_physical_plan().await?;
        let started = std::time::Instant::now();
        let catalog = Arc::clone(&self.catalog);
        let mut stream = Planned::Plan(Arc::clone(&plan), task_ctx, None, catalog).execute()?;
        let mut rows = 0usize;
        while let Some(batch) = stream.try_next().await? {
            rows += batch.num_rows();
        }
        let elapsed = started.elapsed();
        drop(stream);
        let plan =
            rewrite_distributed_plan_with_metrics(plan, DistributedMetricsFormat::Aggregated)
                .await?;
        let text = display_plan_ascii(plan.as_ref(), true);
        let mut summary = format!(
            "{}\nSnapshot: {snapshot}; partition map at catalog revision {map}",
            crate::stages::summary(&plan, rows, elapsed)
        );
        let run = crate::query_log::current_caller().run;
        if run > 1 {
            summary.push_str(&format!(
                "\nRun: {run} (run again on a fresh plan: a worker failed during the run before)"
            ));
        }
        explained(vec![("Plan with Metrics", text), ("Stages", summary)])
    }
}

/// The query of an `EXPLAIN ANALYZE <query>` (not VERBOSE or FORMAT).
pub(super) fn strip_explain_analyze(sql: &str) -> Option<&str> {
    let mut words = sql.splitn(3, char::is_whitespace);
    let (explain, analyze, rest) = (words.next()?, words.next()?, words.next()?);
    if !explain.eq_ignore_ascii_case("explain") || !analyze.eq_ignore_ascii_case("analyze") {
        return None;
    }
    let rest = rest.trim_start();
    let next = rest.split_whitespace().next().unwrap_or("");
    if next.eq_ignore_ascii_case("verbose") || next.eq_ignore_ascii_case("format") {
        return None;
    }
    Some(rest)
}

pub(super) fn strip_explain(sql: &str) -> Option<&str> {
    let head = sql.get(..8)?;
    if !head.eq_ignore_ascii_case("explain ") {
        return None;
    }
    let rest = sql[8..].trim_start();
    let next = rest
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    // EXPLAIN ANALYZE / VERBOSE / FORMAT are DataFusion's own.
    if matches!(next.as_str(), "ANALYZE" | "VERBOSE" | "FORMAT") {
        return None;
    }
    Some(rest)
}

/// An EXPLAIN result: one (plan_type, plan) row per part.
fn explained(parts: Vec<(&str, String)>) -> Result<Planned> {
    let schema = explain_schema();
    let (kinds, plans): (Vec<&str>, Vec<String>) = parts.into_iter().unzip();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(kinds)),
            Arc::new(StringArray::from(plans)),
        ],
    )?;
    Ok(Planned::Ready(schema, vec![batch]))
}

pub(super) fn explain_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("plan_type", DataType::Utf8, false),
        Field::new("plan", DataType::Utf8, false),
    ]))
}
