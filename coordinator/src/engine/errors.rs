//! Planning and execution errors made actionable: hints on unknown names,
//! and the worker behind a failed connection.

use std::collections::BTreeMap;

use datafusion::common::{DataFusionError, SchemaError};
use datafusion::execution::SessionState;
use datafusion::sql::sqlparser::parser::ParserError;
use tessera_worker::{ErrorKind, WorkerUnavailable};

/// Adds what to do to DataFusion's planning errors about names: a missing
/// column (known by its type) or table (asked of the catalog once planning
/// failed), which become `NotFound`.
pub(super) fn with_hint(e: DataFusionError, state: &SessionState, sql: &str) -> DataFusionError {
    let root = e.find_root();
    if let DataFusionError::SQL(parser, _) = root
        && matches!(parser.as_ref(), ParserError::RecursionLimitExceeded)
    {
        return ErrorKind::InvalidArgument.error(
            "the statement nests parentheses or subqueries too deeply for the SQL parser \
             (its limit is 50 levels); flatten it, for example with a WITH clause per level",
        );
    }
    let missing_column = matches!(
        root,
        DataFusionError::SchemaError(se, _) if matches!(se.as_ref(), SchemaError::FieldNotFound { .. })
    );
    if !missing_column {
        if matches!(root, DataFusionError::Plan(_))
            && let Some(table) = missing_table(state, sql)
        {
            return crate::catalog::no_such_table(&table);
        }
        return e;
    }
    let hint = "; DESCRIBE <table> lists its columns";
    let message = match root {
        DataFusionError::Plan(m) => m.clone(),
        other => other.strip_backtrace(),
    };
    ErrorKind::NotFound.error(format!("{message}{hint}"))
}

/// The first table `sql` reads that its schema does not have.
fn missing_table(state: &SessionState, sql: &str) -> Option<String> {
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).ok()?;
    let references = state.resolve_table_references(&statement).ok()?;
    references
        .into_iter()
        .find(|r| {
            // A table function (range, generate_series) is no table.
            !state.table_functions().contains_key(r.table())
                && state
                    .schema_for_ref(r.clone())
                    .is_ok_and(|schema| !schema.table_exist(r.table()))
        })
        .map(|r| r.to_string())
}

/// Names the worker behind a failed connection: the transport reports only
/// the address it could not reach.
pub(super) fn name_unreachable_worker(
    e: DataFusionError,
    members: &BTreeMap<String, String>,
) -> DataFusionError {
    let text = e.to_string();
    let refused = [
        "tcp connect error",
        "Connection refused",
        "currently unavailable",
    ];
    if !refused.iter().any(|r| text.contains(r)) {
        return e;
    }
    let found = members.iter().find(|(_, url)| {
        let addr = url.split("://").last().unwrap_or(url);
        text.contains(addr.trim_end_matches('/'))
    });
    let Some((id, url)) = found else {
        return e;
    };
    let reason = if text.contains("Connection refused") {
        "connection refused"
    } else {
        "not answering"
    };
    WorkerUnavailable::error(format!(
        "worker {id} at {url} is unreachable ({reason}) and the query needs the partitions it \
         holds; check that it is running (restart `tessera serve` on the same --data-dir), then \
         retry"
    ))
}
