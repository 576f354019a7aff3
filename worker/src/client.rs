//! `WorkerClient`: the coordinator's (and peers') handle on a worker's Flight
//! service, over a real gRPC channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

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

use crate::kind::ErrorKind;
use crate::secret::{MemberChannel, member_channel};
use crate::storage::{Compaction, DataFile, PartitionStats, StagedWrite};
use crate::unavailable::WorkerUnavailable;
use crate::wire::{self, MAX_MESSAGE_BYTES};

/// Turns a Flight error into an engine error, keeping the remote text intact.
/// A status made here from a broken connection names the worker; one the
/// worker sent that something behind it is unavailable keeps its text and
/// its kind.
pub fn flight_error(url: &str, e: FlightError) -> DataFusionError {
    match e {
        FlightError::Tonic(status) => {
            let local = std::error::Error::source(&*status).is_some();
            match (status.code(), local) {
                (tonic::Code::Unavailable, true) => WorkerUnavailable::error(format!(
                    "worker {url} is unreachable ({}); check that it is running, then retry",
                    status.message()
                )),
                (_, true) => WorkerUnavailable::error(format!(
                    "worker {url} went away during the call ({}); check that it is running, \
                     then retry",
                    status.message()
                )),
                (tonic::Code::Unavailable, false) => {
                    WorkerUnavailable::error(status.message().to_string())
                }
                (code, false) => ErrorKind::of_code(code).error(status.message()),
            }
        }
        FlightError::ExternalError(e) => DataFusionError::External(e),
        other => ErrorKind::Unavailable.error(format!("worker {url}: {other}")),
    }
}

/// A Flight connection to one worker. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkerClient {
    url: String,
    inner: FlightServiceClient<MemberChannel>,
}

/// How long a call to a worker may take before it fails, in milliseconds
/// (a prepare gets more for its bytes, see [`deadline_for_bytes`]).
static CALL_TIMEOUT_MS: AtomicU64 = AtomicU64::new(30_000);

/// The slowest a prepare's bytes are expected to travel and reach disk: a
/// bulk write's deadline grows by one second per this many bytes.
const SLOWEST_BYTES_PER_SEC: u64 = 8 << 20;

/// Bytes of a file one `read_file` call returns at most.
pub const COPY_CHUNK_BYTES: usize = 4 << 20;

/// Sets the deadline of every call to a worker (`--worker-timeout`).
pub fn set_call_timeout(timeout: Duration) {
    let ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    CALL_TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

/// The deadline of a call to a worker.
pub fn call_timeout() -> Duration {
    Duration::from_millis(CALL_TIMEOUT_MS.load(Ordering::Relaxed))
}

/// The deadline of a call that carries `bytes`.
pub fn deadline_for_bytes(bytes: u64) -> Duration {
    call_timeout() + Duration::from_secs(bytes / SLOWEST_BYTES_PER_SEC)
}

/// Runs one call to the worker at `url` within `limit`.
async fn within<T>(
    url: &str,
    what: &str,
    limit: Duration,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(DataFusionError::Execution(format!(
            "worker {url} did not answer {what} within {:.1} s; it may be hung or overloaded: \
             check it (or raise --worker-timeout), then retry",
            limit.as_secs_f64()
        ))),
    }
}

fn channels() -> &'static Mutex<HashMap<String, Channel>> {
    static CHANNELS: OnceLock<Mutex<HashMap<String, Channel>>> = OnceLock::new();
    CHANNELS.get_or_init(Default::default)
}

/// The process's one lazily connected channel to `url` (a worker or a
/// coordinator), shared by every client of it; `fresh` replaces it with a
/// new connection (the peer restarted).
pub fn shared_channel(url: &str, fresh: bool) -> Result<Channel> {
    let mut map = channels()
        .lock()
        .map_err(|_| DataFusionError::Internal("channel cache poisoned".into()))?;
    if fresh {
        map.remove(url);
    }
    if let Some(c) = map.get(url) {
        return Ok(c.clone());
    }
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| DataFusionError::Configuration(format!("bad address {url}: {e}")))?;
    if let Some(tls) = crate::tls::client_tls_for(url)? {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| DataFusionError::Configuration(format!("TLS for {url}: {e}")))?;
    }
    let c = endpoint
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect_lazy();
    map.insert(url.to_string(), c.clone());
    Ok(c)
}

/// Workers' connections to their peers (datafusion-distributed's shuffles
/// between stages), carrying the secret, on the process's shared channels.
pub struct PeerChannels;

#[async_trait::async_trait]
impl datafusion_distributed::ChannelResolver for PeerChannels {
    async fn get_worker_client_for_url(
        &self,
        url: &url::Url,
    ) -> Result<Box<dyn datafusion_distributed::WorkerChannel>> {
        use datafusion_distributed::grpc::{BoxCloneSyncChannel, create_worker_client};
        let channel = shared_channel(url.as_str(), false)?;
        Ok(create_worker_client(BoxCloneSyncChannel::new(
            member_channel(channel),
        )))
    }
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
        let channel = shared_channel(url, fresh)?;
        let inner = FlightServiceClient::new(member_channel(channel))
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
        let bytes: usize = pieces.iter().map(|(_, b)| b.get_array_memory_size()).sum();
        let limit = deadline_for_bytes(bytes as u64);
        // Preparing again overwrites the same staged files: safe to retry.
        within(&self.url, "a prepare", limit, async {
            match self.prepare_once(request, pieces.clone()).await {
                Err(e) if is_stale_connection(&e) => {
                    self.reconnect()?.prepare_once(request, pieces).await
                }
                other => other,
            }
        })
        .await
    }

    async fn prepare_once(
        &self,
        request: &wire::PrepareRequest,
        pieces: Vec<(wire::PieceHeader, RecordBatch)>,
    ) -> Result<Vec<DataFile>> {
        self.prepare_stream(request, futures::stream::iter(pieces))
            .await
    }

    /// Sends this worker's pieces of a transaction as they come (several
    /// pieces of one partition go to one file); durable on return, the
    /// files in the order each partition first came. Not retried: the
    /// pieces are gone once sent.
    pub async fn prepare_stream(
        &self,
        request: &wire::PrepareRequest,
        pieces: impl futures::Stream<Item = (wire::PieceHeader, RecordBatch)> + Send + 'static,
    ) -> Result<Vec<DataFile>> {
        let mut descriptor = Some(FlightDescriptor::new_cmd(wire::encode(request)?));
        let data = pieces
            .map(move |(header, batch)| {
                let metadata = wire::encode(&header).map(bytes::Bytes::from);
                match metadata {
                    Ok(metadata) => FlightDataEncoderBuilder::new()
                        .with_flight_descriptor(descriptor.take())
                        .with_metadata(metadata)
                        .build(futures::stream::iter([Ok(batch)]))
                        .boxed(),
                    Err(e) => futures::stream::iter([Err(FlightError::ExternalError(Box::new(e)))])
                        .boxed(),
                }
            })
            .flatten();
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
        let what = format!("'{kind}'");
        within(&self.url, &what, call_timeout(), async {
            match self.action_once(kind, body.clone()).await {
                Err(e) if is_stale_connection(&e) => {
                    self.reconnect()?.action_once(kind, body).await
                }
                other => other,
            }
        })
        .await
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

    /// The sizes of some partitions of `table`, once the transactions in
    /// `decided` (a snapshot's) are committed there.
    pub async fn stats(
        &self,
        table: &str,
        partitions: Vec<u32>,
        decided: &[u64],
    ) -> Result<Vec<PartitionStats>> {
        let body = wire::encode(&wire::StatsRequest {
            table: table.to_string(),
            partitions,
            decided: decided.to_vec(),
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

    /// A partition's manifest: the files it is made of.
    pub async fn manifest(&self, table: &str, partition: u32) -> Result<crate::storage::Manifest> {
        let body = wire::encode(&wire::PartitionRequest {
            table: table.to_string(),
            partition,
        })?;
        Ok(self
            .action(wire::ACTION_MANIFEST, body)
            .await?
            .unwrap_or_default())
    }

    /// Up to [`COPY_CHUNK_BYTES`] of a partition's file from `offset` on.
    pub async fn read_file(
        &self,
        table: &str,
        partition: u32,
        name: &str,
        offset: u64,
    ) -> Result<bytes::Bytes> {
        let body = wire::encode(&wire::FileRequest {
            table: table.to_string(),
            partition,
            name: name.to_string(),
            offset,
        })?;
        within(&self.url, "a file read", call_timeout(), async {
            let mut client = FlightClient::new_from_inner(self.inner.clone());
            let mut stream = client
                .do_action(Action::new(wire::ACTION_READ_FILE, body))
                .await
                .map_err(|e| self.err(e))?;
            Ok(stream
                .try_next()
                .await
                .map_err(|e| self.err(e))?
                .unwrap_or_default())
        })
        .await
    }

    /// Has this worker take `request.manifest` for a partition, copying the
    /// files it lacks from `request.source`; waits as long as copying the
    /// manifest's bytes may take.
    pub async fn install(&self, request: &wire::InstallRequest) -> Result<wire::Installed> {
        let bytes: u64 = request.manifest.files.iter().map(|f| f.bytes).sum();
        let body = wire::encode(request)?;
        within(
            &self.url,
            "a partition copy",
            // Paced copies take their time, and share it with others.
            deadline_for_bytes(bytes) * 2
                + match request.rate {
                    0 => Duration::ZERO,
                    rate => Duration::from_secs(bytes.saturating_mul(4) / rate),
                },
            async {
                Ok(self
                    .action_once(wire::ACTION_INSTALL, body)
                    .await?
                    .unwrap_or_default())
            },
        )
        .await
    }

    /// Removes one partition's files from this worker.
    pub async fn drop_partition(&self, table: &str, partition: u32) -> Result<()> {
        let body = wire::encode(&wire::PartitionRequest {
            table: table.to_string(),
            partition,
        })?;
        self.action::<()>(wire::ACTION_DROP_PARTITION, body)
            .await
            .map(|_| ())
    }

    /// What the scans of each of `queries` read on this worker so far.
    pub async fn progress(&self, queries: Vec<String>) -> Result<Vec<crate::ScanCount>> {
        let body = wire::encode(&wire::ProgressRequest { queries })?;
        Ok(self
            .action(wire::ACTION_PROGRESS, body)
            .await?
            .unwrap_or_default())
    }

    /// The storage keys of the tables this worker holds partitions of.
    pub async fn tables(&self) -> Result<Vec<String>> {
        Ok(self
            .action(wire::ACTION_TABLES, vec![])
            .await?
            .unwrap_or_default())
    }

    /// The partitions this worker holds directories of, by table storage
    /// key.
    pub async fn partitions(&self) -> Result<std::collections::BTreeMap<String, Vec<u32>>> {
        Ok(self
            .action(wire::ACTION_PARTITIONS, vec![])
            .await?
            .unwrap_or_default())
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
        // A whole partition's entries: four call deadlines.
        let limit = call_timeout() * 4;
        within(&self.url, "an index backfill read", limit, async {
            stream.try_collect().await.map_err(|e| self.err(e))
        })
        .await
    }

    /// Runs a partition scan on the worker and streams its rows back.
    /// The deadline covers the start of the stream, not its rows: a long
    /// scan streams for as long as it needs.
    pub async fn scan(&self, ticket: Vec<u8>) -> Result<FlightRecordBatchStream> {
        within(&self.url, "a scan", call_timeout(), async {
            match self.scan_once(ticket.clone()).await {
                Err(e) if is_stale_connection(&e) => self.reconnect()?.scan_once(ticket).await,
                other => other,
            }
        })
        .await
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
pub(crate) fn is_stale_connection(e: &DataFusionError) -> bool {
    e.to_string().contains("Service was not ready")
}
