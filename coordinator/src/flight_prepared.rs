//! Prepared statements of Flight SQL clients: JDBC's `prepareStatement`,
//! ADBC's `execute(sql, params)` and `executemany`. A statement's `?` are
//! numbered `$1`, `$2`... at preparation; parameter values a client sends
//! (DoPut) stay with the statement until it is executed or closed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use futures::TryStreamExt;
use tonic::Status;

use arrow_flight::sql::{
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
};
use tessera_sql::number_placeholders;

use crate::engine::{Coordinator, ParamRow, param_rows};
use crate::flight_common::{hydrated, status};
use crate::flight_meta::ipc_schema;
use crate::panic_guard::guarded;

/// A prepared statement nobody used for this long is dropped.
const IDLE_LIMIT: Duration = Duration::from_secs(24 * 3600);

struct Prepared {
    sql: String,
    params: Vec<ParamRow>,
    used: Instant,
}

/// The prepared statements of this coordinator's clients, by handle.
#[derive(Default)]
pub struct PreparedStatements {
    open: Mutex<HashMap<String, Prepared>>,
}

fn poisoned() -> Status {
    Status::internal("prepared statements poisoned by an earlier panic")
}

fn handle_text(handle: &[u8]) -> Result<&str, Status> {
    std::str::from_utf8(handle)
        .map_err(|_| Status::invalid_argument("bad prepared statement handle"))
}

impl PreparedStatements {
    /// Keeps `sql` (placeholders numbered) under a new handle.
    pub fn create(&self, sql: String) -> Result<String, Status> {
        let handle = uuid::Uuid::new_v4().to_string();
        let mut open = self.open.lock().map_err(|_| poisoned())?;
        open.retain(|_, p| p.used.elapsed() < IDLE_LIMIT);
        open.insert(
            handle.clone(),
            Prepared {
                sql,
                params: vec![],
                used: Instant::now(),
            },
        );
        Ok(handle)
    }

    /// The statement's SQL and the parameter values bound to it.
    pub fn get(&self, handle: &[u8]) -> Result<(String, Vec<ParamRow>), Status> {
        let handle = handle_text(handle)?;
        let mut open = self.open.lock().map_err(|_| poisoned())?;
        let p = open.get_mut(handle).ok_or_else(|| {
            Status::not_found("unknown or closed prepared statement; prepare the statement again")
        })?;
        p.used = Instant::now();
        Ok((p.sql.clone(), p.params.clone()))
    }

    /// Binds rows of parameter values to the statement (replacing any
    /// bound before).
    pub fn bind(&self, handle: &[u8], params: Vec<ParamRow>) -> Result<(), Status> {
        let handle = handle_text(handle)?;
        let mut open = self.open.lock().map_err(|_| poisoned())?;
        let p = open.get_mut(handle).ok_or_else(|| {
            Status::not_found("unknown or closed prepared statement; prepare the statement again")
        })?;
        p.params = params;
        p.used = Instant::now();
        Ok(())
    }

    pub fn close(&self, handle: &[u8]) -> Result<(), Status> {
        let handle = handle_text(handle)?;
        self.open.lock().map_err(|_| poisoned())?.remove(handle);
        Ok(())
    }
}

/// Prepares a statement for a client: its handle, the schema of the rows
/// it returns (if any) and of the parameters it takes.
pub async fn prepare(
    coordinator: &Coordinator,
    prepared: &PreparedStatements,
    query: ActionCreatePreparedStatementRequest,
) -> Result<ActionCreatePreparedStatementResult, Status> {
    // Planning happens at execution, so a prepared statement sees the
    // catalog as it is then. The dataset schema tells clients (JDBC) a
    // query from an update; the parameter schema says what to bind.
    let (sql, _) = number_placeholders(&query.query).map_err(status)?;
    let dataset_schema = match guarded(coordinator.result_schema(&sql))
        .await
        .map_err(status)?
    {
        Some(schema) => ipc_schema(&hydrated(&schema))?,
        None => Default::default(),
    };
    let parameters = guarded(coordinator.parameter_schema(&sql))
        .await
        .map_err(status)?;
    let parameter_schema = if parameters.fields().is_empty() {
        Default::default()
    } else {
        ipc_schema(&parameters)?
    };
    Ok(ActionCreatePreparedStatementResult {
        prepared_statement_handle: prepared.create(sql)?.into_bytes().into(),
        dataset_schema,
        parameter_schema,
    })
}

/// The record batches a client's DoPut carries (`what` names them in an
/// error), and their schema if the stream gave one.
pub async fn read_batches(
    stream: PeekableFlightDataStream,
    what: &str,
) -> Result<(Option<SchemaRef>, Vec<RecordBatch>), Status> {
    let mut decoded = FlightRecordBatchStream::new_from_flight_data(
        stream.map_err(|s| FlightError::Tonic(Box::new(s))),
    );
    let mut batches = vec![];
    while let Some(batch) = decoded
        .try_next()
        .await
        .map_err(|e| Status::invalid_argument(format!("bad Arrow data in {what}: {e}")))?
    {
        batches.push(batch);
    }
    let schema = decoded
        .schema()
        .cloned()
        .or_else(|| batches.first().map(|b| b.schema()));
    Ok((schema, batches))
}

/// The rows of parameter values a client's DoPut carries.
pub async fn read_params(stream: PeekableFlightDataStream) -> Result<Vec<ParamRow>, Status> {
    let (_, batches) = read_batches(stream, "the parameter values").await?;
    let mut rows = vec![];
    for batch in &batches {
        rows.extend(param_rows(batch).map_err(|e| Status::invalid_argument(e.to_string()))?);
    }
    Ok(rows)
}
