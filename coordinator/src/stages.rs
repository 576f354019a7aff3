//! The stage table `EXPLAIN ANALYZE` adds under the plan: per stage, the
//! exchange that feeds the stage above it, its tasks, the rows and bytes
//! that crossed it, and the compute time spent in the stage's operators.
//!
//! Stages are numbered as datafusion-distributed numbers them in the plan
//! display: children before parents, in plan order.

use std::sync::Arc;
use std::time::Duration;

use comfy_table::{CellAlignment, Table, presets::ASCII_MARKDOWN};
use datafusion::physical_plan::ExecutionPlan;

/// One stage of an executed plan.
struct Stage {
    number: usize,
    exchange: &'static str,
    tasks: String,
    rows: usize,
    bytes: usize,
    compute: Duration,
}

const EXCHANGES: [(&str, &str); 3] = [
    ("NetworkShuffleExec", "shuffle"),
    ("NetworkBroadcastExec", "broadcast"),
    ("NetworkCoalesceExec", "gather"),
];

/// The kind of network exchange `node` is, if it is one. Nodes come back
/// from the metrics rewrite wrapped: go by name.
pub(crate) fn exchange(node: &Arc<dyn ExecutionPlan>) -> Option<&'static str> {
    EXCHANGES
        .iter()
        .find(|(name, _)| node.name() == *name)
        .map(|(_, kind)| *kind)
}

/// The sum of a node's metric `name` over its tasks.
pub(crate) fn metric(node: &Arc<dyn ExecutionPlan>, name: &str) -> usize {
    node.metrics().map_or(0, |m| {
        m.iter()
            .filter(|m| m.value().name() == name)
            .map(|m| m.value().as_usize())
            .sum()
    })
}

/// Compute time of the operators of one stage, not of the stages below.
fn compute_of(node: &Arc<dyn ExecutionPlan>) -> Duration {
    let own = metric(node, "elapsed_compute");
    let below: Duration = node
        .children()
        .into_iter()
        .filter(|c| exchange(c).is_none())
        .map(compute_of)
        .sum();
    Duration::from_nanos(own as u64) + below
}

fn collect(node: &Arc<dyn ExecutionPlan>, out: &mut Vec<Stage>) {
    for child in node.children() {
        collect(child, out);
    }
    let Some(kind) = exchange(node) else {
        return;
    };
    let line = datafusion::physical_plan::displayable(node.as_ref())
        .one_line()
        .to_string();
    let tasks = line
        .split("input_tasks=")
        .nth(1)
        .map(|t| t.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_default();
    out.push(Stage {
        number: out.len() + 1,
        exchange: kind,
        tasks,
        rows: metric(node, "output_rows"),
        bytes: metric(node, "bytes_transferred"),
        compute: node.children().into_iter().map(compute_of).sum(),
    });
}

fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// The stage table of an executed plan rewritten with its metrics.
pub fn summary(plan: &Arc<dyn ExecutionPlan>, rows: usize, elapsed: Duration) -> String {
    let mut stages = vec![];
    collect(plan, &mut stages);
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN);
    table.set_header(vec![
        "stage",
        "feeds the stage above by",
        "tasks",
        "rows out",
        "bytes exchanged",
        "compute ms",
    ]);
    for s in &stages {
        table.add_row(vec![
            s.number.to_string(),
            s.exchange.to_string(),
            s.tasks.clone(),
            s.rows.to_string(),
            bytes(s.bytes),
            format!("{:.1}", s.compute.as_secs_f64() * 1000.0),
        ]);
    }
    for (i, column) in table.column_iter_mut().enumerate() {
        if i != 1 {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let exchanged: usize = stages.iter().map(|s| s.bytes).sum();
    format!(
        "{table}\n{} stages, {} rows returned in {:.1} ms, {} exchanged",
        stages.len(),
        rows,
        elapsed.as_secs_f64() * 1000.0,
        bytes(exchanged)
    )
}
