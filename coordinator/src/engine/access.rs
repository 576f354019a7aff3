//! What a user of role reader may run: statements that only read, as the
//! caller's own session would plan them (its SQL dialect and limits), so
//! that nothing a reader writes is classified one way and run another.

use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::{LogicalPlan, Statement as DfStatement};
use tessera_sql::{Statement, parse_statement};

use super::Coordinator;
use super::ddl::show_tessera_option;
use super::explain::{strip_explain, strip_explain_analyze};

/// Whether a reader may set (or reset) `variable`: not the cluster's
/// background-work switches, nor where the server spills or how much
/// memory it may take.
fn reader_may_set(variable: &str) -> bool {
    let v = variable.trim_matches('"').to_ascii_lowercase();
    let switch = v
        .strip_prefix("tessera.")
        .is_some_and(|n| super::switches::SWITCHES.contains(&n));
    !(switch || v.starts_with("datafusion.runtime."))
}

impl Coordinator {
    /// Whether a reader may run `sql` (in the session it would run in).
    pub async fn reader_may_run(&self, sql: &str) -> bool {
        match parse_statement(sql) {
            Ok(
                Statement::ShowTables
                | Statement::ShowPartitions { .. }
                | Statement::Describe { .. }
                | Statement::ShowIndexes { .. }
                | Statement::ShowWorkers
                | Statement::ExplainRebalance { .. }
                | Statement::ShowRebalance
                // Its own queries only (checked when it cancels).
                | Statement::CancelQuery { .. },
            ) => true,
            Ok(Statement::Sql(sql)) => Box::pin(self.sql_only_reads(&sql)).await,
            // Anything else changes something; what does not parse may not run.
            _ => false,
        }
    }

    async fn sql_only_reads(&self, sql: &str) -> bool {
        let trimmed = sql.trim_start();
        if show_tessera_option(trimmed).is_some() {
            return true;
        }
        // EXPLAIN ANALYZE runs what it explains.
        if let Some(inner) = strip_explain(trimmed).or_else(|| strip_explain_analyze(trimmed)) {
            return Box::pin(self.sql_only_reads(inner)).await;
        }
        let Ok(plan) = self.ctx().state().create_logical_plan(sql).await else {
            return false;
        };
        // Files on the server are for admins, as CREATE EXTERNAL TABLE is.
        if crate::file_functions::reads_files(&plan).is_some() {
            return false;
        }
        let writes = plan.exists(|p| {
            Ok(match p {
                LogicalPlan::Dml(_) | LogicalPlan::Ddl(_) | LogicalPlan::Copy(_) => true,
                LogicalPlan::Statement(DfStatement::SetVariable(v)) => !reader_may_set(&v.variable),
                LogicalPlan::Statement(DfStatement::ResetVariable(v)) => {
                    !reader_may_set(&v.variable)
                }
                LogicalPlan::Statement(_) => true,
                _ => false,
            })
        });
        !writes.unwrap_or(true)
    }
}
