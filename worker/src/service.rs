//! The worker's gRPC server: Tessera's Flight service (writes, scans, admin
//! actions) and datafusion-distributed's worker service (query tasks), side
//! by side on one tonic server and one port.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use datafusion::common::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use datafusion_distributed::{DistributedExt, Worker, WorkerQueryContext};
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use crate::scan::{LocalStore, TesseraCodec, decode_scan};
use crate::storage::Storage;
use crate::wire::{self, MAX_MESSAGE_BYTES};

mod pieces;

use pieces::{Piece, PieceState};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Maps an engine error to a gRPC status of its kind, keeping its text.
pub fn to_status(e: DataFusionError) -> Status {
    Status::new(crate::kind::kind_of(&e).code(), e.to_string())
}

/// Tessera's Flight service on a worker.
pub struct WorkerFlightService {
    local: Arc<LocalStore>,
    session: SessionContext,
    /// Paces the partition copies into this worker.
    copies: crate::pacer::Pacer,
}

impl WorkerFlightService {
    fn storage(&self) -> &Storage {
        &self.local.storage
    }

    /// Streams the index entries of a partition's older rows (a backfill).
    async fn index_entries(&self, body: &[u8]) -> Result<Response<BoxStream<FlightData>>, Status> {
        let req: wire::EntriesRequest = wire::decode(body).map_err(to_status)?;
        let schema = req.schema().map_err(to_status)?;
        let storage = Arc::clone(&self.local.storage);
        let entry_schema = Arc::clone(&schema);
        let batches = tokio::task::spawn_blocking(move || {
            let _pin = storage.pin();
            let columns: Vec<String> = req.columns.iter().map(|(c, _)| c.clone()).collect();
            storage.index_entries(
                &req.table,
                req.partition,
                &columns,
                req.max_txn,
                &entry_schema,
            )
        })
        .await
        .map_err(|e| Status::internal(format!("index read failed: {e}")))?
        .map_err(to_status)?;
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::iter(batches.into_iter().map(Ok)))
            .map_err(|e| Status::internal(e.to_string()));
        Ok(Response::new(Box::pin(data)))
    }
}

#[tonic::async_trait]
impl FlightService for WorkerFlightService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("workers take no handshake"))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("workers list no flights"))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented(
            "a worker answers no queries itself: send SQL to the coordinator",
        ))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("no long-running flights on workers"))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("no schemas on workers"))
    }

    /// Runs a partition scan of partitions held here and streams the rows.
    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket = request.into_inner().ticket;
        if let Some(body) = ticket.strip_prefix(wire::ENTRIES_TICKET) {
            return self.index_entries(body).await;
        }
        let task_ctx = self.session.task_ctx();
        let scan = decode_scan(&ticket, Arc::clone(&self.local), &task_ctx).map_err(to_status)?;
        let schema = scan.schema();
        let stream = scan.execute(0, task_ctx).map_err(to_status)?;
        let batches = stream.map_err(|e| FlightError::ExternalError(Box::new(e)));
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(|e| match e {
                FlightError::ExternalError(inner) => match inner.downcast::<DataFusionError>() {
                    Ok(df) => to_status(*df),
                    Err(other) => Status::internal(other.to_string()),
                },
                other => Status::internal(other.to_string()),
            });
        Ok(Response::new(Box::pin(data)))
    }

    /// Prepares one partition's rows of a write: durable before the answer.
    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let mut input = request.into_inner();
        let Some(first) = input.message().await? else {
            return Err(Status::invalid_argument("empty write"));
        };
        let Some(descriptor) = first.flight_descriptor.clone() else {
            return Err(Status::invalid_argument(
                "a write must name its partition in the flight descriptor",
            ));
        };
        let req: wire::PrepareRequest = wire::decode(&descriptor.cmd).map_err(to_status)?;
        let data = futures::stream::once(async { Ok(first) })
            .chain(input.map_err(FlightError::from))
            .boxed();
        // Each schema message starts a piece and names where it goes. The
        // pieces of one partition (a large write comes in several) go to
        // one staged file, each batch written as it arrives (on a blocking
        // thread of its own, while the next is read): memory holds a row
        // group per partition, not the write.
        let mut decoder = FlightDataDecoder::new(data);
        let mut pieces: Vec<Piece> = vec![];
        let mut current: Option<usize> = None;
        let written = async {
            while let Some(d) = decoder.next().await {
                let d = d.map_err(|e| Status::invalid_argument(format!("bad rows: {e}")))?;
                match d.payload {
                    DecodedPayload::Schema(schema) => {
                        let header: wire::PieceHeader =
                            wire::decode(&d.inner.app_metadata).map_err(to_status)?;
                        let at = pieces.iter().position(|p| {
                            p.header.table == header.table && p.header.partition == header.partition
                        });
                        current = Some(match at {
                            Some(i) => i,
                            None => {
                                let storage = Arc::clone(&self.local.storage);
                                let (txn, h) = (req.txn, header.clone());
                                let file = tokio::task::spawn_blocking(move || {
                                    storage.staged_file(txn, &h.table, h.partition, schema)
                                })
                                .await
                                .map_err(|e| Status::internal(format!("write task failed: {e}")))?
                                .map_err(to_status)?;
                                pieces.push(Piece {
                                    header,
                                    state: PieceState::Idle(Box::new(file)),
                                });
                                pieces.len() - 1
                            }
                        });
                    }
                    DecodedPayload::RecordBatch(batch) => {
                        let Some(piece) = current.and_then(|i| pieces.get_mut(i)) else {
                            return Err(Status::invalid_argument("rows before their schema"));
                        };
                        piece.write(batch).await?;
                    }
                    DecodedPayload::None => {}
                }
            }
            if pieces.is_empty() {
                return Err(Status::invalid_argument("a write carried no schema"));
            }
            // Every piece's file ends, and is synced, once its rows are in.
            let finishing: Vec<_> = pieces
                .drain(..)
                .map(|mut p| async move {
                    let file = p.take().await?;
                    tokio::task::spawn_blocking(move || file.finish())
                        .await
                        .map_err(|e| Status::internal(format!("write task failed: {e}")))?
                        .map_err(to_status)
                })
                .collect();
            futures::future::try_join_all(finishing).await
        };
        // On failure, the pieces' unfinished files are dropped (removed).
        let files = written.await?;
        let result = PutResult {
            app_metadata: wire::encode(&files).map_err(to_status)?.into(),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async {
            Ok(result)
        }))))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented(
            "no exchanges on Tessera's worker service",
        ))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        let body: Option<Vec<u8>> = match action.r#type.as_str() {
            wire::ACTION_COMMIT => {
                let req: wire::CommitRequest = wire::decode(&action.body).map_err(to_status)?;
                self.storage()
                    .commit(req.txn, &req.writes)
                    .map_err(to_status)?;
                None
            }
            wire::ACTION_ABORT => {
                let req: wire::TxnRequest = wire::decode(&action.body).map_err(to_status)?;
                self.storage().abort(req.txn).map_err(to_status)?;
                None
            }
            wire::ACTION_PROGRESS => {
                let req: wire::ProgressRequest = wire::decode(&action.body).map_err(to_status)?;
                Some(wire::encode(&self.local.progress.of(&req.queries)).map_err(to_status)?)
            }
            wire::ACTION_STAGED => Some(
                wire::encode(&self.storage().staged().map_err(to_status)?).map_err(to_status)?,
            ),
            wire::ACTION_STATS => {
                let req: wire::StatsRequest = wire::decode(&action.body).map_err(to_status)?;
                let stats = self
                    .storage()
                    .stats(&req.table, &req.partitions, &req.decided)
                    .map_err(to_status)?;
                Some(wire::encode(&stats).map_err(to_status)?)
            }
            wire::ACTION_TRUNCATE => {
                let req: wire::TruncateRequest = wire::decode(&action.body).map_err(to_status)?;
                for p in &req.partitions {
                    self.storage()
                        .truncate(&req.table, *p, req.max_txn)
                        .map_err(to_status)?;
                }
                None
            }
            wire::ACTION_COMPACT => {
                let req: wire::CompactRequest = wire::decode(&action.body).map_err(to_status)?;
                let storage = Arc::clone(&self.local.storage);
                let compaction = tokio::task::spawn_blocking(move || {
                    storage.compact_prepare(req.txn, &req.table, req.partition, &req.files)
                })
                .await
                .map_err(|e| Status::internal(format!("compaction task failed: {e}")))?
                .map_err(to_status)?;
                Some(wire::encode(&compaction).map_err(to_status)?)
            }
            wire::ACTION_MANIFEST => {
                let req: wire::PartitionRequest = wire::decode(&action.body).map_err(to_status)?;
                let manifest = self
                    .storage()
                    .manifest(&req.table, req.partition)
                    .map_err(to_status)?;
                Some(wire::encode(&manifest).map_err(to_status)?)
            }
            wire::ACTION_READ_FILE => {
                let req: wire::FileRequest = wire::decode(&action.body).map_err(to_status)?;
                let storage = Arc::clone(&self.local.storage);
                let bytes = tokio::task::spawn_blocking(move || {
                    storage.read_file(
                        &req.table,
                        req.partition,
                        &req.name,
                        req.offset,
                        crate::client::COPY_CHUNK_BYTES,
                    )
                })
                .await
                .map_err(|e| Status::internal(format!("read task failed: {e}")))?
                .map_err(to_status)?;
                Some(bytes)
            }
            wire::ACTION_INSTALL => {
                let req: wire::InstallRequest = wire::decode(&action.body).map_err(to_status)?;
                let installed = self.install(req).await.map_err(to_status)?;
                Some(wire::encode(&installed).map_err(to_status)?)
            }
            wire::ACTION_DROP_PARTITION => {
                let req: wire::PartitionRequest = wire::decode(&action.body).map_err(to_status)?;
                self.storage()
                    .drop_partition(&req.table, req.partition)
                    .map_err(to_status)?;
                None
            }
            wire::ACTION_PARTITIONS => {
                let held = self.storage().tables().map_err(to_status)?;
                Some(wire::encode(&held).map_err(to_status)?)
            }
            wire::ACTION_TABLES => {
                let tables: Vec<String> = self
                    .storage()
                    .tables()
                    .map_err(to_status)?
                    .into_keys()
                    .collect();
                Some(wire::encode(&tables).map_err(to_status)?)
            }
            wire::ACTION_DROP_TABLE => {
                let req: wire::TableRequest = wire::decode(&action.body).map_err(to_status)?;
                self.storage().drop_table(&req.table).map_err(to_status)?;
                None
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown worker action '{other}'"
                )));
            }
        };
        let results: Vec<Result<arrow_flight::Result, Status>> = body
            .into_iter()
            .map(|b| Ok(arrow_flight::Result { body: b.into() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(results))))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = [
            wire::ACTION_COMMIT,
            wire::ACTION_ABORT,
            wire::ACTION_STAGED,
            wire::ACTION_STATS,
            wire::ACTION_DROP_TABLE,
            wire::ACTION_TRUNCATE,
            wire::ACTION_COMPACT,
            wire::ACTION_MANIFEST,
            wire::ACTION_READ_FILE,
            wire::ACTION_INSTALL,
            wire::ACTION_DROP_PARTITION,
            wire::ACTION_TABLES,
            wire::ACTION_PARTITIONS,
            wire::ACTION_PROGRESS,
        ]
        .map(|a| {
            Ok(ActionType {
                r#type: a.to_string(),
                description: String::new(),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(actions))))
    }
}

/// Accepted connections with `TCP_NODELAY`: tonic sets it only on sockets it
/// accepts itself, and without it every small reply waits out the peer's
/// delayed ACK (~40 ms per round trip).
pub fn nodelay_incoming(
    listener: TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// A running worker: its id, URL and a handle to stop it.
pub struct WorkerHandle {
    pub id: String,
    pub url: String,
    pub addr: SocketAddr,
    active_scans: Arc<std::sync::atomic::AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    /// Partition scans reading this worker's disk right now; a cancelled
    /// query's scans are dropped, so this returns to 0.
    pub fn active_scans(&self) -> usize {
        self.active_scans.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops serving and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.task.await;
    }
}

/// Starts a worker serving `storage` on `listen` (use port 0 for any free port).
pub async fn start_worker(
    id: &str,
    listen: SocketAddr,
    storage: Arc<Storage>,
) -> datafusion::common::Result<WorkerHandle> {
    start_worker_with(id, listen, storage, None).await
}

/// [`start_worker`], serving TLS with `tls`; with a CA in it, every
/// caller presents a certificate the CA signed.
pub async fn start_worker_with(
    id: &str,
    listen: SocketAddr,
    storage: Arc<Storage>,
    tls: Option<&crate::tls::NodeTls>,
) -> datafusion::common::Result<WorkerHandle> {
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        DataFusionError::Execution(format!("worker {id} cannot listen on {listen}: {e}"))
    })?;
    let addr = listener.local_addr()?;
    let url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server
            .tls_config(tls.server(crate::tls::ClientCerts::Required))
            .map_err(|e| {
                DataFusionError::Configuration(format!(
                    "worker {id}: the TLS certificate or key is not usable: {e}"
                ))
            })?;
    }
    let active_scans = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let local = Arc::new(LocalStore {
        url: url.clone(),
        storage,
        active_scans: Arc::clone(&active_scans),
        progress: Default::default(),
    });

    let codec_local = Arc::clone(&local);
    let peers: Arc<dyn datafusion_distributed::ChannelResolver + Send + Sync> =
        Arc::new(crate::client::PeerChannels);
    let worker = Worker::from_session_builder(move |ctx: WorkerQueryContext| {
        let codec = TesseraCodec::for_worker(Arc::clone(&codec_local));
        let guard = crate::guard::plan_guard(codec_local.storage.root().to_path_buf());
        let peers = Arc::clone(&peers);
        async move {
            let mut state = ctx
                .builder
                .with_distributed_user_codec(codec)
                .with_distributed_channel_resolver(peers)
                .with_distributed_worker_plan_rewrite_handler(guard)
                .build();
            crate::checked::register_checked(&mut state)?;
            Ok(state)
        }
    });
    let mut session_state = SessionStateBuilder::new()
        .with_default_features()
        .with_distributed_user_codec(TesseraCodec::for_worker(Arc::clone(&local)))
        .build();
    crate::checked::register_checked(&mut session_state)?;
    let flight = WorkerFlightService {
        local,
        session: SessionContext::new_with_state(session_state),
        copies: crate::pacer::Pacer::default(),
    };
    let flight = FlightServiceServer::new(flight)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let (tx, rx) = oneshot::channel::<()>();
    let incoming = crate::tls::incoming(listener, tls.is_some());
    let worker_id = id.to_string();
    let task = tokio::spawn(async move {
        let result = server
            .layer(tonic::service::InterceptorLayer::new(
                crate::secret::check_secret as fn(_) -> _,
            ))
            .add_service(flight)
            .add_service(worker.into_worker_server())
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(worker = %worker_id, error = %e, "worker server failed");
        }
    });
    tracing::info!(worker = %id, %url, "worker listening");
    Ok(WorkerHandle {
        id: id.to_string(),
        url,
        addr,
        active_scans,
        shutdown: Some(tx),
        task,
    })
}
