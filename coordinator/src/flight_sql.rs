//! The coordinator's Flight SQL service: what `tessera shell`, `tessera run`
//! and ADBC / JDBC clients talk to.
//!
//! `GetFlightInfo` plans the statement (running it if it has effects: DDL,
//! INSERT, SET) and parks the result under a handle; `DoGet` on the ticket
//! streams the rows. Prepared statements carry their SQL as the handle.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementUpdate, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::DataFusionError;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tessera_worker::membership::{HEARTBEAT_ACTION, JOIN_ACTION, MemberHello};
use tessera_worker::to_status;
use tonic::{Request, Response, Status};

use crate::engine::{Coordinator, Planned, rows_written};
use crate::follow::{PIN_ACTION, PinRequest, SNAPSHOT_ACTION, SnapshotReply, SnapshotRequest};
use crate::panic_guard::{guarded, guarded_stream};
use crate::retry::{Retry, plan_statement, retrying};

/// Results not fetched within this time are dropped.
const RESULT_TTL: Duration = Duration::from_secs(600);
/// gRPC carries error text in a header; keep it well under its 16 KiB limit.
const MAX_ERROR_BYTES: usize = 4000;

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

/// The coordinator serving clients; a follower is replaced by a leader
/// when it takes over the lead.
pub type Serving = Arc<std::sync::RwLock<Arc<Coordinator>>>;

pub struct TesseraFlightSql {
    serving: Serving,
    /// Planned statements waiting for their DoGet, with their SQL (a query
    /// a worker failure stops is planned again).
    results: Mutex<HashMap<String, (Instant, Planned, String, Retry)>>,
}

fn status(e: DataFusionError) -> Status {
    let s = to_status(e);
    let msg = s.message();
    if msg.len() <= MAX_ERROR_BYTES {
        return s;
    }
    let mut cut = MAX_ERROR_BYTES;
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    Status::new(s.code(), format!("{}… (truncated)", &msg[..cut]))
}

impl TesseraFlightSql {
    pub fn new(serving: Serving) -> Self {
        Self {
            serving,
            results: Mutex::new(HashMap::new()),
        }
    }

    fn coordinator(&self) -> Arc<Coordinator> {
        match self.serving.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn park(&self, planned: Planned, sql: &str, retry: Retry) -> Result<String, Status> {
        let handle = uuid::Uuid::new_v4().to_string();
        let mut results = self
            .results
            .lock()
            .map_err(|_| Status::internal("result cache poisoned"))?;
        results.retain(|_, (at, ..)| at.elapsed() < RESULT_TTL);
        results.insert(
            handle.clone(),
            (Instant::now(), planned, sql.to_string(), retry),
        );
        Ok(handle)
    }

    async fn flight_info(
        &self,
        sql: &str,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let span = tracing::info_span!("query", sql = %sql.chars().take(200).collect::<String>());
        let _enter = span.enter();
        // A read-only statement is planned again if a worker failure stops
        // it (a GLOBAL index is looked up while planning).
        let coordinator = self.coordinator();
        let mut retry = Retry::begin(&coordinator);
        let planned = guarded(plan_statement(&coordinator, sql, &mut retry))
            .await
            .map_err(status)?;
        // DoGet sends dictionaries as their values; the FlightInfo schema
        // must say the same or clients reject the stream.
        let schema = hydrated(&planned.schema());
        let records = match &planned {
            Planned::Ready(_, batches) => batches.iter().map(|b| b.num_rows() as i64).sum(),
            Planned::Plan(..) => -1,
        };
        let handle = self.park(planned, sql, retry)?;
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

    async fn update(&self, sql: &str) -> Result<i64, Status> {
        let batches = guarded(self.coordinator().run(sql)).await.map_err(status)?;
        Ok(rows_written(&batches) as i64)
    }
}

/// The schema with dictionary columns as their value types, as DoGet sends them.
fn hydrated(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<FieldRef> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, value) => {
                Arc::new(f.as_ref().clone().with_data_type(value.as_ref().clone()))
            }
            _ => Arc::clone(f),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn utf8(bytes: &[u8]) -> Result<&str, Status> {
    std::str::from_utf8(bytes).map_err(|_| Status::invalid_argument("SQL must be UTF-8"))
}

#[tonic::async_trait]
impl FlightSqlService for TesseraFlightSql {
    type FlightService = TesseraFlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.flight_info(&query.query, request.into_inner()).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let sql = utf8(&cmd.prepared_statement_handle)?.to_string();
        self.flight_info(&sql, request.into_inner()).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle = utf8(&ticket.statement_handle)?.to_string();
        let planned = self
            .results
            .lock()
            .map_err(|_| Status::internal("result cache poisoned"))?
            .remove(&handle)
            .ok_or_else(|| {
                Status::not_found("unknown or expired result handle; run the statement again")
            })?;
        let (_, planned, sql, retry) = planned;
        let schema = planned.schema();
        let is_query = matches!(planned, Planned::Plan(..));
        let stream = planned.execute().map_err(status)?;
        let stream = if is_query {
            retrying(self.coordinator(), sql, stream, retry)
        } else {
            stream
        };
        let batches = guarded_stream(stream).map_err(|e| FlightError::ExternalError(Box::new(e)));
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(|e| match e {
                FlightError::ExternalError(inner) => match inner.downcast::<DataFusionError>() {
                    Ok(df) => status(*df),
                    Err(other) => Status::internal(other.to_string()),
                },
                other => Status::internal(other.to_string()),
            });
        let stream: DoGetStream = Box::pin(data);
        Ok(Response::new(stream))
    }

    async fn do_put_statement_update(
        &self,
        ticket: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.update(&ticket.query).await
    }

    /// Bulk ingestion (ADBC `adbc_ingest`, `tessera load`): appends the
    /// stream's rows to an existing table in one atomic write.
    async fn do_put_statement_ingest(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        use arrow_flight::decode::FlightRecordBatchStream;
        use arrow_flight::sql::TableExistsOption;
        let coordinator = self.coordinator();
        if let Some(follower) = coordinator.follower() {
            // The leader writes; the rows stream through as they come.
            return follower
                .forward_put(request.into_inner())
                .await
                .map_err(status);
        }
        let table = cmd.table;
        if cmd.temporary {
            return Err(Status::invalid_argument(
                "temporary tables are not supported; ingest into a table made with CREATE TABLE",
            ));
        }
        if let Some(opts) = cmd.table_definition_options
            && opts.if_exists == TableExistsOption::Replace as i32
        {
            return Err(Status::invalid_argument(format!(
                "ingest can only append; to replace '{table}', DROP TABLE and CREATE TABLE it first"
            )));
        }
        if coordinator
            .catalog()
            .table_def(&table)
            .map_err(status)?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "table '{table}' does not exist; CREATE TABLE {table} (...) PARTITION BY ... first, \
                 then ingest into it"
            )));
        }
        let mut stream = FlightRecordBatchStream::new_from_flight_data(
            request
                .into_inner()
                .map_err(|s| FlightError::Tonic(Box::new(s))),
        );
        let mut batches = vec![];
        while let Some(batch) = stream.try_next().await.map_err(|e| {
            Status::invalid_argument(format!("bad Arrow data in the ingest stream: {e}"))
        })? {
            batches.push(batch);
        }
        let Some(schema) = stream
            .schema()
            .cloned()
            .or_else(|| batches.first().map(|b| b.schema()))
        else {
            return Ok(0);
        };
        let rows = guarded(coordinator.load(&table, schema, batches))
            .await
            .map_err(status)?;
        Ok(rows as i64)
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let sql = utf8(&query.prepared_statement_handle)?.to_string();
        self.update(&sql).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        // The handle is the SQL itself: planning happens at execution, so a
        // prepared statement sees the catalog as it is then. The dataset
        // schema tells clients (JDBC) a query from an update.
        let dataset_schema = match guarded(self.coordinator().result_schema(&query.query))
            .await
            .map_err(status)?
        {
            Some(schema) => {
                let IpcMessage(bytes) =
                    SchemaAsIpc::new(&hydrated(&schema), &IpcWriteOptions::default())
                        .try_into()
                        .map_err(|e: ArrowError| Status::internal(e.to_string()))?;
                bytes
            }
            None => Default::default(),
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Ok(())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}

    /// Members' calls: workers joining and heartbeating, and followers
    /// taking snapshots.
    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        // Members only: every one of these carries the cluster's secret.
        tessera_worker::secret::check_metadata(request.metadata(), request.remote_addr())?;
        let action = request.into_inner();
        let coordinator = self.coordinator();
        if action.r#type == SNAPSHOT_ACTION {
            return snapshot_for_follower(&coordinator, &action.body).map(Response::new);
        }
        if action.r#type == PIN_ACTION {
            return pin_for_follower(&coordinator, &action.body).map(Response::new);
        }
        if let Some(follower) = coordinator.follower() {
            if !matches!(action.r#type.as_str(), JOIN_ACTION | HEARTBEAT_ACTION) {
                return Err(Status::invalid_argument(format!(
                    "unknown action '{}'",
                    action.r#type
                )));
            }
            // The leader keeps membership; a worker may know only this one.
            let body = follower.forward_action(action).await.map_err(status)?;
            let result = arrow_flight::Result { body };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))));
        }
        let hello: MemberHello = serde_json::from_slice(&action.body).map_err(|e| {
            Status::invalid_argument(format!(
                "'{}' carries no worker description ({e})",
                action.r#type
            ))
        })?;
        let reply = match action.r#type.as_str() {
            JOIN_ACTION => {
                let joined = guarded(async move { coordinator.join(hello).await })
                    .await
                    .map_err(status)?;
                serde_json::to_vec(&joined)
            }
            HEARTBEAT_ACTION => serde_json::to_vec(&coordinator.heartbeat(&hello).map_err(status)?),
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action '{other}'"
                )));
            }
        }
        .map_err(|e| Status::internal(format!("membership reply: {e}")))?;
        let result = arrow_flight::Result { body: reply.into() };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))))
    }
}

type ActionStream =
    Pin<Box<dyn Stream<Item = Result<arrow_flight::Result, Status>> + Send + 'static>>;

/// A follower's running query's snapshot, taken from the leader before
/// this one, pinned here while the call stays open.
fn pin_for_follower(coordinator: &Coordinator, body: &[u8]) -> Result<ActionStream, Status> {
    if coordinator.follower().is_some() {
        return Err(Status::unavailable(
            "this coordinator is taking over the lead of the cluster; retry in a moment",
        ));
    }
    let request: PinRequest = serde_json::from_slice(body)
        .map_err(|e| Status::invalid_argument(format!("unreadable pin request ({e})")))?;
    let catalog = coordinator.catalog();
    let pin = catalog.pin_xmin(request.xmin).map_err(status)?;
    Ok(held_open(catalog, pin, arrow_flight::Result::default()))
}

/// A call's answer `first`, then nothing until the caller drops the call
/// or this coordinator stops: `hold` is kept as long.
fn held_open<H: Send + 'static>(
    catalog: &crate::catalog::Catalog,
    hold: H,
    first: arrow_flight::Result,
) -> ActionStream {
    let mut stopped = catalog.stopped.subscribe();
    let rest = futures::stream::once(async move {
        let _ = stopped.wait_for(|s| *s).await;
        drop(hold);
    })
    .filter_map(|()| std::future::ready(None));
    Box::pin(futures::stream::iter([Ok(first)]).chain(rest))
}

/// A snapshot for a follower's query, with the leader's catalog revision
/// and members. Pinned: the call stays open, and the snapshot with it,
/// until the follower drops it or this coordinator stops.
fn snapshot_for_follower(coordinator: &Coordinator, body: &[u8]) -> Result<ActionStream, Status> {
    let request: SnapshotRequest = if body.is_empty() {
        SnapshotRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            Status::invalid_argument(format!(
                "unreadable snapshot request ({e}); run the same Tessera version on every \
                 coordinator"
            ))
        })?
    };
    let catalog = coordinator.catalog();
    if coordinator.follower().is_some() {
        // A follower that just won the lead answers so until it leads.
        return Err(Status::unavailable(
            "this coordinator is taking over the lead of the cluster; retry in a moment",
        ));
    }
    if let Some(target) = request.fresh {
        catalog.want_fresh(target);
    }
    let (snapshot, pin) = catalog.snapshot().map_err(status)?;
    let reply = SnapshotReply {
        snapshot,
        revision: catalog.revision(),
        members: catalog.membership().wire().map_err(status)?,
        sequence: catalog.next_reply_sequence(),
        from: String::new(),
    };
    let encoded =
        serde_json::to_vec(&reply).map_err(|e| Status::internal(format!("snapshot reply: {e}")))?;
    let first = arrow_flight::Result {
        body: encoded.into(),
    };
    if !request.pin {
        drop(pin);
        return Ok(Box::pin(futures::stream::iter([Ok(first)])));
    }
    Ok(held_open(catalog, pin, first))
}
