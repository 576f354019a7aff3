//! Coordinators that follow the leader. Every coordinator on one etcd
//! serves clients; one of them leads (see [`EtcdMetastore::lead`]):
//!
//! ```text
//!   client ──► follower ── statement with effects (DDL, INSERT, ...) ──► leader
//!                 │  ◄──────────────── its result ─────────────────────────┘
//!                 │
//!                 ├── query: snapshot + catalog revision + members ◄── leader
//!                 │          (the snapshot stays pinned on the leader while
//!                 │           the follower's query runs)
//!                 └── plans and runs the query itself, on the workers
//! ```
//!
//! Only the leader writes the metastore and decides transactions, so one
//! place knows what is in flight and what is decided: a follower's query
//! reads at a snapshot the leader hands out, after its own catalog (kept
//! by a watch on the metastore) has caught up with the leader's last
//! change. A client therefore reads its own writes through any coordinator,
//! and sees every statement whole or not at all.

use std::any::Any;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
use arrow_flight::{Action, FlightClient, FlightData, FlightDescriptor, PutResult};
use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use serde::{Deserialize, Serialize};
use tessera_worker::secret::{MemberChannel, member_channel};
use tessera_worker::tls::member_url;
use tessera_worker::{ErrorKind, Snapshot, call_timeout, shared_channel};

use crate::membership::MemberWire;
use crate::metastore::EtcdMetastore;

/// The Flight action a follower takes a snapshot with (members only).
pub const SNAPSHOT_ACTION: &str = "tessera.snapshot";
/// What a follower asks for with [`SNAPSHOT_ACTION`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// Keep the snapshot pinned while the call stays open.
    pub pin: bool,
    /// A `fresh` read of an ASYNC index waits for the leader's applier to
    /// pass this transaction: wake it.
    pub fresh: Option<u64>,
}

/// The leader's answer to [`SNAPSHOT_ACTION`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotReply {
    pub snapshot: Snapshot,
    /// The metastore revision of the leader's last catalog change.
    pub revision: u64,
    /// The partition map's layout epoch when the snapshot was taken: a
    /// follower plans against a map with the same layouts.
    #[serde(default)]
    pub layout_epoch: Option<u64>,
    pub members: Vec<MemberWire>,
    /// Increases with every reply of one leader: replies to concurrent
    /// statements may arrive out of order, the members of an older one
    /// are not taken.
    pub sequence: u64,
    /// The leader that answered (filled in by the follower).
    #[serde(skip)]
    pub from: String,
}

/// Holds a snapshot pinned on the leader: the call that took it stays
/// open until this is dropped. When another coordinator takes over the
/// lead, the snapshot is pinned there too (see [`Follower::repin`]).
pub struct RemotePin {
    xmin: u64,
    holds: Mutex<Vec<Box<dyn Any + Send>>>,
}

impl RemotePin {
    /// Every transaction below this one is visible to the snapshot.
    pub fn xmin(&self) -> u64 {
        self.xmin
    }

    /// Keeps `hold` (an open pinning call, a pin) for as long as this.
    pub fn hold(&self, hold: Box<dyn Any + Send>) {
        if let Ok(mut holds) = self.holds.lock() {
            holds.push(hold);
        }
    }
}

impl std::fmt::Debug for RemotePin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemotePin(xmin {})", self.xmin)
    }
}

/// The Flight action that pins a snapshot a follower holds on a new
/// leader (members only), for as long as the call stays open.
pub const PIN_ACTION: &str = "tessera.snapshot.pin";

/// The body of [`PIN_ACTION`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PinRequest {
    pub xmin: u64,
}

/// How long a new leader merges no files, so that followers can pin their
/// running queries' snapshots on it first.
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(10);

/// A coordinator's link to the leader it follows.
#[derive(Debug)]
pub struct Follower {
    store: EtcdMetastore,
    /// This coordinator's own URL: it never forwards to itself.
    me: String,
    /// The leader's URL, as last read from etcd.
    leader: Mutex<Option<String>>,
    /// The snapshots this coordinator's running queries hold.
    pins: Mutex<Vec<Weak<RemotePin>>>,
}

/// Whether `status` was made by this process's transport (no answer from
/// the peer) rather than sent by the peer.
fn is_transport(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && std::error::Error::source(status).is_some()
}

impl Follower {
    pub fn new(store: EtcdMetastore, me: &str) -> Arc<Self> {
        Arc::new(Self {
            store,
            me: member_url(me),
            leader: Mutex::new(None),
            pins: Mutex::new(vec![]),
        })
    }

    /// Whether `holder` (a leader key's value) is this coordinator.
    pub fn is_me(&self, holder: &str) -> bool {
        member_url(holder) == self.me
    }

    pub fn store(&self) -> &EtcdMetastore {
        &self.store
    }

    /// The leader's URL; `fresh` reads it from etcd again.
    async fn leader(&self, fresh: bool) -> Result<String> {
        if !fresh && let Some(url) = self.leader.lock().ok().and_then(|l| l.clone()) {
            return Ok(url);
        }
        let Some(holder) = self.store.leader().await? else {
            return Err(ErrorKind::Unavailable.error(
                "no coordinator leads the cluster right now (the leader stopped); a standby takes \
                 over within the leader lease: retry in a few seconds",
            ));
        };
        let url = member_url(&holder);
        if url == self.me {
            return Err(ErrorKind::Unavailable.error(
                "this coordinator is taking over the lead of the cluster; retry in a moment",
            ));
        }
        if let Ok(mut l) = self.leader.lock() {
            *l = Some(url.clone());
        }
        Ok(url)
    }

    /// The error for a failed call to the leader at `url`; a transport
    /// failure makes the next call look the leader up again.
    fn failed(&self, url: &str, e: arrow_flight::error::FlightError) -> DataFusionError {
        use arrow_flight::error::FlightError;
        match e {
            FlightError::Tonic(s) if is_transport(&s) => {
                if let Ok(mut l) = self.leader.lock() {
                    *l = None;
                }
                let _ = shared_channel(url, true);
                ErrorKind::Unavailable.error(format!(
                    "the leading coordinator at {url} does not answer ({}); if it stopped, a \
                     standby takes over within the leader lease: retry then",
                    s.message()
                ))
            }
            FlightError::Tonic(s) => ErrorKind::of_code(s.code()).error(s.message().to_string()),
            other => ErrorKind::Unavailable.error(format!(
                "the leading coordinator at {url} answered badly: {other}"
            )),
        }
    }

    /// As [`Self::failed`], for a statement with effects passed to the
    /// leader: if the leader went away, it may have run it.
    fn failed_after_send(&self, url: &str, e: arrow_flight::error::FlightError) -> DataFusionError {
        use arrow_flight::error::FlightError;
        match e {
            FlightError::Tonic(s) if is_transport(&s) => {
                let _ = self.failed(url, FlightError::Tonic(s.clone()));
                ErrorKind::Unavailable.error(format!(
                    "the leading coordinator at {url} stopped answering ({}) after the statement \
                     was passed to it: it may or may not have been applied. Check (for example \
                     with a SELECT) before running it again; if the leader stopped, a standby \
                     takes over within the leader lease",
                    s.message()
                ))
            }
            other => self.failed(url, other),
        }
    }

    /// Runs a statement with effects on the leader, and returns its rows.
    pub async fn forward(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let url = self.leader(false).await?;
        let run = async {
            let mut client = FlightClient::new(member_channel(shared_channel(&url, false)?));
            let cmd = CommandStatementQuery {
                query: sql.to_string(),
                transaction_id: None,
            };
            let info = client
                .get_flight_info(FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec()))
                .await
                .map_err(|e| self.failed_after_send(&url, e))?;
            self.rows_of(&mut client, &url, info).await
        };
        run.await
    }

    /// The rows of a statement the leader ran (its FlightInfo).
    async fn rows_of(
        &self,
        client: &mut FlightClient<MemberChannel>,
        url: &str,
        info: arrow_flight::FlightInfo,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let schema = Arc::new(info.clone().try_decode_schema()?);
        let mut batches = vec![];
        for endpoint in info.endpoint {
            let Some(ticket) = endpoint.ticket else {
                continue;
            };
            let stream = client
                .do_get(ticket)
                .await
                .map_err(|e| self.failed_after_send(url, e))?;
            let mut part: Vec<RecordBatch> = stream
                .try_collect()
                .await
                .map_err(|e| self.failed_after_send(url, e))?;
            batches.append(&mut part);
        }
        Ok((schema, batches))
    }

    /// Runs a statement with effects and parameter values on the leader
    /// (as a prepared statement there), and returns its rows.
    pub async fn forward_prepared(
        &self,
        sql: &str,
        rows: &[Vec<ScalarValue>],
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        use arrow_flight::sql::{
            ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
            ActionCreatePreparedStatementResult, Any, CommandPreparedStatementQuery,
        };
        let url = self.leader(false).await?;
        let mut client = FlightClient::new(member_channel(shared_channel(&url, false)?));
        let request = ActionCreatePreparedStatementRequest {
            query: sql.to_string(),
            transaction_id: None,
        };
        let mut created = client
            .do_action(Action::new(
                "CreatePreparedStatement",
                request.as_any().encode_to_vec(),
            ))
            .await
            .map_err(|e| self.failed(&url, e))?;
        let body = created
            .try_next()
            .await
            .map_err(|e| self.failed(&url, e))?
            .ok_or_else(|| ErrorKind::Unavailable.error(format!("{url} answered nothing")))?;
        let prepared: ActionCreatePreparedStatementResult = Any::decode(body)
            .ok()
            .and_then(|any| any.unpack().ok().flatten())
            .ok_or_else(|| {
                DataFusionError::Execution(format!(
                    "the leader at {url} answered CreatePreparedStatement with something else"
                ))
            })?;
        let handle = prepared.prepared_statement_handle;
        let values = params_batch(rows)?;
        let command = CommandPreparedStatementQuery {
            prepared_statement_handle: handle.clone(),
        };
        let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
        let data = arrow_flight::encode::FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(descriptor.clone()))
            .build(futures::stream::iter([Ok(values)]));
        let run = async {
            let _: Vec<PutResult> = client
                .do_put(data)
                .await
                .map_err(|e| self.failed(&url, e))?
                .try_collect()
                .await
                .map_err(|e| self.failed(&url, e))?;
            let info = client
                .get_flight_info(descriptor)
                .await
                .map_err(|e| self.failed_after_send(&url, e))?;
            self.rows_of(&mut client, &url, info).await
        };
        let result = run.await;
        let close = ActionClosePreparedStatementRequest {
            prepared_statement_handle: handle,
        };
        let _ = client
            .do_action(Action::new(
                "ClosePreparedStatement",
                close.as_any().encode_to_vec(),
            ))
            .await;
        result
    }

    /// Passes a DoPut (bulk ingest) to the leader as it streams in, and
    /// returns the rows it wrote.
    pub async fn forward_put(
        &self,
        data: impl Stream<Item = std::result::Result<FlightData, tonic::Status>> + Send + 'static,
    ) -> Result<i64> {
        let url = self.leader(false).await?;
        let mut client = FlightClient::new(member_channel(shared_channel(&url, false)?));
        let data = data.map_err(|s| arrow_flight::error::FlightError::Tonic(Box::new(s)));
        let results: Vec<PutResult> = client
            .do_put(data)
            .await
            .map_err(|e| self.failed_after_send(&url, e))?
            .try_collect()
            .await
            .map_err(|e| self.failed_after_send(&url, e))?;
        let count = results
            .first()
            .map(|r| arrow_flight::sql::DoPutUpdateResult::decode(r.app_metadata.as_ref()))
            .transpose()
            .map_err(|e| {
                DataFusionError::Execution(format!("the leader's ingest result is unreadable: {e}"))
            })?
            .map_or(0, |r| r.record_count);
        Ok(count)
    }

    /// Passes a worker's membership call to the leader (with this
    /// cluster's secret: the caller's was checked here) and returns its answer.
    pub async fn forward_action(&self, action: Action) -> Result<bytes::Bytes> {
        let url = self.leader(false).await?;
        let mut stream = self.action(&url, action).await?;
        let first = stream
            .next()
            .await
            .ok_or_else(|| ErrorKind::Unavailable.error(format!("{url} answered nothing")))??;
        Ok(first.body)
    }

    async fn action(
        &self,
        url: &str,
        action: Action,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<arrow_flight::Result>> + Send>>> {
        let channel = member_channel(shared_channel(url, false)?);
        let mut client = FlightServiceClient::new(channel);
        let call = tokio::time::timeout(call_timeout(), client.do_action(action));
        let stream = match call.await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                return Err(self.failed(url, arrow_flight::error::FlightError::Tonic(Box::new(s))));
            }
            Err(_) => {
                let _ = shared_channel(url, true);
                if let Ok(mut l) = self.leader.lock() {
                    *l = None;
                }
                return Err(ErrorKind::Unavailable.error(format!(
                    "the leading coordinator at {url} did not answer within {} s; if it hangs or \
                     stopped, a standby takes over within the leader lease: retry then",
                    call_timeout().as_secs()
                )));
            }
        };
        let url = url.to_string();
        Ok(stream
            .map_err(move |s| {
                ErrorKind::of_code(s.code()).error(format!("leader {url}: {}", s.message()))
            })
            .boxed())
    }

    /// A snapshot from the leader, pinned there until the returned pin is
    /// dropped if `pin`; the leader is looked up again once if it does not
    /// answer (a new one may have taken over).
    pub async fn snapshot(
        &self,
        request: SnapshotRequest,
    ) -> Result<(SnapshotReply, Option<Arc<RemotePin>>)> {
        let url = self.leader(false).await?;
        match self.snapshot_from(&url, request).await {
            Ok(v) => Ok(v),
            Err(_) => {
                let url = self.leader(true).await?;
                self.snapshot_from(&url, request).await
            }
        }
    }

    async fn snapshot_from(
        &self,
        url: &str,
        request: SnapshotRequest,
    ) -> Result<(SnapshotReply, Option<Arc<RemotePin>>)> {
        let body = serde_json::to_vec(&request)
            .map_err(|e| DataFusionError::Internal(format!("snapshot request: {e}")))?;
        let mut stream = self.action(url, Action::new(SNAPSHOT_ACTION, body)).await?;
        let first = tokio::time::timeout(call_timeout(), stream.next())
            .await
            .map_err(|_| {
                ErrorKind::Unavailable.error(format!(
                    "the leading coordinator at {url} gave no snapshot within {} s; retry",
                    call_timeout().as_secs()
                ))
            })?
            .ok_or_else(|| ErrorKind::Unavailable.error(format!("{url} answered nothing")))??;
        let mut reply: SnapshotReply = serde_json::from_slice(&first.body).map_err(|e| {
            DataFusionError::Execution(format!(
                "the leading coordinator at {url} sent an unreadable snapshot ({e}); run the same \
                 Tessera version on every coordinator"
            ))
        })?;
        reply.from = url.to_string();
        let pin = request.pin.then(|| {
            let pin = Arc::new(RemotePin {
                xmin: reply.snapshot.xmin(),
                holds: Mutex::new(vec![Box::new(stream)]),
            });
            if let Ok(mut pins) = self.pins.lock() {
                pins.retain(|p| p.strong_count() > 0);
                pins.push(Arc::downgrade(&pin));
            }
            pin
        });
        Ok((reply, pin))
    }
}

impl Follower {
    /// The snapshots this coordinator's running queries hold now.
    pub fn open_pins(&self) -> Vec<Arc<RemotePin>> {
        let Ok(mut pins) = self.pins.lock() else {
            return vec![];
        };
        pins.retain(|p| p.strong_count() > 0);
        pins.iter().filter_map(Weak::upgrade).collect()
    }

    /// Pins every snapshot this coordinator's running queries hold on the
    /// leader that just took over, so that its compaction keeps their
    /// files; tried until it answers, for up to [`TAKEOVER_GRACE`].
    pub async fn repin(self: Arc<Self>) {
        let deadline = tokio::time::Instant::now() + TAKEOVER_GRACE;
        let mut pending = self.open_pins();
        while !pending.is_empty() && tokio::time::Instant::now() < deadline {
            let url = match self.leader(true).await {
                Ok(url) => url,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let mut failed = vec![];
            for pin in pending {
                match self.pin_on(&url, pin.xmin).await {
                    Ok(stream) => pin.hold(stream),
                    Err(_) => failed.push(pin),
                }
            }
            pending = failed;
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if !pending.is_empty() {
            tracing::warn!(
                queries = pending.len(),
                "running queries' snapshots could not be pinned on the new leader; they may \
                 fail if it compacts their files"
            );
        }
    }

    async fn pin_on(&self, url: &str, xmin: u64) -> Result<Box<dyn Any + Send>> {
        let body = serde_json::to_vec(&PinRequest { xmin })
            .map_err(|e| DataFusionError::Internal(format!("pin request: {e}")))?;
        let mut stream = self.action(url, Action::new(PIN_ACTION, body)).await?;
        // The first answer says the pin is in place.
        tokio::time::timeout(call_timeout(), stream.next())
            .await
            .map_err(|_| ErrorKind::Unavailable.error(format!("{url} did not pin in time")))?
            .ok_or_else(|| ErrorKind::Unavailable.error(format!("{url} answered nothing")))??;
        Ok(Box::new(stream))
    }
}

/// Rows of parameter values as one batch: a column per parameter.
fn params_batch(rows: &[Vec<ScalarValue>]) -> Result<RecordBatch> {
    let width = rows.first().map_or(0, Vec::len);
    let mut fields = vec![];
    let mut columns = vec![];
    for i in 0..width {
        let column = ScalarValue::iter_to_array(
            rows.iter()
                .map(|r| r.get(i).cloned().unwrap_or(ScalarValue::Null)),
        )?;
        fields.push(Field::new(
            format!("${}", i + 1),
            column.data_type().clone(),
            true,
        ));
        columns.push(column);
    }
    let schema = Arc::new(Schema::new(fields));
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    Ok(RecordBatch::try_new_with_options(
        schema, columns, &options,
    )?)
}

/// How long a follower waits for its watch to bring the catalog up to
/// the leader's revision before it reads the keys itself.
pub const CATCH_UP_WAIT: Duration = Duration::from_millis(500);
