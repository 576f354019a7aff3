//! Transactions and snapshots: ids handed out from blocks reserved in the
//! metastore, the set in flight, the snapshot a query reads at, and what
//! the ASYNC applier, backfills and compaction may rely on being finished.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use datafusion::common::Result;
use tessera_sql::{IndexDef, PartitionPlacement, TableDef};
use tessera_worker::Snapshot;

use super::{Catalog, poisoned};
use crate::catalog_state::{CatalogState, TXN_BLOCK};
use crate::clock::now_micros;
use crate::metastore::reserve;

/// Transaction ids reserved at a time: a minute of microseconds.
pub(super) const TXN_BLOCK_IDS: u64 = 60_000_000;
/// A new block is reserved when the current one has less than this left.
const TXN_BLOCK_MARGIN: u64 = 5_000_000;

/// Holds a query's snapshot open (see [`Catalog::compaction_bound`]).
#[derive(Debug)]
pub struct SnapshotPin {
    open: Arc<Mutex<BTreeMap<(u64, u64), usize>>>,
    /// The snapshot's xmin and generation.
    key: (u64, u64),
}

impl Drop for SnapshotPin {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock()
            && let Some(n) = open.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Holds a query's snapshot open: here, or on the leader for a follower.
#[derive(Debug)]
pub enum SnapshotHold {
    Local(SnapshotPin),
    Remote(Option<Arc<crate::follow::RemotePin>>),
}

/// A transaction in flight; finishing it (or dropping it on an error path)
/// takes it out of the in-flight set.
pub struct TxnGuard {
    catalog: Arc<Catalog>,
    pub txn: u64,
    /// A write's share of its table's gate, and the table.
    gate: Option<(String, tokio::sync::OwnedRwLockReadGuard<()>)>,
}

impl std::fmt::Debug for TxnGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnGuard")
            .field("txn", &self.txn)
            .field("gated", &self.gated_table())
            .finish()
    }
}

impl TxnGuard {
    /// The table whose gate it holds shared (a write does; a compaction,
    /// a backfill or an apply does not): while it does, no copy of the
    /// table rejoins its in-sync set.
    pub fn gated_table(&self) -> Option<&str> {
        self.gate.as_ref().map(|(table, _)| table.as_str())
    }
}

impl Drop for TxnGuard {
    fn drop(&mut self) {
        if let Ok(mut set) = self.catalog.in_flight.lock() {
            set.remove(&self.txn);
        }
    }
}

/// The indexes a write to `table` beginning as `txn` maintains.
fn maintained(table: &str) -> impl Fn(&CatalogState, u64) -> Vec<IndexDef> + '_ {
    move |state, txn| {
        state
            .indexes
            .values()
            .filter(|i| i.table == table && i.since_txn < txn)
            .cloned()
            .collect()
    }
}

/// Times a follower takes a snapshot again when the partition map moved
/// past it meanwhile.
const MAP_TRIES: usize = 8;

/// Every table's partition map entry at one moment, and the metastore
/// revision the catalog was at then.
#[derive(Debug, Clone, Default)]
pub struct MapAt {
    pub revision: u64,
    pub tables: BTreeMap<String, Vec<PartitionPlacement>>,
}

impl Catalog {
    /// Whether `txn` may still commit: in flight, or decided and not
    /// confirmed everywhere. A staged file of any other is left over.
    pub fn is_unresolved(&self, txn: u64) -> Result<bool> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        let in_flight = self.in_flight.lock().map_err(|_| poisoned())?;
        Ok(in_flight.contains_key(&txn) || state.decided.contains_key(&txn))
    }

    /// Waits, at most `limit`, until every transaction decided now is
    /// committed everywhere and forgotten (they are until the workers
    /// confirm their commits, which follow the acknowledgement).
    pub async fn settle_decided(&self, limit: std::time::Duration) -> Result<()> {
        let decided: Vec<u64> = {
            let state = self.state.lock().map_err(|_| poisoned())?;
            state.decided.keys().copied().collect()
        };
        let deadline = tokio::time::Instant::now() + limit;
        for txn in decided {
            while self.is_unresolved(txn)? && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    /// Begins a write to `table`: a new transaction and the indexes it must
    /// maintain, chosen atomically with respect to `CREATE INDEX` (an index
    /// covers exactly the transactions after its `since_txn`).
    pub async fn begin_write(self: &Arc<Self>, table: &str) -> Result<(TxnGuard, Vec<IndexDef>)> {
        let gate = self.gate(table)?.read_owned().await;
        let gate = Some((table.to_string(), gate));
        self.begin_gated(Some(table), gate, maintained(table)).await
    }

    /// [`Catalog::begin_write`] for rows planned against `def`: fails,
    /// beginning nothing, when the table was dropped or replaced since
    /// (checked under the same lock the transaction begins in).
    pub async fn begin_write_as(
        self: &Arc<Self>,
        def: &TableDef,
    ) -> Result<(TxnGuard, Vec<IndexDef>)> {
        let table = def.name.as_str();
        let gate = self.gate(table)?.read_owned().await;
        let gate = Some((table.to_string(), gate));
        let indexes = maintained(table);
        let read = |s: &CatalogState, txn| {
            let current = s.tables.get(table).map(TableDef::storage_key);
            (indexes(s, txn), current == Some(def.storage_key()))
        };
        let (guard, (indexes, same)) = self.begin_gated(Some(table), gate, read).await?;
        if !same {
            drop(guard);
            return Err(tessera_worker::ErrorKind::FailedPrecondition.error(format!(
                "table '{table}' was dropped or replaced while this INSERT was planned; nothing \
                 was written, run it again"
            )));
        }
        Ok((guard, indexes))
    }

    /// [`Catalog::begin_write`] for a compaction: it does not hold the
    /// table's gate (a long merge would hold back a copy catching up, and
    /// new writes waiting behind that copy), so a copy may have to copy
    /// again after one.
    pub async fn begin_merge(self: &Arc<Self>, table: &str) -> Result<(TxnGuard, Vec<IndexDef>)> {
        self.begin(Some(table), maintained(table)).await
    }

    /// Begins a transaction that writes no table rows (index backfill and apply).
    pub async fn begin_txn(self: &Arc<Self>) -> Result<TxnGuard> {
        Ok(self.begin(None, |_, _| ()).await?.0)
    }

    /// A new transaction, in flight, and what `read` takes from the state
    /// at the same moment (under the state lock, so ordered against DDL).
    async fn begin<T>(
        self: &Arc<Self>,
        table: Option<&str>,
        read: impl Fn(&CatalogState, u64) -> T,
    ) -> Result<(TxnGuard, T)> {
        self.begin_gated(table, None, read).await
    }

    async fn begin_gated<T>(
        self: &Arc<Self>,
        table: Option<&str>,
        mut gate: Option<(String, tokio::sync::OwnedRwLockReadGuard<()>)>,
        read: impl Fn(&CatalogState, u64) -> T,
    ) -> Result<(TxnGuard, T)> {
        loop {
            self.reserve_txn_ids().await?;
            let state = self.state.lock().map_err(|_| poisoned())?;
            // `None`: the block of ids ran out meanwhile; reserve another.
            let Some(txn) = self.next_txn()? else {
                continue;
            };
            if let Ok(mut set) = self.in_flight.lock() {
                let began = std::time::Instant::now();
                let table = table.map(String::from);
                set.insert(txn, super::InFlight { table, began });
            }
            let guard = TxnGuard {
                catalog: Arc::clone(self),
                txn,
                gate: gate.take(),
            };
            return Ok((guard, read(&state, txn)));
        }
    }

    /// Reserves the next block of transaction ids in the metastore when
    /// the current one is about to run out: one metastore write per
    /// [`TXN_BLOCK_IDS`] ids (a minute of microseconds).
    async fn reserve_txn_ids(&self) -> Result<()> {
        let ahead = |(_, end): (u64, u64)| {
            let next = now_micros().max(self.last_txn() + 1);
            next.saturating_add(TXN_BLOCK_MARGIN) < end
        };
        if ahead(*self.txn_block.lock().map_err(|_| poisoned())?) {
            return Ok(());
        }
        let _one = self.reserving.lock().await;
        if ahead(*self.txn_block.lock().map_err(|_| poisoned())?) {
            return Ok(());
        }
        let floor = now_micros().max(self.last_txn() + 1);
        let start = reserve(self.metastore.as_ref(), TXN_BLOCK, TXN_BLOCK_IDS, floor).await?;
        *self.txn_block.lock().map_err(|_| poisoned())? =
            (start, start.saturating_add(TXN_BLOCK_IDS));
        Ok(())
    }

    /// The largest transaction id handed out; call with the state lock held
    /// (inside [`Catalog::update`]) to order it against [`Catalog::begin_write`].
    pub fn last_txn(&self) -> u64 {
        self.last_txn.load(Ordering::SeqCst)
    }

    /// The oldest transaction not finished: in flight, or decided and
    /// not yet confirmed committed on every worker.
    pub fn oldest_unfinished(&self) -> Result<Option<u64>> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        let in_flight = self.in_flight.lock().map_err(|_| poisoned())?;
        let decided = state.decided.keys().next().copied();
        Ok(match (in_flight.keys().next().copied(), decided) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Every transaction up to this id has finished: its files are
    /// committed on every worker, or it was aborted. The ASYNC applier
    /// never reads an outbox past it, so no entry is skipped.
    pub fn horizon(&self) -> Result<u64> {
        let last = self.last_txn();
        Ok(match self.oldest_unfinished()? {
            Some(oldest) => oldest.saturating_sub(1).min(last),
            None => last,
        })
    }

    /// The snapshot of a query beginning now: every statement decided
    /// (acknowledged) so far, nothing in flight. It counts as open, for
    /// [`Catalog::compaction_bound`], until the pin is dropped. Also the
    /// partition map's layout epoch at that moment.
    pub fn snapshot(&self) -> Result<(Snapshot, SnapshotPin, u64)> {
        // Registered under the state lock: a compaction bound taken after
        // cannot pass a transaction this snapshot leaves out.
        let state = self.state.lock().map_err(|_| poisoned())?;
        let snapshot = self.snapshot_locked(&state)?;
        let pin = self.pin_xmin(snapshot.xmin())?;
        Ok((snapshot, pin, state.map.layout_epoch))
    }

    /// The snapshot of a query beginning now, held open until the hold is
    /// dropped, and the partition map at the same moment: taken here, or
    /// from the leader on a follower (whose catalog and members are then
    /// caught up with the leader's). A split or a merge changes the map in
    /// the transaction that writes the new partitions' rows, so a query
    /// must never pair a map with a snapshot from before it.
    pub async fn take_snapshot(&self) -> Result<(Snapshot, SnapshotHold, MapAt)> {
        match &self.follower {
            None => {
                let state = self.state.lock().map_err(|_| poisoned())?;
                let snapshot = self.snapshot_locked(&state)?;
                let pin = self.pin_xmin(snapshot.xmin())?;
                let map = MapAt {
                    revision: self.revision(),
                    tables: state.map.tables.clone(),
                };
                Ok((snapshot, SnapshotHold::Local(pin), map))
            }
            Some(follower) => {
                let request = crate::follow::SnapshotRequest {
                    pin: true,
                    fresh: None,
                };
                // The map here may already be past the snapshot's (a
                // split landed between the two): then the snapshot is
                // taken again; layouts change seldom.
                for _ in 0..MAP_TRIES {
                    let (reply, pin) = follower.snapshot(request).await?;
                    self.follow_leader(&reply).await?;
                    let (epoch, map) = {
                        let state = self.state.lock().map_err(|_| poisoned())?;
                        let map = MapAt {
                            revision: self.revision(),
                            tables: state.map.tables.clone(),
                        };
                        (state.map.layout_epoch, map)
                    };
                    if reply.layout_epoch.is_none_or(|e| e == epoch) {
                        return Ok((reply.snapshot, SnapshotHold::Remote(pin), map));
                    }
                }
                Err(tessera_worker::WorkerUnavailable::error(format!(
                    "partitions split {MAP_TRIES} times while this statement took its snapshot; \
                     retry it"
                )))
            }
        }
    }

    /// What is decided right now (from the leader, on a follower), not
    /// held open.
    pub async fn current_snapshot(&self) -> Result<Snapshot> {
        match &self.follower {
            None => self.latest_snapshot(),
            Some(follower) => {
                let (reply, _) = follower.snapshot(Default::default()).await?;
                self.follow_leader(&reply).await?;
                Ok(reply.snapshot)
            }
        }
    }

    /// On a follower: asks the leader's ASYNC index applier to apply every
    /// transaction through `target` now, and takes the leader's catalog
    /// (its index counters) after. `false` on the leader, whose own
    /// applier is to be asked.
    pub async fn ask_leader_to_apply(&self, target: u64) -> Result<bool> {
        let Some(follower) = &self.follower else {
            return Ok(false);
        };
        let request = crate::follow::SnapshotRequest {
            pin: false,
            fresh: Some(target),
        };
        let (reply, _) = follower.snapshot(request).await?;
        self.follow_leader(&reply).await?;
        Ok(true)
    }

    /// Pins a snapshot a follower's query reads at (taken from the leader
    /// before this one): compaction keeps what it sees until the pin drops.
    pub fn pin_xmin(&self, xmin: u64) -> Result<SnapshotPin> {
        let key = (xmin, self.generation.load(Ordering::SeqCst));
        *self
            .snapshots
            .lock()
            .map_err(|_| poisoned())?
            .entry(key)
            .or_default() += 1;
        Ok(SnapshotPin {
            open: Arc::clone(&self.snapshots),
            key,
        })
    }

    /// Starts a new generation of snapshots, after a change of the catalog
    /// that queries planned before it must not outlive (a table's files
    /// removed): [`Catalog::snapshots_before`] waits for the older ones.
    pub fn new_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Returns once no snapshot taken before `generation` is open. Queries
    /// plan after taking their snapshot, so every query still running
    /// then planned after the change that began `generation`.
    pub async fn snapshots_before(&self, generation: u64) {
        loop {
            let older = match self.snapshots.lock() {
                Ok(open) => open.keys().any(|(_, g)| *g < generation),
                Err(_) => false,
            };
            if !older {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Snapshots held open now (by queries here and, on the leader, by
    /// followers' queries).
    pub fn open_snapshots(&self) -> usize {
        self.snapshots
            .lock()
            .map(|open| open.values().sum())
            .unwrap_or(0)
    }

    /// What is decided right now, without holding it open: for internal
    /// reads that keep or drop rows by a query's snapshot themselves.
    pub fn latest_snapshot(&self) -> Result<Snapshot> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        self.snapshot_locked(&state)
    }

    fn snapshot_locked(&self, state: &CatalogState) -> Result<Snapshot> {
        let in_flight = self.in_flight.lock().map_err(|_| poisoned())?;
        // A decided id is never above the last one handed out, except in a
        // log written by hand or by an older version: it is seen all the same.
        let last_decided = state.decided.keys().next_back().copied().unwrap_or(0);
        Ok(Snapshot {
            through: self.last_txn().max(last_decided),
            in_flight: in_flight.keys().copied().collect(),
            decided: state.decided.keys().copied().collect(),
            since: None,
        })
    }

    /// Compaction may merge the files of transactions below this one:
    /// every open snapshot, and every later one, sees them, and each is
    /// committed on every worker (a decided one not yet confirmed keeps its
    /// file, which its commit, retried after a crash, looks for).
    pub fn compaction_bound(&self) -> Result<u64> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        let mut now = self.snapshot_locked(&state)?.xmin();
        if let Some(first) = state.decided.keys().next() {
            now = now.min(*first);
        }
        if self.compaction_held() {
            return Ok(0);
        }
        let open = self.snapshots.lock().map_err(|_| poisoned())?;
        Ok(open.keys().next().map_or(now, |(x, _)| (*x).min(now)))
    }

    /// A new transaction id from this coordinator's block, larger than any
    /// before it in this or an earlier run: microseconds since the epoch
    /// where the block allows (so an ASYNC index's lag in seconds holds
    /// across restarts). `None` when the block is used up.
    fn next_txn(&self) -> Result<Option<u64>> {
        let (start, end) = *self.txn_block.lock().map_err(|_| poisoned())?;
        let now = now_micros();
        let mut last = self.last_txn.load(Ordering::SeqCst);
        loop {
            let next = now.max(last + 1).max(start);
            if next >= end {
                return Ok(None);
            }
            match self
                .last_txn
                .compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Ok(Some(next)),
                Err(actual) => last = actual,
            }
        }
    }
}
