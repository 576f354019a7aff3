//! Planning and execution errors made actionable: hints on unknown names,
//! and the worker behind a failed connection.

use std::collections::BTreeMap;

use datafusion::common::{DataFusionError, SchemaError};
use datafusion::sql::sqlparser::parser::ParserError;
use tessera_worker::{ErrorKind, WorkerUnavailable};

/// Adds what to do to DataFusion's planning errors about names: a missing
/// column (known by its type) or table (DataFusion says so only in text),
/// which becomes `NotFound`.
pub(super) fn with_hint(e: DataFusionError) -> DataFusionError {
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
    let text = e.to_string();
    let hint = if missing_column {
        "; DESCRIBE <table> lists its columns"
    } else if text.contains("table '") && text.contains("' not found") {
        "; SHOW TABLES lists the tables"
    } else {
        return e;
    };
    let message = match root {
        DataFusionError::Plan(m) => m.clone(),
        other => other.strip_backtrace(),
    };
    ErrorKind::NotFound.error(format!("{message}{hint}"))
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
