//! What a statement is before it runs: whether it only reads (and may be
//! run again after a worker failure) and the schema of its rows.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::logical_expr::LogicalPlan;
use tessera_sql::{Statement, parse_statement};

use super::Coordinator;
use super::ddl::show_tessera_option;
use super::errors::with_hint;
use super::explain::{explain_schema, strip_explain};

impl Coordinator {
    /// Whether `sql` only reads: a query (or EXPLAIN) DataFusion plans,
    /// which may be run again without changing anything.
    pub async fn is_read_only(&self, sql: &str) -> bool {
        let Ok(Statement::Sql(sql)) = parse_statement(sql) else {
            return false;
        };
        use datafusion::common::tree_node::TreeNode;
        // EXPLAIN ANALYZE runs what it explains: look inside.
        match self.ctx().state().create_logical_plan(&sql).await {
            Ok(plan) => !plan
                .exists(|p| {
                    Ok(matches!(
                        p,
                        LogicalPlan::Dml(_) | LogicalPlan::Ddl(_) | LogicalPlan::Statement(_)
                    ))
                })
                .unwrap_or(true),
            Err(_) => false,
        }
    }

    /// The schema of the rows a statement returns, without running it;
    /// `None` for statements that return no rows of their own (DDL, DML).
    pub async fn result_schema(&self, sql: &str) -> Result<Option<SchemaRef>> {
        if self.catalog.follower().is_some() {
            // Plan against the catalog as the leader has it.
            self.catalog.current_snapshot().await?;
        }
        match parse_statement(sql)? {
            Statement::CreateTable(_)
            | Statement::DropTable { .. }
            | Statement::CreateIndex(_)
            | Statement::AlterWorker { .. }
            | Statement::CreateUser { .. }
            | Statement::AlterUser { .. }
            | Statement::DropUser { .. }
            | Statement::Grant { .. }
            | Statement::CancelQuery { .. }
            | Statement::CopyFrom { .. }
            | Statement::RebalanceCancel
            | Statement::DropIndex { .. } => Ok(None),
            Statement::ShowRebalance => Ok(Some(crate::rebalance::show_schema())),
            // Planned, not applied: the same columns.
            Statement::RebalanceApply { table } => {
                Ok(Some(self.explain_rebalance(table.as_deref())?.schema()))
            }
            Statement::ExplainRebalance { .. }
            | Statement::ShowWorkers
            | Statement::ShowUsers
            | Statement::ShowTables
            | Statement::ShowIndexes { .. }
            | Statement::ShowPartitions { .. }
            | Statement::Describe { .. } => Ok(Some(self.plan(sql).await?.schema())),
            Statement::Compact { .. } => Ok(Some(crate::compact::report_schema())),
            Statement::SetReplicas { .. }
            | Statement::SplitPartition { .. }
            | Statement::MergePartitions { .. }
            | Statement::SetRebalance { .. } => Ok(None),
            Statement::Sql(sql) => {
                if strip_explain(sql.trim_start()).is_some() {
                    return Ok(Some(explain_schema()));
                }
                if let Some(name) = show_tessera_option(&sql) {
                    return Ok(Some(self.show_options(&name)?.schema()));
                }
                let state = self.ctx().state();
                let plan = state
                    .create_logical_plan(&sql)
                    .await
                    .map_err(|e| with_hint(e, &state, &sql))?;
                Ok(match plan {
                    LogicalPlan::Dml(_) | LogicalPlan::Ddl(_) | LogicalPlan::Statement(_) => None,
                    other => Some(Arc::new(other.schema().as_arrow().clone())),
                })
            }
        }
    }
}
