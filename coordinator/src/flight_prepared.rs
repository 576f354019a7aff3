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
use futures::TryStreamExt;
use tonic::Status;

use crate::engine::{ParamRow, param_rows};

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

/// The rows of parameter values a client's DoPut carries.
pub async fn read_params(stream: PeekableFlightDataStream) -> Result<Vec<ParamRow>, Status> {
    let mut batches = FlightRecordBatchStream::new_from_flight_data(
        stream.map_err(|s| FlightError::Tonic(Box::new(s))),
    );
    let mut rows = vec![];
    while let Some(batch) = batches.try_next().await.map_err(|e| {
        Status::invalid_argument(format!("bad Arrow data in the parameter values: {e}"))
    })? {
        rows.extend(param_rows(&batch).map_err(|e| Status::invalid_argument(e.to_string()))?);
    }
    Ok(rows)
}
