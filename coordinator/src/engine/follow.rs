//! What a coordinator that follows the leader runs itself, and what it
//! passes to the leader (see [`crate::follow`]).

use datafusion::common::Result;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{ObjectType, Set, Statement as SqlStatement};
use tessera_sql::Statement;

use super::{Coordinator, ParamRow, Planned};
use crate::follow::Follower;

/// Where a follower runs a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Reads only: planned and run here.
    Here,
    /// Has effects: run by the leader.
    Leader,
    /// A switch of the leader's background work (`SET
    /// tessera.index_apply`, `tessera.compaction`, `tessera.rebalance_rate`,
    /// `tessera.auto_rebalance`): set on both.
    Both,
}

/// Whether `text` (an option's name, or a RESET of one) names one of
/// the switches of background work, which only the leader runs
/// ([`super::switches::SWITCHES`]), quoted or not.
fn is_leader_switch(text: &str) -> bool {
    let plain: String = text
        .chars()
        .filter(|c| !matches!(c, '"' | '`' | '\''))
        .collect::<String>()
        .to_ascii_lowercase();
    super::switches::SWITCHES
        .iter()
        .any(|s| plain.contains(&format!("tessera.{s}")))
}

pub(super) fn route(statement: &Statement) -> Route {
    match statement {
        Statement::ShowTables
        | Statement::ShowPartitions { .. }
        | Statement::Describe { .. }
        | Statement::ShowIndexes { .. }
        | Statement::ShowUsers
        // A query is cancelled where it runs.
        | Statement::CancelQuery { .. } => Route::Here,
        // The leader hears the heartbeats: its SHOW WORKERS is exact.
        Statement::ShowWorkers
        // Files on the leader's machine, into a table (a write).
        | Statement::CopyFrom { .. }
        | Statement::CreateTable(_)
        | Statement::DropTable { .. }
        | Statement::CreateIndex(_)
        | Statement::DropIndex { .. }
        | Statement::Compact { .. }
        | Statement::SetReplicas { .. }
        | Statement::SplitPartition { .. }
        | Statement::MergePartitions { .. }
        | Statement::SetRebalance { .. }
        | Statement::AlterWorker { .. }
        // The leader runs the rebalance and knows its steps.
        | Statement::ExplainRebalance { .. }
        | Statement::RebalanceApply { .. }
        | Statement::ShowRebalance
        | Statement::RebalanceCancel
        | Statement::CreateUser { .. }
        | Statement::AlterUser { .. }
        | Statement::DropUser { .. }
        | Statement::Grant { .. } => Route::Leader,
        Statement::Sql(sql) => route_sql(sql),
    }
}

/// Queries, EXPLAIN, SET and COPY ... TO run here; everything else (DML,
/// DDL, EXPLAIN ANALYZE of a write) on the leader. A statement that does
/// not parse runs here, where it fails with the parser's error.
fn route_sql(sql: &str) -> Route {
    let Ok(mut statements) = DFParser::parse_sql(sql) else {
        return Route::Here;
    };
    match statements.pop_front() {
        Some(statement) => route_df(&statement),
        None => Route::Here,
    }
}

fn route_df(statement: &DfStatement) -> Route {
    match statement {
        DfStatement::Statement(s) => route_ast(s),
        DfStatement::Explain(e) if e.options.analyze => match route_df(&e.statement) {
            Route::Here => Route::Here,
            _ => Route::Leader,
        },
        DfStatement::Reset(reset) => {
            if is_leader_switch(&reset.to_string()) {
                Route::Both
            } else {
                Route::Here
            }
        }
        DfStatement::Explain(_) | DfStatement::CopyTo(_) => Route::Here,
        DfStatement::CreateExternalTable(_) => Route::Leader,
    }
}

fn route_ast(statement: &SqlStatement) -> Route {
    match statement {
        SqlStatement::Query(_)
        | SqlStatement::ShowVariable { .. }
        | SqlStatement::ShowVariables { .. }
        | SqlStatement::ShowTables { .. }
        | SqlStatement::ShowColumns { .. }
        | SqlStatement::ShowFunctions { .. }
        | SqlStatement::ExplainTable { .. }
        // Views live in the session of the coordinator that made them.
        | SqlStatement::CreateView { .. } => Route::Here,
        SqlStatement::Drop {
            object_type: ObjectType::View,
            ..
        } => Route::Here,
        SqlStatement::Explain {
            analyze, statement, ..
        } => match (analyze, route_ast(statement)) {
            (true, Route::Leader | Route::Both) => Route::Leader,
            _ => Route::Here,
        },
        SqlStatement::Set(set) => {
            let names: Vec<String> = match set {
                Set::SingleAssignment { variable, .. } => vec![variable.to_string()],
                Set::ParenthesizedAssignments { variables, .. } => {
                    variables.iter().map(|v| v.to_string()).collect()
                }
                Set::MultipleAssignments { assignments } => {
                    assignments.iter().map(|a| a.name.to_string()).collect()
                }
                _ => vec![],
            };
            if names.iter().any(|n| is_leader_switch(n)) {
                Route::Both
            } else {
                Route::Here
            }
        }
        _ => Route::Leader,
    }
}

impl Coordinator {
    /// The leader this coordinator follows, if it does not lead.
    pub fn follower(&self) -> Option<&std::sync::Arc<Follower>> {
        self.catalog.follower()
    }

    /// On a follower, plans `sql` (parsed as `statement`): passed to the
    /// leader if it has effects, otherwise planned here at a snapshot the
    /// leader hands out.
    pub(super) async fn plan_following(
        &self,
        follower: &Follower,
        sql: &str,
        statement: Statement,
        rows: &[ParamRow],
    ) -> Result<Planned> {
        let route = route(&statement);
        if route != Route::Here {
            let (schema, batches) = if rows.is_empty() {
                follower.forward(sql).await?
            } else {
                follower.forward_prepared(sql, rows).await?
            };
            if route == Route::Leader {
                return Ok(Planned::Ready(schema, batches));
            }
        }
        let taken = crate::snapshot::take(&self.catalog).await?;
        self.sync_external_tables().await;
        crate::snapshot::with_snapshot(taken, self.plan_parsed(statement, rows)).await
    }

    /// Registers here the external tables the leader created, and drops
    /// those it dropped.
    pub(super) async fn sync_external_tables(&self) {
        let Ok(external) = self.catalog.external_table_sql() else {
            return;
        };
        let here = self.catalog.external_names().unwrap_or_default();
        for name in &here {
            if !external.contains_key(name) && !name.starts_with("__load_") {
                let _ = self.catalog.set_external(name, None);
            }
        }
        for (name, sql) in &external {
            if !here.contains(name)
                && let Err(e) = self.ctx().sql(sql).await
            {
                tracing::warn!(table = %name, error = %e, "external table could not be opened here");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_run_here_and_writes_on_the_leader() {
        for sql in [
            "SELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "EXPLAIN SELECT * FROM t",
            "EXPLAIN ANALYZE SELECT * FROM t",
            "SET tessera.ansi = false",
            "SHOW tessera.ansi",
            "COPY (SELECT 1) TO '/tmp/x.parquet'",
            "CREATE VIEW v AS SELECT 1",
            "DROP VIEW v",
            "RESET tessera.ansi",
            "not sql at all",
        ] {
            assert_eq!(route_sql(sql), Route::Here, "{sql}");
        }
        for sql in [
            "INSERT INTO t VALUES (1)",
            "DELETE FROM t",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            "CREATE EXTERNAL TABLE e STORED AS PARQUET LOCATION '/tmp/e'",
            "DROP TABLE t",
        ] {
            assert_eq!(route_sql(sql), Route::Leader, "{sql}");
        }
        assert_eq!(route_sql("SET tessera.compaction = 'paused'"), Route::Both);
        assert_eq!(
            route_sql("SET tessera.index_apply = 'running'"),
            Route::Both
        );
    }
}
