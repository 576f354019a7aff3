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
    catalog: &crate::catalog::Catalog,
) -> DataFusionError {
    let members = catalog.members().unwrap_or_default();
    let text = e.to_string();
    let refused = [
        "tcp connect error",
        "Connection refused",
        "currently unavailable",
    ];
    if !refused.iter().any(|r| text.contains(r)) {
        return name_silent_worker(e, &text, catalog, &members);
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

/// A connection to a worker that broke while the query read from it (the
/// worker stopped answering, and HTTP/2 keepalive gave up on it): the
/// error carries no address, so the workers the membership no longer sees
/// as up are named.
fn name_silent_worker(
    e: DataFusionError,
    text: &str,
    catalog: &crate::catalog::Catalog,
    members: &BTreeMap<String, String>,
) -> DataFusionError {
    let broke = [
        "error reading a body from connection",
        "stream closed because of a broken pipe",
        "connection reset",
        "keep-alive timed out",
    ];
    if !broke.iter().any(|b| text.contains(b)) {
        return e;
    }
    let membership = catalog.membership();
    let silent: Vec<String> = members
        .iter()
        .filter(|(id, _)| {
            membership
                .state(id)
                .is_ok_and(|s| s != crate::membership::WorkerState::Up)
        })
        .map(|(id, url)| format!("{id} at {url}"))
        .collect();
    let who = match silent.as_slice() {
        [] => "a worker".to_string(),
        [one] => format!("worker {one}"),
        many => format!("one of the workers {}", many.join(", ")),
    };
    WorkerUnavailable::error(format!(
        "{who} stopped answering while the query read from it (its connection broke); check \
         that it is running and not stopped or overloaded (SHOW WORKERS), then retry"
    ))
}
