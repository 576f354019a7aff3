//! `WorkerClient`: the coordinator's (and peers') handle on a worker's Flight
//! service, over a real gRPC channel.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, FlightClient, FlightDescriptor, Ticket};
use datafusion::arrow::array::RecordBatch;
use datafusion::common::{DataFusionError, Result};
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use crate::storage::{Compaction, DataFile, PartitionStats, StagedWrite};
use crate::wire::{self, MAX_MESSAGE_BYTES};

/// Turns a Flight error into an engine error, keeping the remote text intact.
pub fn flight_error(url: &str, e: FlightError) -> DataFusionError {
    match e {
        FlightError::Tonic(status) => match status.code() {
            tonic::Code::Unavailable => DataFusionError::Execution(format!(
                "worker {url} is unreachable ({}); check that it is running, then retry",
                status.message()
            )),
            _ => DataFusionError::Execution(status.message().to_string()),
        },
        FlightError::ExternalError(e) => DataFusionError::External(e),
        other => DataFusionError::Execution(format!("worker {url}: {other}")),
    }
}

/// A Flight connection to one worker. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkerClient {
    url: String,
    inner: FlightServiceClient<Channel>,
}

fn channels() -> &'static Mutex<HashMap<String, Channel>> {
    static CHANNELS: OnceLock<Mutex<HashMap<String, Channel>>> = OnceLock::new();
    CHANNELS.get_or_init(Default::default)
}

impl WorkerClient {
    /// Connects lazily: the first call opens the connection, later ones share it.
    pub fn connect(url: &str) -> Result<Self> {
        Self::open(url, false)
    }

    /// A client on a new connection, replacing the shared one: after a
    /// peer restarts (possibly on the same port), the cached connection's
    /// first call fails with "Service was not ready" before it reconnects.
    fn reconnect(&self) -> Result<Self> {
        Self::open(&self.url, true)
    }

    fn open(url: &str, fresh: bool) -> Result<Self> {
        let channel = {
            let mut map = channels()
                .lock()
                .map_err(|_| DataFusionError::Internal("channel cache poisoned".into()))?;
            if fresh {
                map.remove(url);
            }
            match map.get(url) {
                Some(c) => c.clone(),
                None => {
                    let c = Endpoint::from_shared(url.to_string())
                        .map_err(|e| {
                            DataFusionError::Configuration(format!("bad worker url {url}: {e}"))
                        })?
                        .tcp_nodelay(true)
                        .connect_lazy();
                    map.insert(url.to_string(), c.clone());
                    c
                }
            }
        };
        let inner = FlightServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            url: url.to_string(),
            inner,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn err(&self, e: FlightError) -> DataFusionError {
        flight_error(&self.url, e)
    }

    /// Sends this worker's pieces of a transaction in one call: each piece
    /// the rows of one partition. Durable on return; the files in order.
    pub async fn prepare(
        &self,
        request: &wire::PrepareRequest,
        pieces: Vec<(wire::PieceHeader, RecordBatch)>,
    ) -> Result<Vec<DataFile>> {
        // Preparing again overwrites the same staged files: safe to retry.
        match self.prepare_once(request, pieces.clone()).await {
            Err(e) if is_stale_connection(&e) => {
                self.reconnect()?.prepare_once(request, pieces).await
            }
            other => other,
        }
    }

    async fn prepare_once(
        &self,
        request: &wire::PrepareRequest,
        pieces: Vec<(wire::PieceHeader, RecordBatch)>,
    ) -> Result<Vec<DataFile>> {
        let mut descriptor = Some(FlightDescriptor::new_cmd(wire::encode(request)?));
        let mut streams = vec![];
        for (header, batch) in pieces {
            // A new encoder per piece: its first message is the piece's
            // schema, tagged with where the rows go.
            let encoder = FlightDataEncoderBuilder::new()
                .with_flight_descriptor(descriptor.take())
                .with_metadata(wire::encode(&header)?.into())
                .build(futures::stream::iter([Ok(batch)]));
            streams.push(encoder);
        }
        let data = futures::stream::iter(streams).flatten();
        let mut client = FlightClient::new_from_inner(self.inner.clone());
        let mut results = client.do_put(data).await.map_err(|e| self.err(e))?;
        match results.next().await {
            Some(Ok(r)) => wire::decode(&r.app_metadata),
            Some(Err(e)) => Err(self.err(e)),
            None => Err(DataFusionError::Execution(format!(
                "worker {} closed the write without an answer",
                self.url
            ))),
        }
    }

    /// Runs an action; every action is idempotent, so one retry on a new
    /// connection is safe.
    async fn action<T: DeserializeOwned>(&self, kind: &str, body: Vec<u8>) -> Result<Option<T>> {
        match self.action_once(kind, body.clone()).await {
            Err(e) if is_stale_connection(&e) => self.reconnect()?.action_once(kind, body).await,
            other => other,
        }
    }

    async fn action_once<T: DeserializeOwned>(
        &self,
        kind: &str,
        body: Vec<u8>,
    ) -> Result<Option<T>> {
        let mut client = FlightClient::new_from_inner(self.inner.clone());
        let mut stream = client
            .do_action(Action::new(kind, body))
            .await
            .map_err(|e| self.err(e))?;
        match stream.try_next().await.map_err(|e| self.err(e))? {
            Some(bytes) => Ok(Some(wire::decode(bytes.as_ref())?)),
            None => Ok(None),
        }
    }

    pub async fn commit(&self, txn: u64, writes: Vec<StagedWrite>) -> Result<()> {
        let body = wire::encode(&wire::CommitRequest { txn, writes })?;
        self.action::<()>(wire::ACTION_COMMIT, body)
            .await
            .map(|_| ())
    }

    pub async fn abort(&self, txn: u64) -> Result<()> {
        let body = wire::encode(&wire::TxnRequest { txn })?;
        self.action::<()>(wire::ACTION_ABORT, body)
            .await
            .map(|_| ())
    }

    pub async fn staged(&self) -> Result<Vec<StagedWrite>> {
        Ok(self
            .action(wire::ACTION_STAGED, vec![])
            .await?
            .unwrap_or_default())
    }

    pub async fn stats(&self, table: &str, partitions: Vec<u32>) -> Result<Vec<PartitionStats>> {
        let body = wire::encode(&wire::StatsRequest {
            table: table.to_string(),
            partitions,
        })?;
        Ok(self
            .action(wire::ACTION_STATS, body)
            .await?
            .unwrap_or_default())
    }

    /// Stages a merge of a partition's small files; `None` if it has too
    /// few to merge.
    pub async fn compact(&self, request: &wire::CompactRequest) -> Result<Option<Compaction>> {
        let body = wire::encode(request)?;
        self.action::<Option<Compaction>>(wire::ACTION_COMPACT, body)
            .await
            .map(Option::flatten)
    }

    pub async fn truncate(&self, table: &str, partitions: Vec<u32>, max_txn: u64) -> Result<()> {
        let body = wire::encode(&wire::TruncateRequest {
            table: table.to_string(),
            partitions,
            max_txn,
        })?;
        self.action::<()>(wire::ACTION_TRUNCATE, body)
            .await
            .map(|_| ())
    }

    pub async fn drop_table(&self, table: &str) -> Result<()> {
        let body = wire::encode(&wire::TableRequest {
            table: table.to_string(),
        })?;
        self.action::<()>(wire::ACTION_DROP_TABLE, body)
            .await
            .map(|_| ())
    }

    /// The index entries of a partition's rows up to a transaction.
    pub async fn index_entries(&self, req: &wire::EntriesRequest) -> Result<Vec<RecordBatch>> {
        let mut ticket = wire::ENTRIES_TICKET.to_vec();
        ticket.extend(wire::encode(req)?);
        let stream = self.scan(ticket).await?;
        stream.try_collect().await.map_err(|e| self.err(e))
    }

    /// Runs a partition scan on the worker and streams its rows back.
    pub async fn scan(&self, ticket: Vec<u8>) -> Result<FlightRecordBatchStream> {
        match self.scan_once(ticket.clone()).await {
            Err(e) if is_stale_connection(&e) => self.reconnect()?.scan_once(ticket).await,
            other => other,
        }
    }

    async fn scan_once(&self, ticket: Vec<u8>) -> Result<FlightRecordBatchStream> {
        let mut client = FlightClient::new_from_inner(self.inner.clone());
        client
            .do_get(Ticket::new(ticket))
            .await
            .map_err(|e| self.err(e))
    }
}

/// A call that failed before reaching the peer because the shared
/// connection was to a server that has since gone: worth one retry.
fn is_stale_connection(e: &DataFusionError) -> bool {
    e.to_string().contains("Service was not ready")
}
