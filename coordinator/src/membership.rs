//! Which workers there are, where, and whether they are alive.
//!
//! Workers join (`tessera.worker.join`) and heartbeat
//! (`tessera.worker.heartbeat`); a worker's state follows from the age of
//! its last heartbeat against the lease:
//!
//! ```text
//!   age of last heartbeat:  0 ──── 2 beats ──────── lease ─────────►
//!   state:                  up     suspect          down
//!   (a beat is a fifth of the lease; the default lease is 5 s)
//! ```
//!
//! `draining` and `decommissioned` are an operator's (`ALTER WORKER`) and
//! shown instead of `up`/`suspect` while the worker is alive. Nothing moves
//! because a worker is down: its partitions answer with an error naming
//! it until it is back. Routing reads a snapshot of the members kept here,
//! never the metastore.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use datafusion::common::{DataFusionError, Result};

use crate::catalog_state::AdminState;
use crate::catalog_state::poisoned;

/// The lease unless `--worker-lease` says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// A worker's state as `SHOW WORKERS` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Up,
    Suspect,
    Down,
    Draining,
    Decommissioned,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Up => "up",
            WorkerState::Suspect => "suspect",
            WorkerState::Down => "down",
            WorkerState::Draining => "draining",
            WorkerState::Decommissioned => "decommissioned",
        }
    }

    /// Whether queries may be sent to it.
    pub fn serves(self) -> bool {
        !matches!(self, WorkerState::Down | WorkerState::Decommissioned)
    }
}

/// What a worker said of itself at its last heartbeat.
#[derive(Debug, Clone)]
pub struct Liveness {
    pub last_heartbeat: Instant,
    /// Wall-clock time of that heartbeat, for display.
    pub last_heartbeat_unix_ms: i64,
    pub version: String,
    pub started_at_ms: u64,
}

/// One worker as `SHOW WORKERS` lists it.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub id: String,
    pub url: String,
    pub state: WorkerState,
    pub liveness: Option<Liveness>,
}

#[derive(Debug)]
pub struct Membership {
    lease: Duration,
    /// When this coordinator started: a worker not heard from since is
    /// given one lease to say so before it counts as down.
    started: Instant,
    /// id → URL of every member, alive or not (a query needing a dead
    /// one's partitions names it).
    urls: RwLock<BTreeMap<String, String>>,
    admin: RwLock<BTreeMap<String, AdminState>>,
    live: Mutex<BTreeMap<String, Liveness>>,
    /// Workers whose address another worker now holds: their process is
    /// gone (a new one bound the port), so they are down until they join
    /// again.
    displaced: Mutex<std::collections::BTreeSet<String>>,
    /// Bumped whenever a worker joins or comes back: a query that ran
    /// across a change may have failed because of it.
    epoch: AtomicU64,
    changed: Mutex<Option<Instant>>,
    /// On a follower: the leader and sequence of the view taken last.
    adopted: Mutex<(String, u64)>,
}

impl Membership {
    pub fn new(lease: Duration, urls: BTreeMap<String, String>) -> Self {
        Self {
            lease,
            started: Instant::now(),
            urls: RwLock::new(urls),
            admin: RwLock::new(BTreeMap::new()),
            live: Mutex::new(BTreeMap::new()),
            displaced: Mutex::new(std::collections::BTreeSet::new()),
            epoch: AtomicU64::new(0),
            changed: Mutex::new(None),
            adopted: Mutex::new((String::new(), 0)),
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// How often workers are asked to heartbeat.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.lease / 5).max(Duration::from_millis(50))
    }

    pub fn urls(&self) -> Result<BTreeMap<String, String>> {
        Ok(self.urls.read().map_err(|_| poisoned())?.clone())
    }

    /// The members queries may be sent to.
    pub fn serving_urls(&self) -> Result<BTreeMap<String, String>> {
        let urls = self.urls()?;
        let mut out = BTreeMap::new();
        for (id, url) in urls {
            if self.state(&id)?.serves() {
                out.insert(id, url);
            }
        }
        Ok(out)
    }

    /// A worker (re)joined at `url`: it is up from now. The same process
    /// joining again where it was, alive, is no change; a restart, a
    /// return from down or a new address is.
    pub fn joined(&self, id: &str, url: &str, version: &str, started_at_ms: u64) -> Result<()> {
        let was_down = self.state(id)? == WorkerState::Down;
        let restarted = self
            .live
            .lock()
            .map_err(|_| poisoned())?
            .get(id)
            .is_some_and(|l| l.started_at_ms != started_at_ms);
        let moved = self
            .urls
            .write()
            .map_err(|_| poisoned())?
            .insert(id.to_string(), url.to_string())
            .is_none_or(|old| old != url);
        self.beat(id, version, started_at_ms)?;
        {
            let urls = self.urls.read().map_err(|_| poisoned())?;
            let mut displaced = self.displaced.lock().map_err(|_| poisoned())?;
            displaced.remove(id);
            for (other, other_url) in urls.iter() {
                if other != id && other_url == url {
                    displaced.insert(other.clone());
                }
            }
        }
        if was_down || moved || restarted {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            *self.changed.lock().map_err(|_| poisoned())? = Some(Instant::now());
        }
        Ok(())
    }

    /// A heartbeat from `id` at `url`: `false` if this coordinator does not
    /// know the worker there (it must join again).
    pub fn heartbeat(
        &self,
        id: &str,
        url: &str,
        version: &str,
        started_at_ms: u64,
    ) -> Result<bool> {
        let known = self
            .urls
            .read()
            .map_err(|_| poisoned())?
            .get(id)
            .is_some_and(|u| u == url);
        if known {
            self.beat(id, version, started_at_ms)?;
        }
        Ok(known)
    }

    fn beat(&self, id: &str, version: &str, started_at_ms: u64) -> Result<()> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.live.lock().map_err(|_| poisoned())?.insert(
            id.to_string(),
            Liveness {
                last_heartbeat: Instant::now(),
                last_heartbeat_unix_ms: now_ms,
                version: version.to_string(),
                started_at_ms,
            },
        );
        Ok(())
    }

    pub fn set_admin(&self, id: &str, admin: AdminState) -> Result<()> {
        self.admin
            .write()
            .map_err(|_| poisoned())?
            .insert(id.to_string(), admin);
        Ok(())
    }

    /// How long since `id` was last heard from (since this coordinator
    /// started, if not yet).
    fn silence(&self, id: &str) -> Result<Duration> {
        let live = self.live.lock().map_err(|_| poisoned())?;
        Ok(live
            .get(id)
            .map_or(self.started, |l| l.last_heartbeat)
            .elapsed())
    }

    pub fn state(&self, id: &str) -> Result<WorkerState> {
        if self.displaced.lock().map_err(|_| poisoned())?.contains(id) {
            return Ok(WorkerState::Down);
        }
        let silence = self.silence(id)?;
        let admin = self
            .admin
            .read()
            .map_err(|_| poisoned())?
            .get(id)
            .copied()
            .unwrap_or_default();
        Ok(if silence > self.lease {
            WorkerState::Down
        } else {
            match admin {
                AdminState::Draining => WorkerState::Draining,
                AdminState::Decommissioned => WorkerState::Decommissioned,
                AdminState::Active if silence > 2 * self.heartbeat_interval() => {
                    WorkerState::Suspect
                }
                AdminState::Active => WorkerState::Up,
            }
        })
    }

    /// What `id` said at its last heartbeat, if it did since this
    /// coordinator started.
    pub fn liveness(&self, id: &str) -> Result<Option<Liveness>> {
        Ok(self.live.lock().map_err(|_| poisoned())?.get(id).cloned())
    }

    /// Seconds since `id` was last heard from, for error messages.
    pub fn silent_for(&self, id: &str) -> Result<Duration> {
        self.silence(id)
    }

    pub fn view(&self) -> Result<Vec<MemberView>> {
        let urls = self.urls()?;
        let live = self.live.lock().map_err(|_| poisoned())?.clone();
        urls.into_iter()
            .map(|(id, url)| {
                Ok(MemberView {
                    state: self.state(&id)?,
                    liveness: live.get(&id).cloned(),
                    id,
                    url,
                })
            })
            .collect()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn since_change(&self) -> Option<Duration> {
        self.changed
            .lock()
            .ok()
            .and_then(|t| t.map(|t| t.elapsed()))
    }
}

/// The error for a query that needs a worker that is down.
pub fn worker_down(id: &str, url: &str, silent: Duration) -> DataFusionError {
    tessera_worker::WorkerUnavailable::error(format!(
        "worker {id} at {url} is down (no heartbeat for {:.1} s) and the query needs partitions \
         it holds; start it again on its data dir (`tessera worker --data-dir DIR --join ...`, \
         or restart `tessera serve`), then retry",
        silent.as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_the_heartbeat_age() {
        let m = Membership::new(Duration::from_millis(200), BTreeMap::new());
        m.joined("w1", "http://a:1", "v", 0).unwrap();
        assert_eq!(m.state("w1").unwrap(), WorkerState::Up);
        assert!(
            !m.heartbeat("w1", "http://b:2", "v", 0).unwrap(),
            "another url"
        );
        assert!(m.heartbeat("w1", "http://a:1", "v", 0).unwrap());
        m.set_admin("w1", AdminState::Draining).unwrap();
        assert_eq!(m.state("w1").unwrap(), WorkerState::Draining);
        // Waiting out the lease is what is tested here.
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(m.state("w1").unwrap(), WorkerState::Down);
        assert!(m.serving_urls().unwrap().is_empty());
        assert_eq!(m.urls().unwrap().len(), 1);
    }
}

/// One worker as the leading coordinator sees it, sent to the coordinators
/// that follow it (they route queries by it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MemberWire {
    pub id: String,
    pub url: String,
    pub admin: AdminState,
    /// Down for a reason other than silence (another worker took its address).
    pub displaced: bool,
    /// Milliseconds since the leader last heard from it.
    pub silent_ms: u64,
    pub version: String,
    pub started_at_ms: u64,
    pub last_heartbeat_unix_ms: i64,
}

impl Membership {
    /// Every member as this coordinator sees it, for its followers.
    pub fn wire(&self) -> Result<Vec<MemberWire>> {
        let urls = self.urls()?;
        let admin = self.admin.read().map_err(|_| poisoned())?.clone();
        let displaced = self.displaced.lock().map_err(|_| poisoned())?.clone();
        let live = self.live.lock().map_err(|_| poisoned())?.clone();
        urls.into_iter()
            .map(|(id, url)| {
                let heard = live.get(&id);
                let silence = heard.map_or(self.started, |l| l.last_heartbeat).elapsed();
                Ok(MemberWire {
                    admin: admin.get(&id).copied().unwrap_or_default(),
                    displaced: displaced.contains(&id),
                    silent_ms: u64::try_from(silence.as_millis()).unwrap_or(u64::MAX),
                    version: heard.map(|l| l.version.clone()).unwrap_or_default(),
                    started_at_ms: heard.map_or(0, |l| l.started_at_ms),
                    last_heartbeat_unix_ms: heard.map_or(0, |l| l.last_heartbeat_unix_ms),
                    id,
                    url,
                })
            })
            .collect()
    }

    /// Takes the leader's view of the members as this coordinator's own (a
    /// follower hears no heartbeats, the leader does), unless a later view
    /// of the same leader (`sequence`) was taken already.
    pub fn adopt(&self, members: &[MemberWire], leader: &str, sequence: u64) -> Result<()> {
        // Held to the end: two views are taken one after the other.
        let mut adopted = self.adopted.lock().map_err(|_| poisoned())?;
        if adopted.0 == leader && adopted.1 >= sequence {
            return Ok(());
        }
        *adopted = (leader.to_string(), sequence);
        let now = Instant::now();
        let next: BTreeMap<String, String> = members
            .iter()
            .map(|m| (m.id.clone(), m.url.clone()))
            .collect();
        let mut changed = {
            let mut urls = self.urls.write().map_err(|_| poisoned())?;
            let changed = *urls != next;
            *urls = next;
            changed
        };
        {
            let mut admin = self.admin.write().map_err(|_| poisoned())?;
            let mut live = self.live.lock().map_err(|_| poisoned())?;
            let mut displaced = self.displaced.lock().map_err(|_| poisoned())?;
            // A worker that restarted where it was is a change too.
            changed |= members.iter().any(|m| {
                live.get(&m.id)
                    .is_some_and(|l| l.started_at_ms != m.started_at_ms)
            });
            admin.clear();
            live.clear();
            displaced.clear();
            for m in members {
                admin.insert(m.id.clone(), m.admin);
                if m.displaced {
                    displaced.insert(m.id.clone());
                }
                live.insert(
                    m.id.clone(),
                    Liveness {
                        last_heartbeat: now
                            .checked_sub(Duration::from_millis(m.silent_ms))
                            .or_else(|| now.checked_sub(2 * self.lease))
                            .unwrap_or(self.started),
                        last_heartbeat_unix_ms: m.last_heartbeat_unix_ms,
                        version: m.version.clone(),
                        started_at_ms: m.started_at_ms,
                    },
                );
            }
        }
        if changed {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            *self.changed.lock().map_err(|_| poisoned())? = Some(Instant::now());
        }
        Ok(())
    }
}
