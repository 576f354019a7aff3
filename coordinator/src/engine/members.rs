//! Workers joining and heartbeating, `SHOW WORKERS` and `ALTER WORKER`.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Array, StringArray, TimestampMillisecondArray, UInt64Array,
};
use datafusion::common::Result;
use tessera_sql::WorkerAction;
use tessera_worker::membership::{HeartbeatReply, JoinReply, MemberHello, unix_now_ms};
use tessera_worker::{ErrorKind, WorkerClient};

use super::{Coordinator, Planned, ddl::ready_with_nulls};
use crate::catalog_state::{AdminState, MemberRecord};
use crate::membership::WorkerState;

/// The URL a worker advertises must be one others can dial.
fn check_url(url: &str) -> Result<()> {
    let parsed = url::Url::parse(url).map_err(|e| {
        ErrorKind::InvalidArgument.error(format!("worker address '{url}' is not a URL: {e}"))
    })?;
    let unspecified = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_unspecified(),
        Some(url::Host::Ipv6(ip)) => ip.is_unspecified(),
        Some(url::Host::Domain(_)) => false,
        None => true,
    };
    if unspecified || parsed.port().is_none() {
        return Err(ErrorKind::InvalidArgument.error(format!(
            "worker address '{url}' cannot be dialled; give the worker --advertise HOST:PORT"
        )));
    }
    Ok(())
}

impl Coordinator {
    /// A worker joins (or comes back, perhaps at another address): it gets
    /// an id if it has none, its address is recorded, and the decided
    /// writes that concern it are committed on it (and never-decided ones
    /// dropped) before it serves reads.
    pub async fn join(&self, hello: MemberHello) -> Result<JoinReply> {
        check_url(&hello.url)?;
        let _one_at_a_time = self.joining.lock().await;
        let membership = self.catalog.membership();
        let id = match &hello.id {
            Some(id) => id.clone(),
            None => self.catalog.next_worker_id().await?,
        };
        // One id, one process: a second worker on a copy of a data dir
        // must not take over the first's partitions while it is alive.
        if let Some(current) = self.catalog.members()?.get(&id)
            && current != &hello.url
            && membership.state(&id)? != WorkerState::Down
            && membership
                .liveness(&id)?
                .is_some_and(|l| l.started_at_ms != hello.started_at_ms)
        {
            return Err(ErrorKind::AlreadyExists.error(format!(
                "worker {id} is already up at {current}; two workers cannot share one data dir \
                 (this one would be {}). Stop the other, or give this one an empty --data-dir",
                hello.url
            )));
        }
        // Reachable and caught up first: a worker that cannot be called
        // back is not recorded at all.
        self.resolve_writes_on(&id, &hello.url).await?;
        // A member coming back may hold files of tables dropped while it
        // was away. A worker new to this catalog is left alone: whatever it
        // holds is not this cluster's to remove.
        if self.catalog.members()?.contains_key(&id) {
            self.remove_orphans_later(&id, &hello.url);
        }
        self.catalog
            .update(|s| {
                let record = s.members.entry(id.clone()).or_insert(MemberRecord {
                    url: hello.url.clone(),
                    admin: AdminState::Active,
                });
                record.url = hello.url.clone();
                Ok(())
            })
            .await?;
        membership.joined(&id, &hello.url, &hello.version, hello.started_at_ms)?;
        tracing::info!(worker = %id, url = %hello.url, "worker joined");
        self.rebalancer.wake();
        Ok(JoinReply {
            id,
            heartbeat_ms: u64::try_from(membership.heartbeat_interval().as_millis())
                .unwrap_or(1000),
        })
    }

    pub fn heartbeat(&self, hello: &MemberHello) -> Result<HeartbeatReply> {
        let Some(id) = &hello.id else {
            return Ok(HeartbeatReply { known: false });
        };
        let known = self.catalog.membership().heartbeat(
            id,
            &hello.url,
            &hello.version,
            hello.started_at_ms,
        )?;
        Ok(HeartbeatReply { known })
    }

    /// Commits on worker `id` the decided writes it holds and aborts its
    /// staged writes that were never decided.
    pub(super) async fn resolve_writes_on(&self, id: &str, url: &str) -> Result<()> {
        let client = WorkerClient::connect(url)?;
        let state = self.catalog.state()?;
        for (txn, by_worker) in &state.decided {
            if let Some(writes) = by_worker.get(id) {
                client.commit(*txn, writes.clone()).await?;
            }
        }
        self.abort_leftovers(id, url).await
    }

    /// `SHOW WORKERS`.
    pub(super) fn show_workers(&self) -> Result<Planned> {
        let state = self.catalog.state()?;
        // Partitions led, copies held (the leader's included), and the
        // bytes of the copies held.
        let mut partitions: BTreeMap<&str, u64> = BTreeMap::new();
        let mut held: BTreeMap<&str, u64> = BTreeMap::new();
        let mut bytes: BTreeMap<&str, u64> = BTreeMap::new();
        for (table, placements) in &state.map.tables {
            for p in placements {
                *partitions.entry(p.leader()).or_default() += 1;
                let b = state.partition_stats(table, p.id).bytes;
                for w in &p.replicas {
                    *held.entry(w.as_str()).or_default() += 1;
                    *bytes.entry(w.as_str()).or_default() += b;
                }
            }
        }
        let view = self.catalog.membership().view()?;
        let now = unix_now_ms();
        let column = |f: &dyn Fn(&crate::membership::MemberView) -> Option<String>| {
            Arc::new(view.iter().map(f).collect::<StringArray>()) as ArrayRef
        };
        ready_with_nulls(
            vec![
                ("id", column(&|m| Some(m.id.clone()))),
                ("address", column(&|m| Some(m.url.clone()))),
                ("state", column(&|m| Some(m.state.as_str().to_string()))),
                (
                    "partitions",
                    Arc::new(UInt64Array::from_iter_values(
                        view.iter()
                            .map(|m| partitions.get(m.id.as_str()).copied().unwrap_or(0)),
                    )),
                ),
                (
                    "held",
                    Arc::new(UInt64Array::from_iter_values(
                        view.iter()
                            .map(|m| held.get(m.id.as_str()).copied().unwrap_or(0)),
                    )),
                ),
                (
                    "bytes",
                    Arc::new(UInt64Array::from_iter_values(
                        view.iter()
                            .map(|m| bytes.get(m.id.as_str()).copied().unwrap_or(0)),
                    )),
                ),
                (
                    "last_heartbeat",
                    Arc::new(
                        view.iter()
                            .map(|m| m.liveness.as_ref().map(|l| l.last_heartbeat_unix_ms))
                            .collect::<TimestampMillisecondArray>()
                            .with_timezone("UTC"),
                    ),
                ),
                (
                    "version",
                    column(&|m| {
                        m.liveness
                            .as_ref()
                            .map(|l| l.version.clone())
                            .filter(|v| !v.is_empty())
                    }),
                ),
                (
                    "uptime_s",
                    Arc::new(
                        view.iter()
                            .map(|m| {
                                m.liveness
                                    .as_ref()
                                    .filter(|l| l.started_at_ms > 0 && m.state != WorkerState::Down)
                                    .map(|l| (now.saturating_sub(l.started_at_ms) / 1000) as i64)
                            })
                            .collect::<Int64Array>(),
                    ),
                ),
            ],
            &["last_heartbeat", "version", "uptime_s"],
        )
    }

    /// `ALTER WORKER id DRAIN | ACTIVATE | DECOMMISSION`: recorded in the
    /// catalog; what moves data because of it is rebalancing's.
    pub(super) async fn alter_worker(&self, id: &str, action: WorkerAction) -> Result<Planned> {
        let admin = match action {
            WorkerAction::Drain => AdminState::Draining,
            WorkerAction::Activate => AdminState::Active,
            WorkerAction::Decommission => AdminState::Decommissioned,
        };
        self.catalog
            .update(|s| match s.members.get_mut(id) {
                Some(m) => {
                    m.admin = admin;
                    Ok(())
                }
                None => {
                    Err(ErrorKind::NotFound
                        .error(format!("no worker '{id}'; SHOW WORKERS lists them")))
                }
            })
            .await?;
        self.catalog.membership().set_admin(id, admin)?;
        self.rebalancer.wake();
        Ok(super::empty())
    }
}
