//! A worker's side of membership: it joins a coordinator (getting a stable
//! id at its first join, kept in its data dir), then heartbeats. Both are
//! Flight actions on the coordinator's service; the coordinator decides
//! `up` / `suspect` / `down` from the heartbeats' age.
//!
//! ```text
//!   worker                                   coordinator
//!   bind, serve ──────────────────────────►
//!   join {id?, url, version, started_at_ms} ──► assign id (first join), record
//!                                            url, commit decided writes on it,
//!   ◄──────────────── {id, heartbeat_ms} ─── abort never-decided ones
//!   every heartbeat_ms: heartbeat ─────────► last seen = now
//!   ◄──────────────────────── {known} ─────  unknown (coordinator lost it,
//!                                            url changed): join again
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_flight::{Action, FlightClient};
use datafusion::common::{DataFusionError, Result};
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::kind::ErrorKind;

pub const JOIN_ACTION: &str = "tessera.worker.join";
pub const HEARTBEAT_ACTION: &str = "tessera.worker.heartbeat";

/// The file in a worker's data dir that keeps its id.
pub const ID_FILE: &str = "worker.id";

/// What a worker says of itself when it joins and at every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberHello {
    /// `None` at the first join: the coordinator gives one.
    pub id: Option<String>,
    /// Where the coordinator and peers reach it (its advertised address).
    pub url: String,
    pub version: String,
    /// Unix milliseconds when the process started: tells a restart from
    /// the same process joining again.
    pub started_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReply {
    pub id: String,
    pub heartbeat_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// `false`: the coordinator does not know this worker at this URL; it
    /// must join again.
    pub known: bool,
}

/// The id kept in `dir`, if the worker joined before.
pub fn read_id(dir: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(dir.join(ID_FILE)) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DataFusionError::Execution(format!(
            "cannot read {}: {e}",
            dir.join(ID_FILE).display()
        ))),
    }
}

/// Keeps `id` in `dir` (written whole, then renamed into place).
pub fn write_id(dir: &Path, id: &str) -> Result<()> {
    let tmp = dir.join(format!("{ID_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        std::fs::write(&tmp, format!("{id}\n"))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dir.join(ID_FILE))?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        DataFusionError::Execution(format!(
            "cannot keep the worker id in {}: {e}",
            dir.join(ID_FILE).display()
        ))
    })
}

/// Unix milliseconds now.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One membership call on the process's shared channel to `coordinator`,
/// within `timeout`; a failed call drops that channel, so the next one
/// connects anew (the coordinator may have restarted).
async fn call<T: DeserializeOwned>(
    coordinator: &str,
    kind: &str,
    hello: &MemberHello,
    timeout: Duration,
) -> Result<T> {
    let attempt = || async {
        let result = tokio::time::timeout(timeout, call_once(coordinator, kind, hello))
            .await
            .unwrap_or_else(|_| {
                Err(ErrorKind::Unavailable.error(format!(
                    "coordinator {coordinator}: no answer within {} ms",
                    timeout.as_millis()
                )))
            });
        if result.is_err() {
            crate::client::shared_channel(coordinator, true)?;
        }
        result
    };
    match attempt().await {
        // The shared connection was to a server since gone (a coordinator
        // restarted on the same port): once more, on the new connection.
        Err(e) if crate::client::is_stale_connection(&e) => attempt().await,
        other => other,
    }
}

async fn call_once<T: DeserializeOwned>(
    coordinator: &str,
    kind: &str,
    hello: &MemberHello,
) -> Result<T> {
    let unreachable =
        |why: String| ErrorKind::Unavailable.error(format!("coordinator {coordinator}: {why}"));
    let channel = crate::client::shared_channel(coordinator, false)?;
    let body = serde_json::to_vec(hello)
        .map_err(|e| DataFusionError::Internal(format!("membership message: {e}")))?;
    let mut client = FlightClient::new_from_inner(
        arrow_flight::flight_service_client::FlightServiceClient::new(
            crate::secret::member_channel(channel),
        ),
    );
    let mut stream = client
        .do_action(Action::new(kind, body))
        .await
        .map_err(|e| match e {
            arrow_flight::error::FlightError::Tonic(s) if s.code() != tonic::Code::Unavailable => {
                ErrorKind::of_code(s.code())
                    .error(format!("coordinator {coordinator}: {}", s.message()))
            }
            other => unreachable(other.to_string()),
        })?;
    let reply = stream
        .try_next()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .ok_or_else(|| unreachable("no answer".to_string()))?;
    serde_json::from_slice(&reply).map_err(|e| {
        DataFusionError::Execution(format!(
            "coordinator {coordinator} answered '{kind}' with something else ({e}); are both \
             the same Tessera version?"
        ))
    })
}

/// A worker's membership: which coordinators to join and what to tell them.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Coordinator URLs (`http://host:port`), tried in turn.
    pub coordinators: Vec<String>,
    /// The worker's data dir, where its id is kept.
    pub dir: PathBuf,
    pub hello: MemberHello,
}

impl Membership {
    /// Joins the first coordinator that accepts (the one that answered
    /// last, first); keeps a newly given id. A join may take a while: the
    /// coordinator commits the writes this worker missed first.
    pub async fn join(&mut self) -> Result<JoinReply> {
        let reply: JoinReply = self.ask(JOIN_ACTION, Duration::from_secs(60)).await?;
        if self.hello.id.as_deref() != Some(reply.id.as_str()) {
            write_id(&self.dir, &reply.id)?;
            self.hello.id = Some(reply.id.clone());
        }
        Ok(reply)
    }

    /// Asks the coordinators in turn, the one that answered last first,
    /// and remembers which answered.
    async fn ask<T: DeserializeOwned>(&mut self, kind: &str, timeout: Duration) -> Result<T> {
        let mut last = None;
        for i in 0..self.coordinators.len() {
            match call::<T>(&self.coordinators[i], kind, &self.hello, timeout).await {
                Ok(r) => {
                    self.coordinators[..=i].rotate_right(1);
                    return Ok(r);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            ErrorKind::InvalidArgument.error("no coordinator to join (--join is empty)")
        }))
    }

    /// Joins (retrying until a coordinator accepts), then heartbeats every
    /// interval the coordinator asked for, joining again when it no
    /// longer knows this worker. Runs until the task is dropped.
    pub async fn run(mut self, first: Option<JoinReply>) {
        let mut reply = first;
        let mut backoff = Duration::from_millis(100);
        loop {
            let interval = match &reply {
                Some(r) => Duration::from_millis(r.heartbeat_ms.max(50)),
                None => match self.join().await {
                    Ok(r) => {
                        tracing::info!(id = %r.id, "joined the cluster");
                        backoff = Duration::from_millis(100);
                        reply = Some(r);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot join a coordinator yet; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            tokio::time::sleep(interval).await;
            // A beat that takes longer than the interval is as good as lost.
            let beat = self
                .ask::<HeartbeatReply>(HEARTBEAT_ACTION, interval.max(Duration::from_millis(500)));
            match beat.await {
                Ok(HeartbeatReply { known: true }) => {}
                Ok(HeartbeatReply { known: false }) => {
                    tracing::info!("the coordinator does not know this worker; joining again");
                    reply = None;
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }
}
