//! INSERTs of rows written out in the statement (`INSERT INTO t VALUES
//! (...), ...`) are planned without the optimizers: there is no scan to
//! prune, join to order or stage to distribute, and for a single-row INSERT
//! the logical and physical optimizer passes and the distributed planner
//! cost more than the write. The analyzer still runs (type coercion, ANSI
//! arithmetic), so the rows are cast and checked exactly as before. Rows
//! that call a function take the optimized path.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProviderList, Session};
use datafusion::common::config::TableOptions;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, DataFusionError, Result};
use datafusion::execution::config::SessionConfig;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SessionState, TaskContext};
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::registry::ExtensionTypeRegistryRef;
use datafusion::logical_expr::{
    AggregateUDF, Expr, HigherOrderUDF, LogicalPlan, ScalarUDF, WindowUDF,
};
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use tessera_worker::ErrorKind;

/// Whether `input` (an INSERT's source) is rows written out in the
/// statement: VALUES, projected or aliased, and no subquery anywhere.
pub(super) fn is_literal_rows(input: &LogicalPlan) -> bool {
    let mut literal = true;
    let _ = input.apply(|node| {
        let plain = matches!(
            node,
            LogicalPlan::Values(_) | LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_)
        ) && node.expressions().iter().all(|e| !needs_optimizer(e));
        if plain {
            Ok(TreeNodeRecursion::Continue)
        } else {
            literal = false;
            Ok(TreeNodeRecursion::Stop)
        }
    });
    literal
}

/// Whether `e` holds what the physical planner cannot plan unoptimized: a
/// subquery, or a function call (some, as `now()` and `coalesce`, must be
/// rewritten by the optimizer's simplification first).
fn needs_optimizer(e: &Expr) -> bool {
    e.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarFunction(_)
                | Expr::AggregateFunction(_)
                | Expr::WindowFunction(_)
                | Expr::ScalarSubquery(_)
                | Expr::Exists(_)
                | Expr::InSubquery(_)
                | Expr::SetComparison(_)
                | Expr::OuterReferenceColumn(..)
        ))
    })
    .unwrap_or(true)
}

/// Plans `plan` (an INSERT of literal rows) in `state`: analyzed (type
/// coercion, ANSI arithmetic), then DataFusion's default physical planner
/// with no optimizer pass, logical or physical.
pub(super) async fn plan_unoptimized(
    state: SessionState,
    plan: &LogicalPlan,
) -> Result<(Arc<dyn ExecutionPlan>, Arc<TaskContext>)> {
    let session = Unoptimized(state);
    let physical = session.create_physical_plan(plan).await?;
    Ok((physical, session.task_ctx()))
}

/// Names the column in DataFusion's error for a NULL written out in VALUES
/// for a NOT NULL column (which names the VALUES column, `column2`, not
/// the table's).
pub(super) fn name_null_column(e: DataFusionError, input: &LogicalPlan) -> DataFusionError {
    let text = e.to_string();
    if !text.contains("is declared as non-nullable but contains null values") {
        return e;
    }
    let Some(column) = text
        .split("Column '")
        .nth(1)
        .and_then(|r| r.split('\'').next())
    else {
        return e;
    };
    let named = match input {
        LogicalPlan::Projection(p) => p.expr.iter().find_map(|expr| match expr {
            Expr::Alias(a) if a.expr.column_refs().iter().any(|c| c.name == column) => {
                Some(a.name.clone())
            }
            _ => None,
        }),
        _ => None,
    };
    let name = named.as_deref().unwrap_or(column);
    ErrorKind::InvalidArgument.error(format!(
        "NULL in column '{name}', which is NOT NULL: give it a value or leave such rows out; \
         nothing was written"
    ))
}

/// Whether each input of `plan` (the INSERT's sink) is one stream: a sink
/// writes its input's first stream only, and the optimizers that would
/// merge several did not run.
pub(super) fn reads_one_stream(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.children()
        .iter()
        .all(|c| c.properties().output_partitioning().partition_count() == 1)
}

/// A session as `0` is, with no optimizer rules.
struct Unoptimized(SessionState);

#[async_trait]
impl Session for Unoptimized {
    fn session_id(&self) -> &str {
        self.0.session_id()
    }
    fn config(&self) -> &SessionConfig {
        self.0.config()
    }
    fn catalog_list(&self) -> Arc<dyn CatalogProviderList> {
        Arc::clone(self.0.catalog_list())
    }
    fn optimize(&self, plan: &LogicalPlan) -> Result<LogicalPlan> {
        self.0
            .analyzer()
            .execute_and_check(plan.clone(), self.0.config_options(), |_, _| {})
    }
    async fn create_physical_plan(&self, plan: &LogicalPlan) -> Result<Arc<dyn ExecutionPlan>> {
        let analyzed = self.optimize(plan)?;
        DefaultPhysicalPlanner::default()
            .create_physical_plan(&analyzed, self)
            .await
    }
    fn create_physical_expr(&self, expr: Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        Session::create_physical_expr(&self.0, expr, schema)
    }
    fn scalar_functions(&self) -> &HashMap<String, Arc<ScalarUDF>> {
        Session::scalar_functions(&self.0)
    }
    fn higher_order_functions(&self) -> &HashMap<String, Arc<HigherOrderUDF>> {
        Session::higher_order_functions(&self.0)
    }
    fn aggregate_functions(&self) -> &HashMap<String, Arc<AggregateUDF>> {
        Session::aggregate_functions(&self.0)
    }
    fn window_functions(&self) -> &HashMap<String, Arc<WindowUDF>> {
        Session::window_functions(&self.0)
    }
    fn extension_type_registry(&self) -> &ExtensionTypeRegistryRef {
        Session::extension_type_registry(&self.0)
    }
    fn runtime_env(&self) -> &Arc<RuntimeEnv> {
        self.0.runtime_env()
    }
    fn execution_props(&self) -> &ExecutionProps {
        self.0.execution_props()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn table_options(&self) -> &TableOptions {
        self.0.table_options()
    }
    fn table_options_mut(&mut self) -> &mut TableOptions {
        self.0.table_options_mut()
    }
    fn task_ctx(&self) -> Arc<TaskContext> {
        self.0.task_ctx()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;

    use super::*;

    async fn input_of(ctx: &SessionContext, sql: &str) -> LogicalPlan {
        match ctx.state().create_logical_plan(sql).await.unwrap() {
            LogicalPlan::Dml(dml) => dml.input.as_ref().clone(),
            other => panic!("not an INSERT: {other}"),
        }
    }

    #[tokio::test]
    async fn only_rows_written_out_skip_the_optimizers() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t (a BIGINT, b VARCHAR)")
            .await
            .unwrap();
        let literal = [
            "INSERT INTO t VALUES (1, 'x')",
            "INSERT INTO t VALUES (1, 'x'), (-2, NULL), (3 + 4, 'y' || 'z')",
            "INSERT INTO t (b, a) VALUES ('x', CAST('5' AS BIGINT))",
        ];
        for sql in literal {
            assert!(is_literal_rows(&input_of(&ctx, sql).await), "{sql}");
        }
        let not = [
            "INSERT INTO t SELECT * FROM t",
            "INSERT INTO t VALUES ((SELECT max(a) FROM t), 'x')",
            "INSERT INTO t VALUES (1, 'x') UNION ALL VALUES (2, 'y')",
            "INSERT INTO t SELECT value, 'x' FROM range(3)",
            "INSERT INTO t VALUES (1, upper('y'))",
            "INSERT INTO t VALUES (1, CAST(now() AS VARCHAR))",
            "INSERT INTO t VALUES (coalesce(NULL, 1), 'x')",
        ];
        for sql in not {
            assert!(!is_literal_rows(&input_of(&ctx, sql).await), "{sql}");
        }
    }

    /// Planned without the optimizers, the rows are cast and written as
    /// with them.
    #[tokio::test]
    async fn unoptimized_plans_write_the_same_rows() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t (a BIGINT, b VARCHAR, c DATE)")
            .await
            .unwrap();
        let sql = "INSERT INTO t VALUES (1, 'x', '2024-02-29'), (2 * 3, NULL, NULL), (-7, 'z', \
                   DATE '2000-01-01')";
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        let (physical, task) = plan_unoptimized(ctx.state(), &plan).await.unwrap();
        assert!(reads_one_stream(&physical));
        datafusion::physical_plan::collect(physical, task)
            .await
            .unwrap();
        let rows = ctx
            .sql("SELECT a, b, CAST(c AS VARCHAR) AS c FROM t ORDER BY a")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = pretty_format_batches(&rows).unwrap().to_string();
        assert_eq!(
            text,
            "+----+---+------------+\n\
             | a  | b | c          |\n\
             +----+---+------------+\n\
             | -7 | z | 2000-01-01 |\n\
             | 1  | x | 2024-02-29 |\n\
             | 6  |   |            |\n\
             +----+---+------------+"
        );
        let bad = "INSERT INTO t VALUES ('not a number', 'x', NULL)";
        let plan = ctx.state().create_logical_plan(bad).await.unwrap();
        let physical = plan_unoptimized(ctx.state(), &plan).await;
        let failed = match physical {
            Ok((p, task)) => datafusion::physical_plan::collect(p, task).await.is_err(),
            Err(_) => true,
        };
        assert!(failed, "a value that does not cast must fail the INSERT");
    }

    #[tokio::test]
    async fn a_null_for_a_not_null_column_is_named() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t (a BIGINT NOT NULL, b BIGINT NOT NULL)")
            .await
            .unwrap();
        for (sql, column) in [
            ("INSERT INTO t VALUES (1, 2), (3, NULL)", "b"),
            ("INSERT INTO t (b, a) VALUES (NULL, 1)", "b"),
            ("INSERT INTO t (b, a) VALUES (1, NULL)", "a"),
        ] {
            let plan = ctx.state().create_logical_plan(sql).await.unwrap();
            let LogicalPlan::Dml(dml) = &plan else {
                panic!("{plan}")
            };
            let e = plan_unoptimized(ctx.state(), &plan).await.unwrap_err();
            let e = name_null_column(e, &dml.input).to_string();
            assert!(
                e.contains(&format!("NULL in column '{column}', which is NOT NULL")),
                "{sql}: {e}"
            );
        }
    }
}
