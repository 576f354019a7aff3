//! The coordinator's Flight SQL service: what `tessera shell`, `tessera run`
//! and ADBC / JDBC clients talk to.
//!
//! `GetFlightInfo` plans the statement (running it if it has effects: DDL,
//! INSERT, SET) and parks the result under a handle; `DoGet` on the ticket
//! streams the rows. Prepared statements carry their SQL as the handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::SqlInfoData;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionCancelQueryRequest, ActionCancelQueryResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, CommandGetCatalogs,
    CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementIngest, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, Ticket,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::common::DataFusionError;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::engine::{Coordinator, Planned, TABLE_TYPES, in_session};
use crate::flight_auth::{Auth, PasswordChecked, allow, caller, principal};
use crate::flight_common::status;
pub use crate::flight_common::{Serving, current};
use crate::flight_meta::{
    DoGetStream, batch_stream, command_info, flight_status, foreign_keys_schema,
    primary_keys_schema, sql_info, xdbc_types,
};
use crate::flight_prepared::{PreparedStatements, prepare, read_params};
use crate::flight_sessions::Sessions;
use crate::panic_guard::guarded_stream;
use crate::query_log::as_caller;
use crate::retry::retrying;

/// Flight's action that cancels the statement of a FlightInfo.
const CANCEL_FLIGHT_INFO: &str = "CancelFlightInfo";

mod results;

use results::Parked;

type HandshakeStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<HandshakeResponse, Status>> + Send>>;

pub struct TesseraFlightSql {
    serving: Serving,
    auth: Arc<Auth>,
    /// Planned statements waiting for their DoGet, with their SQL (a query
    /// a worker failure stops is planned again).
    results: Mutex<HashMap<String, Parked>>,
    prepared: PreparedStatements,
    sessions: Sessions,
    sql_info: std::sync::OnceLock<Arc<SqlInfoData>>,
}

impl TesseraFlightSql {
    pub fn new(serving: Serving, auth: Arc<Auth>) -> Self {
        Self {
            serving,
            auth,
            results: Mutex::new(HashMap::new()),
            prepared: PreparedStatements::default(),
            sessions: Sessions::default(),
            sql_info: std::sync::OnceLock::new(),
        }
    }

    /// GetSqlInfo's answers, made once.
    fn sql_info(&self) -> Result<Arc<SqlInfoData>, Status> {
        if let Some(info) = self.sql_info.get() {
            return Ok(Arc::clone(info));
        }
        let functions = self.coordinator().function_names();
        let info = Arc::new(sql_info(&functions).map_err(flight_status)?);
        Ok(Arc::clone(self.sql_info.get_or_init(|| info)))
    }

    /// The session of the client `request` comes from.
    fn session<T>(&self, request: &Request<T>) -> Result<SessionContext, Status> {
        self.sessions.of(request, &self.coordinator())
    }

    fn coordinator(&self) -> Arc<Coordinator> {
        current(&self.serving)
    }
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
        let who = principal(&request)?;
        let by = caller(&who, &request);
        let session = self.session(&request)?;
        let run = async {
            allow(&self.coordinator(), &who, &query.query).await?;
            self.flight_info(&query.query, vec![], session.clone(), request.into_inner())
                .await
        };
        in_session(session.clone(), as_caller(by, run)).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (sql, params) = self.prepared.get(&cmd.prepared_statement_handle)?;
        let who = principal(&request)?;
        let by = caller(&who, &request);
        let session = self.session(&request)?;
        let run = async {
            allow(&self.coordinator(), &who, &sql).await?;
            self.flight_info(&sql, params, session.clone(), request.into_inner())
                .await
        };
        in_session(session.clone(), as_caller(by, run)).await
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
        let Parked {
            planned,
            sql,
            params,
            session,
            caller,
            retry,
            ..
        } = planned;
        if let Some(seq) = planned.query_seq() {
            self.coordinator().query_log().fetching(seq);
        }
        let schema = planned.schema();
        let is_query = matches!(planned, Planned::Plan(..));
        let stream = planned.execute().map_err(status)?;
        let stream = if is_query {
            retrying(
                self.coordinator(),
                sql,
                params,
                session,
                caller,
                stream,
                retry,
            )
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
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let who = principal(&request)?;
        let by = caller(&who, &request);
        let session = self.session(&request)?;
        let run = async {
            allow(&self.coordinator(), &who, &ticket.query).await?;
            self.update(&ticket.query, &[]).await
        };
        in_session(session, as_caller(by, run)).await
    }

    /// Bulk ingestion (ADBC `adbc_ingest`, `tessera load`): appends the
    /// stream's rows to an existing table in one atomic write.
    async fn do_put_statement_ingest(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let who = principal(&request)?;
        if who.reads_only() {
            return Err(Status::permission_denied(format!(
                "user '{}' may only read (role reader) and cannot ingest rows; an admin can \
                 GRANT admin TO {}",
                who.name(),
                who.name()
            )));
        }
        let coordinator = self.coordinator();
        if let Some(follower) = coordinator.follower() {
            // The leader writes; the rows stream through as they come.
            return follower
                .forward_put(request.into_inner())
                .await
                .map_err(status);
        }
        crate::flight_ingest::ingest(&coordinator, cmd, request.into_inner()).await
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let (sql, bound) = self.prepared.get(&query.prepared_statement_handle)?;
        let who = principal(&request)?;
        let by = caller(&who, &request);
        let session = self.session(&request)?;
        // The values come with the call (or were bound before it).
        let sent = read_params(request.into_inner()).await?;
        let params = if sent.is_empty() { bound } else { sent };
        let run = async {
            allow(&self.coordinator(), &who, &sql).await?;
            self.update(&sql, &params).await
        };
        in_session(session, as_caller(by, run)).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let session = self.session(&request)?;
        let coordinator = self.coordinator();
        in_session(session, prepare(&coordinator, &self.prepared, query)).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        self.prepared.close(&query.prepared_statement_handle)
    }

    /// Parameter values for a prepared query (or an update sent as one),
    /// kept with it until it runs.
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let params = read_params(request.into_inner()).await?;
        self.prepared
            .bind(&query.prepared_statement_handle, params)?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}

    /// Sign-in: basic credentials (checked as the call came in) get a
    /// bearer token, in the `authorization` header and as the payload.
    async fn do_handshake(
        &self,
        request: Request<tonic::Streaming<HandshakeRequest>>,
    ) -> Result<Response<HandshakeStream>, Status> {
        let who = principal(&request)?;
        // A token is had for a password, not for another token.
        let token = if request.extensions().get::<PasswordChecked>().is_some() {
            self.auth.issue(&who)
        } else {
            None
        };
        let payload = token.clone().unwrap_or_default();
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: payload.into_bytes().into(),
        };
        let mut response: Response<HandshakeStream> =
            Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("token header"))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = self.sql_info()?;
        let schema = query.clone().into_builder(&info).schema();
        command_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let info = self.sql_info()?;
        batch_stream(query.into_builder(&info).build())
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let types = xdbc_types().map_err(flight_status)?;
        let schema = query.into_builder(&types).schema();
        command_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let types = xdbc_types().map_err(flight_status)?;
        batch_stream(query.into_builder(&types).build())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        command_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        crate::flight_meta::catalogs(&self.coordinator(), query).await
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        command_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        crate::flight_meta::db_schemas(&self.coordinator(), query).await
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        command_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        crate::flight_meta::tables(&self.coordinator(), query).await
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        command_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for t in TABLE_TYPES {
            builder.append(t);
        }
        batch_stream(builder.build())
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(query.as_any(), &primary_keys_schema(), request.into_inner())
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        batch_stream(Ok(RecordBatch::new_empty(primary_keys_schema())))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(query.as_any(), &foreign_keys_schema(), request.into_inner())
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        batch_stream(Ok(RecordBatch::new_empty(foreign_keys_schema())))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(query.as_any(), &foreign_keys_schema(), request.into_inner())
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        batch_stream(Ok(RecordBatch::new_empty(foreign_keys_schema())))
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(query.as_any(), &foreign_keys_schema(), request.into_inner())
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        batch_stream(Ok(RecordBatch::new_empty(foreign_keys_schema())))
    }

    /// Flight's `CancelFlightInfo`; members' calls: workers joining and
    /// heartbeating, and followers taking snapshots.
    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        if request.get_ref().r#type == crate::progress::ACTION {
            let by = caller(&principal(&request)?, &request);
            let body = (self.coordinator())
                .answer_progress(&by, &request.get_ref().body)
                .await
                .map_err(status)?;
            let body = arrow_flight::Result { body: body.into() };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(body)]))));
        }
        if request.get_ref().r#type == CANCEL_FLIGHT_INFO {
            let by = caller(&principal(&request)?, &request);
            let cancel = CancelFlightInfoRequest::decode(request.get_ref().body.clone())
                .map_err(|e| Status::invalid_argument(format!("CancelFlightInfo: {e}")))?;
            let info = cancel
                .info
                .ok_or_else(|| Status::invalid_argument("CancelFlightInfo without a FlightInfo"))?;
            let result = CancelFlightInfoResult {
                status: self.cancel_info(&info, &by)? as i32,
            };
            let body = arrow_flight::Result {
                body: result.encode_to_vec().into(),
            };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(body)]))));
        }
        crate::flight_members::member_action(self.coordinator(), request)
            .await
            .map(Response::new)
    }

    /// The older `CancelQuery` action of Flight SQL.
    #[allow(deprecated)]
    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let by = caller(&principal(&request)?, &request);
        let info = FlightInfo::decode(query.info)
            .map_err(|e| Status::invalid_argument(format!("CancelQuery: {e}")))?;
        // CancelResult numbers its outcomes as CancelStatus does.
        Ok(ActionCancelQueryResult {
            result: self.cancel_info(&info, &by)? as i32,
        })
    }
}
