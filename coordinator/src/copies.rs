//! The copies of a partition at a write's decision: whether enough of
//! those in sync took it (the write quorum), which leave the in-sync set,
//! and the per-partition count of decided transactions a copy catching up
//! checks before it rejoins (a write holding its table's gate counts it in
//! a `stats_delta/` key of its own; see `write::decide_and_commit`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use datafusion::common::{DataFusionError, Result};
use tessera_sql::{IndexKind, Placements, TableDef};
use tessera_worker::WorkerUnavailable;

use crate::catalog::WriteTarget;
use crate::catalog_state::CatalogState;

/// In the catalog write that decides a transaction: the write is still
/// to the table it was planned for, and at least `target.needed` of the
/// copies now in sync for `target`'s partition hold it (`held`); the other
/// in-sync copies leave the in-sync set, and their commits still pending
/// for that partition are dropped (a copy out of sync takes the partition
/// whole when it catches up). Run again on a newer state if the catalog
/// changed meanwhile, so two writes that each missed a copy never empty
/// the in-sync set between them.
pub(crate) fn settle_copies(
    s: &mut CatalogState,
    target: &WriteTarget,
    held: &[String],
) -> Result<()> {
    let map_key = target.map_key.as_str();
    let partition = target.partition;
    let owner = crate::catalog::owner_of(s, map_key);
    if owner.map(|t| t.id) != target.table_id {
        return Err(tessera_worker::ErrorKind::FailedPrecondition.error(format!(
            "'{map_key}' was dropped or replaced while the statement ran; nothing was written"
        )));
    }
    let Some(placement) = s.map.tables.get(map_key).and_then(|p| p.by_id(partition)) else {
        return Err(DataFusionError::Internal(format!(
            "partition {partition} of '{map_key}' is not in the partition map"
        )));
    };
    let in_sync: Vec<String> = placement.in_sync().map(String::from).collect();
    bump_writes(s, map_key, partition);
    let holding = in_sync.iter().filter(|w| held.contains(w)).count();
    if holding < target.needed {
        return Err(WorkerUnavailable::error(format!(
            "partition {partition} of '{map_key}' needs its write on {} in-sync copies and only \
             {holding} of those that took it are still in sync (another write found the others \
             out of sync meanwhile); nothing was written. Retry once the workers are back",
            target.needed
        )));
    }
    let missed: Vec<String> = in_sync.into_iter().filter(|w| !held.contains(w)).collect();
    if missed.is_empty() {
        return Ok(());
    }
    s.map.leave_in_sync(map_key, partition, &missed);
    forget_pending(s, map_key, partition, &missed);
    Ok(())
}

/// Drops the commits still pending for `map_key`'s `partition` on
/// `workers` from the decision log: those copies left the in-sync set
/// (they take the partition whole when they catch up) or the partition
/// map (their files go). A commit retried there would otherwise never
/// land and keep its transaction logged, holding back compaction, the
/// ASYNC applier and catch-ups until a restart. Every copy still in sync
/// took the write, so nothing acknowledged is lost.
pub(crate) fn forget_pending(
    s: &mut CatalogState,
    map_key: &str,
    partition: u32,
    workers: &[String],
) {
    let locations = files_of(s, map_key).map(|(_, l)| l).unwrap_or_default();
    for writes in s.decided.values_mut() {
        for worker in workers {
            if let Some(list) = writes.get_mut(worker) {
                list.retain(|w| !(w.partition == partition && locations.contains(&w.table)));
                if list.is_empty() {
                    writes.remove(worker);
                }
            }
        }
    }
}

/// Counts a transaction decided on a partition of `map_key` (a table, or
/// a GLOBAL index's partitions).
pub(crate) fn bump_writes(s: &mut CatalogState, map_key: &str, partition: u32) {
    let p = s
        .stats
        .entry(map_key.to_string())
        .or_default()
        .entry(partition)
        .or_default();
    p.writes += 1;
}

/// Copies a write could not reach or that failed it, by worker: why, and
/// whether the worker could not be reached.
pub(crate) type Failures = BTreeMap<String, (String, bool)>;

/// The error of a write that only `held` of `target`'s in-sync copies took,
/// fewer than it needs (`failed` says why of each missing one).
pub(crate) fn short_of_quorum(
    target: &WriteTarget,
    held: usize,
    failed: &Failures,
) -> DataFusionError {
    let (map_key, partition, needed) = (&target.map_key, target.partition, target.needed);
    let missing: Vec<(&str, &(String, bool))> = target
        .workers()
        .filter_map(|w| failed.get(w).map(|f| (w, f)))
        .collect();
    let why: Vec<String> = missing
        .iter()
        .map(|(w, (why, _))| format!("{w}: {why}"))
        .collect();
    let message = format!(
        "partition {partition} of '{map_key}' needs its write on {needed} in-sync {} and {held} \
         took it ({}); nothing was written. Start the workers that are down and retry (copies \
         out of sync count again once they have caught up)",
        if needed == 1 { "copy" } else { "copies" },
        why.join("; ")
    );
    if missing.iter().any(|(_, (_, unreachable))| *unreachable) {
        WorkerUnavailable::error(message)
    } else {
        DataFusionError::Execution(message)
    }
}

/// Where a partition of `def` keeps files: the table's, its LOCAL
/// indexes' and its ASYNC indexes' outboxes' keys.
pub(crate) fn locations(state: &CatalogState, def: &TableDef) -> Vec<String> {
    let mut out = vec![def.storage_key()];
    for index in state.indexes.values().filter(|i| i.table == def.name) {
        match index.kind {
            IndexKind::Local => out.push(index.storage_key(def)),
            IndexKind::GlobalAsync => out.push(index.outbox_key(def)),
            IndexKind::GlobalSync => {}
        }
    }
    out
}

/// Every location a table or index of the catalog keeps files under: its
/// data, each index's partitions, each ASYNC index's outbox.
pub(crate) fn live_locations(state: &CatalogState) -> BTreeSet<String> {
    let mut live: BTreeSet<String> = state.tables.values().map(|d| d.storage_key()).collect();
    for index in state.indexes.values() {
        if let Some(def) = state.tables.get(&index.table) {
            live.insert(index.storage_key(def));
            live.insert(index.outbox_key(def));
        }
    }
    live
}

/// The table whose partitions (or GLOBAL index partitions) `map_key`
/// names, and where such a partition keeps files.
pub(crate) fn files_of(state: &CatalogState, map_key: &str) -> Option<(TableDef, Vec<String>)> {
    if let Some(def) = state.tables.get(map_key) {
        return Some((def.clone(), locations(state, def)));
    }
    let index = state.indexes.values().find(|i| i.map_key() == map_key)?;
    let def = state.tables.get(&index.table)?;
    Some((def.clone(), vec![index.storage_key(def)]))
}

/// A copy of a partition: (map key, partition, worker).
pub(crate) type Copy = (String, u32, String);

/// The generation of the last removal of each copy whose files are yet
/// to go.
static REMOVALS: Mutex<BTreeMap<Copy, u64>> = Mutex::new(BTreeMap::new());

struct Removals;

impl Removals {
    fn record(copy: &Copy, generation: u64) {
        if let Ok(mut r) = REMOVALS.lock() {
            let at = r.entry(copy.clone()).or_insert(generation);
            *at = (*at).max(generation);
        }
    }

    /// Whether the removal of `copy` made in `generation` is its last one
    /// (then forgotten: this removal carries it out).
    fn latest(copy: &Copy, generation: u64) -> bool {
        let Ok(mut r) = REMOVALS.lock() else {
            return true;
        };
        match r.get(copy) {
            Some(at) if *at > generation => false,
            _ => {
                r.remove(copy);
                true
            }
        }
    }
}

/// Removes the files of copies taken out of the partition map (of the
/// table with id `table_id`) once no query that began before may read
/// them; a copy given the partition again meanwhile keeps its files.
pub(crate) fn drop_files_later(
    catalog: &std::sync::Arc<crate::catalog::Catalog>,
    table_id: u64,
    removed: Vec<Copy>,
) {
    if removed.is_empty() {
        return;
    }
    let generation = catalog.new_generation();
    for copy in &removed {
        Removals::record(copy, generation);
    }
    let catalog = std::sync::Arc::clone(catalog);
    tokio::spawn(async move {
        catalog.snapshots_before(generation).await;
        for (key, partition, worker) in removed {
            // Claimed as a catch-up claims it, and the map read again under
            // the claim: a move back to this worker either sees it holds
            // the partition again (its files stay) or copies the partition
            // whole after the files are gone, never while they go.
            // A copy being caught up is waited for: it may be one taken
            // off meanwhile (a rolled-back move), whose files still go.
            let _claim = loop {
                if let Some(claim) = Copying::claim(&key, partition, &worker) {
                    break claim;
                }
                if catalog.closed.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            };
            let Ok(state) = catalog.state() else {
                return;
            };
            // A later removal of the same copy (it was given the partition
            // back, then taken off again) waits for the queries of its own
            // time: this one stands down for it.
            let copy = (key.clone(), partition, worker.clone());
            if !Removals::latest(&copy, generation) {
                continue;
            }
            let members = catalog.members().unwrap_or_default();
            let Some((owner, locations)) = files_of(&state, &key) else {
                continue;
            };
            let holds_again = owner.id != table_id
                || state
                    .map
                    .table(&key)
                    .and_then(|p| p.by_id(partition))
                    .is_some_and(|p| p.replicas.contains(&worker));
            let Some(url) = members.get(&worker).filter(|_| !holds_again) else {
                continue;
            };
            for location in &locations {
                let dropped = match tessera_worker::WorkerClient::connect(url) {
                    Ok(client) => client.drop_partition(location, partition).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = dropped {
                    tracing::warn!(%worker, partition, error = %e, "files of a removed copy were left behind");
                }
            }
        }
    });
}

/// Copies being caught up now: (map key, partition, worker).
static COPYING: Mutex<BTreeSet<(String, u32, String)>> = Mutex::new(BTreeSet::new());

/// A copy being caught up; released when dropped.
pub(crate) struct Copying((String, u32, String));

impl Copying {
    /// Claims the copy of `partition` of `table` on `worker`: `None` while
    /// it is caught up (or its files removed) elsewhere.
    pub(crate) fn claim(table: &str, partition: u32, worker: &str) -> Option<Self> {
        let key = (table.to_string(), partition, worker.to_string());
        let mut copying = COPYING.lock().ok()?;
        // Made only if claimed: a `Copying` dropped here, under the lock,
        // would take the lock again in its `drop`.
        copying.insert(key.clone()).then(|| Self(key))
    }
}

impl Drop for Copying {
    fn drop(&mut self) {
        if let Ok(mut copying) = COPYING.lock() {
            copying.remove(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Copying;

    /// A second claim of a copy being caught up is refused (and does not
    /// deadlock); once the first is done it can be claimed again.
    #[test]
    fn a_copy_is_caught_up_once_at_a_time() {
        let first = Copying::claim("t", 3, "w1").unwrap();
        assert!(Copying::claim("t", 3, "w1").is_none());
        let other = Copying::claim("t", 3, "w2");
        assert!(other.is_some());
        drop(first);
        assert!(Copying::claim("t", 3, "w1").is_some());
    }
}
