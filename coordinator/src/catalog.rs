//! The coordinator's catalog: table definitions, the partition map and
//! cluster membership in memory (persisted through the metastore), with
//! transactions and snapshots in `catalog/txns.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use datafusion::catalog::TableProvider;
use datafusion::common::{DataFusionError, Result};
use tessera_sql::{IndexDef, TableDef};
use tessera_worker::SizeEstimate;

use crate::catalog_state::{CatalogState, IndexStats, TXN_BLOCK};
use crate::clock::now_micros;
use crate::follow::Follower;
use crate::membership::Membership;
use crate::metastore::{Metastore, reserve};

mod finish;
mod follow;
#[cfg(test)]
pub(crate) mod interrupted;
mod placement;
mod txns;
mod update;

pub use crate::catalog_state::owner_of;
pub(crate) use crate::catalog_state::poisoned;
pub use placement::WriteTarget;
use txns::TXN_BLOCK_IDS;
pub use txns::{SnapshotHold, SnapshotPin, TxnGuard};

/// The error for a table that does not exist.
pub fn no_such_table(name: &str) -> DataFusionError {
    tessera_worker::ErrorKind::NotFound.error(format!(
        "table '{name}' does not exist; SHOW TABLES lists the tables"
    ))
}

/// The start of the names of tables a replacing ingest fills before they
/// take the replaced table's place: never listed, not creatable by name,
/// and dropped when a leading coordinator starts (a crash left them).
pub const STAGING_PREFIX: &str = "tessera$staging$";

pub fn is_staging(name: &str) -> bool {
    name.starts_with(STAGING_PREFIX)
}

/// A transaction in flight: the table it writes (`None`: it may write
/// any, as an index backfill does) and when it began.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub table: Option<String>,
    pub began: std::time::Instant,
}

/// Shared catalog state of one coordinator.
#[derive(Debug)]
pub struct Catalog {
    /// This catalog itself, for work that must finish even when the
    /// statement that began it is dropped (a metastore commit and its
    /// application to `state`).
    me: std::sync::Weak<Catalog>,
    metastore: Box<dyn Metastore>,
    /// The persisted state as the metastore holds it (a cache: every
    /// change is written there first).
    state: Mutex<CatalogState>,
    /// The metastore revision of each key of `state`, for compare-and-swap.
    /// Locked only with `state` held.
    revisions: Mutex<BTreeMap<String, u64>>,
    /// The block of transaction ids this coordinator may hand out
    /// (`[start, end)`), reserved in the metastore: ids are unique across
    /// coordinators and restarts.
    txn_block: Mutex<(u64, u64)>,
    /// One reservation of a new block at a time.
    reserving: tokio::sync::Mutex<()>,
    /// Workers: where they are and whether they are alive.
    pub(crate) membership: Membership,
    /// Read-only tables from `CREATE EXTERNAL TABLE`, by name.
    external: RwLock<BTreeMap<String, Arc<dyn TableProvider>>>,
    last_txn: AtomicU64,
    /// Transactions begun and not yet decided or aborted (no snapshot sees
    /// them), with the table each writes (`None`: it may write any, as an
    /// index backfill does; a copy catching up rejoins only while no write
    /// it would miss is in flight). A decided one is in the persisted
    /// `decided` log until every worker confirmed its commit.
    in_flight: Mutex<BTreeMap<u64, InFlight>>,
    /// Decided transactions committed everywhere, waiting to leave the
    /// decision log (see `catalog/finish.rs`).
    finishing: Mutex<finish::Finishing>,
    /// Per table: a write holds it shared from its start to its end; a
    /// copy that cannot catch up between writes holds it alone for a
    /// moment (new writes wait, those in flight finish first).
    gates: Mutex<BTreeMap<String, Arc<tokio::sync::RwLock<()>>>>,
    /// Snapshots of running queries, by their `xmin` (every transaction
    /// below it visible) and the generation they were taken in:
    /// compaction merges only files all of them see, and the files of a
    /// dropped or replaced table stay until those taken before are gone.
    snapshots: Arc<Mutex<BTreeMap<(u64, u64), usize>>>,
    /// The generation snapshots are taken in now (see
    /// [`Catalog::new_generation`]).
    generation: AtomicU64,
    /// Set when the coordinator stops: background tasks end.
    pub(crate) closed: AtomicBool,
    /// Decided transactions that have left the decision log (committed
    /// everywhere) since the start: what watches it (the compactor, the
    /// ASYNC applier) knows files were added and outbox entries may be
    /// applied.
    forgotten: tokio::sync::watch::Sender<u64>,
    /// Set on a coordinator that follows the leader: it writes nothing to
    /// the metastore and takes its snapshots from the leader.
    follower: Option<Arc<Follower>>,
    /// The metastore revision of the catalog held here: the leader's last
    /// change, or the last one a follower applied.
    revision: AtomicU64,
    revision_moved: tokio::sync::Notify,
    /// A follower's keys deleted while it reads every key again (see
    /// `catalog/follow.rs`), and one such read at a time.
    tombstones: Mutex<Option<BTreeMap<String, u64>>>,
    reloading: tokio::sync::Mutex<()>,
    /// Turns true when the coordinator stops (ends pinned snapshot calls).
    pub(crate) stopped: tokio::sync::watch::Sender<bool>,
    follow_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// The last sequence number of a snapshot reply to a follower.
    replies: AtomicU64,
    /// Until when compaction merges nothing (a leader that just took over
    /// waits for followers to pin their queries' snapshots on it).
    compaction_held_until: Mutex<Option<std::time::Instant>>,
}

impl Catalog {
    /// Opens the catalog in `metastore`. Workers are those that joined
    /// before, at their last known URLs, updated by `members` (workers
    /// started with the coordinator); `lease` decides when one is down.
    pub async fn open(
        metastore: Box<dyn Metastore>,
        members: BTreeMap<String, String>,
        lease: std::time::Duration,
    ) -> Result<Arc<Self>> {
        Self::open_as(metastore, members, lease, None).await
    }

    async fn open_as(
        metastore: Box<dyn Metastore>,
        members: BTreeMap<String, String>,
        lease: std::time::Duration,
        follower: Option<Arc<Follower>>,
    ) -> Result<Arc<Self>> {
        let entries = metastore.range("").await?;
        let state = CatalogState::from_keys(&entries)?;
        let mut urls: BTreeMap<String, String> = state
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.url.clone()))
            .collect();
        urls.extend(members);
        let membership = Membership::new(lease, urls);
        for (id, m) in &state.members {
            membership.set_admin(id, m.admin)?;
        }
        let revision = entries.values().map(|v| v.revision).max().unwrap_or(0);
        let revisions = entries.into_iter().map(|(k, v)| (k, v.revision)).collect();
        // Every id handed out before lies below a new block; a follower
        // hands out none.
        let (start, end) = if follower.is_some() {
            (0, 0)
        } else {
            let start = reserve(metastore.as_ref(), TXN_BLOCK, TXN_BLOCK_IDS, now_micros()).await?;
            (start, start.saturating_add(TXN_BLOCK_IDS))
        };
        let last_txn = start.saturating_sub(1);
        let catalog = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            metastore,
            state: Mutex::new(state),
            revisions: Mutex::new(revisions),
            txn_block: Mutex::new((start, end)),
            reserving: tokio::sync::Mutex::new(()),
            membership,
            external: RwLock::new(BTreeMap::new()),
            last_txn: AtomicU64::new(last_txn),
            in_flight: Mutex::new(BTreeMap::new()),
            finishing: Mutex::new(Default::default()),
            gates: Mutex::new(BTreeMap::new()),
            snapshots: Arc::new(Mutex::new(BTreeMap::new())),
            generation: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            forgotten: tokio::sync::watch::Sender::new(0),
            follower,
            revision: AtomicU64::new(revision),
            revision_moved: tokio::sync::Notify::new(),
            tombstones: Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
            stopped: tokio::sync::watch::Sender::new(false),
            follow_task: Mutex::new(None),
            replies: AtomicU64::new(0),
            compaction_held_until: Mutex::new(None),
        });
        if catalog.follower.is_some() {
            follow::spawn(&catalog);
        } else if catalog.metastore.shared() {
            catalog.hold_compaction(crate::follow::TAKEOVER_GRACE);
        }
        Ok(catalog)
    }

    /// Opens the catalog of a coordinator that follows the leader: kept
    /// up to date by a watch on the metastore, never written from here.
    pub async fn open_follower(
        follower: Arc<Follower>,
        lease: std::time::Duration,
    ) -> Result<Arc<Self>> {
        let metastore = Box::new(follower.store().clone());
        Self::open_as(metastore, BTreeMap::new(), lease, Some(follower)).await
    }

    /// The leader this coordinator follows, if it does not lead.
    pub fn follower(&self) -> Option<&Arc<Follower>> {
        self.follower.as_ref()
    }

    /// Stops background work and a follower's watch; pinned snapshots
    /// handed to followers are let go.
    pub fn stop(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.stopped.send_replace(true);
        if let Ok(mut task) = self.follow_task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }

    /// A number larger than every one before it, for a snapshot reply:
    /// microseconds of the clock where they do not repeat.
    pub fn next_reply_sequence(&self) -> u64 {
        let now = now_micros();
        let mut last = self.replies.load(Ordering::SeqCst);
        loop {
            let next = now.max(last + 1);
            match self
                .replies
                .compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    /// Merges no files for `grace` from now (or longer, if held so already).
    pub fn hold_compaction(&self, grace: std::time::Duration) {
        if let Ok(mut until) = self.compaction_held_until.lock() {
            let next = std::time::Instant::now() + grace;
            *until = Some(until.map_or(next, |u| u.max(next)));
        }
    }

    pub(crate) fn compaction_held(&self) -> bool {
        self.compaction_held_until
            .lock()
            .ok()
            .and_then(|u| *u)
            .is_some_and(|u| std::time::Instant::now() < u)
    }

    /// The metastore revision of the catalog held here.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    /// A snapshot of the persisted state.
    pub fn state(&self) -> Result<CatalogState> {
        Ok(self.state.lock().map_err(|_| poisoned())?.clone())
    }

    /// An id for a worker joining for the first time: `worker-<n>`, `n`
    /// past every id handed out before (cluster-wide, from a metastore
    /// counter).
    pub(crate) async fn next_worker_id(&self) -> Result<String> {
        let floor = self
            .members()?
            .keys()
            .filter_map(|id| id.strip_prefix("worker-")?.parse::<u64>().ok())
            .max()
            .map_or(0, |n| n + 1);
        let n = reserve(
            self.metastore.as_ref(),
            crate::catalog_state::WORKER_IDS,
            1,
            floor,
        )
        .await?;
        Ok(format!("worker-{n}"))
    }

    /// Every worker, alive or not: id → URL.
    pub fn members(&self) -> Result<BTreeMap<String, String>> {
        self.membership.urls()
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// How long ago a worker last (re)joined, if one did since the start.
    pub fn since_membership_change(&self) -> Option<std::time::Duration> {
        self.membership.since_change()
    }

    /// Changes whenever a worker (re)joins.
    pub fn membership_epoch(&self) -> u64 {
        self.membership.epoch()
    }

    /// What an operator set each worker to (active, draining,
    /// decommissioned), by id: a copy of that part of the state only.
    pub fn member_admin(&self) -> Result<BTreeMap<String, crate::catalog_state::AdminState>> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        Ok(state
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.admin))
            .collect())
    }

    /// The users who may sign in (a copy of that part of the state only:
    /// asked on every call a client makes).
    pub fn users(&self) -> Result<BTreeMap<String, crate::catalog_state::UserRecord>> {
        Ok(self.state.lock().map_err(|_| poisoned())?.users.clone())
    }

    /// Whether `name` is an external table (made by CREATE EXTERNAL TABLE).
    pub fn is_external_table(&self, name: &str) -> Result<bool> {
        Ok(self
            .state
            .lock()
            .map_err(|_| poisoned())?
            .external_tables
            .contains_key(name))
    }

    /// `CREATE EXTERNAL TABLE` statements by table name.
    pub fn external_table_sql(&self) -> Result<BTreeMap<String, String>> {
        Ok(self
            .state
            .lock()
            .map_err(|_| poisoned())?
            .external_tables
            .clone())
    }

    pub fn table_def(&self, name: &str) -> Result<Option<TableDef>> {
        Ok(self
            .state
            .lock()
            .map_err(|_| poisoned())?
            .tables
            .get(name)
            .cloned())
    }

    pub fn external(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self
            .external
            .read()
            .map_err(|_| poisoned())?
            .get(name)
            .cloned())
    }

    pub fn external_names(&self) -> Result<Vec<String>> {
        Ok(self
            .external
            .read()
            .map_err(|_| poisoned())?
            .keys()
            .cloned()
            .collect())
    }

    pub fn set_external(&self, name: &str, table: Option<Arc<dyn TableProvider>>) -> Result<()> {
        let mut ext = self.external.write().map_err(|_| poisoned())?;
        match table {
            Some(t) => ext.insert(name.to_string(), t),
            None => ext.remove(name),
        };
        Ok(())
    }

    /// The write gate of `table` (see the `gates` field).
    pub(crate) fn gate(&self, table: &str) -> Result<Arc<tokio::sync::RwLock<()>>> {
        let mut gates = self.gates.lock().map_err(|_| poisoned())?;
        // Gates no one holds or waits on go (dropped tables, staging ones).
        gates.retain(|_, g| Arc::strong_count(g) > 1);
        Ok(Arc::clone(gates.entry(table.to_string()).or_default()))
    }

    /// Whether a write to `table` has been in flight for longer than
    /// `age` (a bulk upload, say): holding its gate would keep every other
    /// writer waiting that long.
    pub(crate) fn long_write(&self, table: &str, age: std::time::Duration) -> Result<bool> {
        Ok(self
            .in_flight
            .lock()
            .map_err(|_| poisoned())?
            .values()
            .any(|t| t.table.as_deref() == Some(table) && t.began.elapsed() > age))
    }

    /// Whether a transaction that may write `table` is in flight (begun,
    /// not decided); call with the state lock held (inside
    /// [`Catalog::update`]) to order it against transactions beginning.
    pub(crate) fn writing(&self, table: &str) -> Result<bool> {
        Ok(self
            .in_flight
            .lock()
            .map_err(|_| poisoned())?
            .values()
            .any(|t| t.table.as_deref().is_none_or(|t| t == table)))
    }

    /// Rows and stored bytes of some partitions of a table; `None` when the
    /// write path has not counted them (tables from before counting began).
    pub fn size_estimate(&self, table: &str, partitions: &[u32]) -> Result<Option<SizeEstimate>> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        let Some(stats) = state.table_stats(table) else {
            return Ok(None);
        };
        let mut total = SizeEstimate::default();
        for p in partitions {
            if let Some(s) = stats.get(p) {
                total.rows += s.rows;
                total.bytes += s.bytes;
            }
        }
        Ok(Some(total))
    }

    /// How many decided transactions have left the decision log since
    /// the start (each committed everywhere it went).
    pub fn forgotten(&self) -> u64 {
        *self.forgotten.borrow()
    }

    /// [`Catalog::forgotten`], as it changes.
    pub fn watch_forgotten(&self) -> tokio::sync::watch::Receiver<u64> {
        self.forgotten.subscribe()
    }

    /// The counters of one index (zero if it has none yet).
    pub fn index_stats(&self, name: &str) -> Result<IndexStats> {
        Ok(self
            .state
            .lock()
            .map_err(|_| poisoned())?
            .index_stats
            .get(name)
            .copied()
            .unwrap_or_default())
    }

    pub fn indexes_of(&self, table: &str) -> Result<Vec<IndexDef>> {
        Ok(self
            .state
            .lock()
            .map_err(|_| poisoned())?
            .indexes
            .values()
            .filter(|i| i.table == table)
            .cloned()
            .collect())
    }
}
