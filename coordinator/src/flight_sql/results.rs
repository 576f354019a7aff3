//! Planned statements parked until their DoGet, their FlightInfo, and
//! cancelling them.

use std::time::{Duration, Instant};

use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
use arrow_flight::{CancelStatus, FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use prost::Message;
use tonic::{Response, Status};

use crate::engine::{ParamRow, Planned, rows_written};
use crate::flight_common::{hydrated, status};
use crate::panic_guard::guarded;
use crate::query_log::{Caller, Cancelled, current_caller};
use crate::retry::{Retry, plan_statement};

use super::{TesseraFlightSql, utf8};

/// Results not fetched within this time are dropped.
const RESULT_TTL: Duration = Duration::from_secs(600);

/// A planned statement waiting for its DoGet: with what to plan it again
/// from if a worker failure stops it.
pub(super) struct Parked {
    pub(super) at: Instant,
    pub(super) planned: Planned,
    pub(super) sql: String,
    pub(super) params: Vec<ParamRow>,
    pub(super) session: SessionContext,
    pub(super) caller: Caller,
    pub(super) retry: Retry,
}

impl TesseraFlightSql {
    pub(super) fn park(
        &self,
        planned: Planned,
        sql: &str,
        params: Vec<ParamRow>,
        session: SessionContext,
        retry: Retry,
    ) -> Result<String, Status> {
        let handle = uuid::Uuid::new_v4().to_string();
        if let Some(seq) = planned.query_seq() {
            self.coordinator().query_log().attach_handle(seq, &handle);
        }
        let mut results = self
            .results
            .lock()
            .map_err(|_| Status::internal("result cache poisoned"))?;
        results.retain(|_, p| p.at.elapsed() < RESULT_TTL);
        results.insert(
            handle.clone(),
            Parked {
                at: Instant::now(),
                planned,
                sql: sql.to_string(),
                params,
                session,
                caller: current_caller(),
                retry,
            },
        );
        Ok(handle)
    }

    pub(super) async fn flight_info(
        &self,
        sql: &str,
        params: Vec<ParamRow>,
        session: SessionContext,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let span = tracing::info_span!(
            "query",
            sql = %tessera_sql::redact(sql).chars().take(200).collect::<String>()
        );
        let _enter = span.enter();
        // A read-only statement is planned again if a worker failure stops
        // it (a GLOBAL index is looked up while planning).
        let coordinator = self.coordinator();
        let mut retry = Retry::begin(&coordinator);
        let planned = guarded(plan_statement(&coordinator, sql, &params, &mut retry))
            .await
            .map_err(status)?;
        // DoGet sends dictionaries as their values; the FlightInfo schema
        // must say the same or clients reject the stream.
        let schema = hydrated(&planned.schema());
        let records = match &planned {
            Planned::Ready(_, batches) => batches.iter().map(|b| b.num_rows() as i64).sum(),
            Planned::Plan(..) => -1,
        };
        let handle = self.park(planned, sql, params, session, retry)?;
        let ticket = TicketStatementQuery {
            statement_handle: handle.into_bytes().into(),
        };
        let info = FlightInfo::new()
            .try_with_schema(schema.as_ref())
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(
                FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec())),
            )
            .with_descriptor(descriptor)
            .with_total_records(records);
        Ok(Response::new(info))
    }

    /// Cancels the statement `info` was the answer for: one whose rows
    /// were not fetched yet is dropped; one streaming them stops.
    pub(super) fn cancel_info(
        &self,
        info: &FlightInfo,
        by: &Caller,
    ) -> Result<CancelStatus, Status> {
        let mut outcome = CancelStatus::NotCancellable;
        let coordinator = self.coordinator();
        let log = coordinator.query_log();
        for ticket in info.endpoint.iter().filter_map(|e| e.ticket.as_ref()) {
            let Ok(any) = arrow_flight::sql::Any::decode(ticket.ticket.clone()) else {
                continue;
            };
            let Ok(Some(query)) = any.unpack::<TicketStatementQuery>() else {
                continue;
            };
            let handle = utf8(&query.statement_handle)?.to_string();
            // Its rows not fetched yet: it goes now.
            let parked = self
                .results
                .lock()
                .map_err(|_| Status::internal("result cache poisoned"))?
                .remove(&handle);
            if let Some(p) = parked {
                if let Some(seq) = p.planned.query_seq() {
                    log.cancel_seq(seq, by).map_err(status)?;
                }
                drop(p);
                outcome = CancelStatus::Cancelled;
                continue;
            }
            if log.cancel_handle(&handle, by).map_err(status)? == Cancelled::Yes {
                outcome = CancelStatus::Cancelling;
            }
        }
        Ok(outcome)
    }

    pub(super) async fn update(&self, sql: &str, params: &[ParamRow]) -> Result<i64, Status> {
        let coordinator = self.coordinator();
        let run = async {
            coordinator
                .plan_with(sql, params)
                .await?
                .execute()?
                .try_collect::<Vec<_>>()
                .await
        };
        let batches = guarded(run).await.map_err(status)?;
        Ok(rows_written(&batches) as i64)
    }
}
