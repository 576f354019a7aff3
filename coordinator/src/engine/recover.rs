//! What a leading coordinator finishes when it opens: writes a crash left
//! between prepare and commit, the staging tables of replacing ingests it
//! stopped, and the external tables of the catalog.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use tessera_worker::WorkerClient;

use super::Coordinator;
use crate::catalog::Catalog;

impl Coordinator {
    /// Resolves writes a crash left between prepare and commit: decided
    /// ones are committed on every worker they touched (whether or not a
    /// staged file is left: commit is idempotent), undecided ones aborted.
    /// A worker that is down or fails does not stop the start: its decided
    /// writes are retried in the background until it confirms (reads
    /// resolve them meanwhile), and its undecided ones wait for the next
    /// start.
    pub(super) async fn recover(&self) -> Result<()> {
        let state = self.catalog.state()?;
        let members = self.catalog.members()?;
        let mut finished = vec![];
        for (txn, by_worker) in &state.decided {
            let mut pending = BTreeMap::new();
            for (worker, writes) in by_worker {
                let result = match members.get(worker) {
                    Some(url) => match WorkerClient::connect(url) {
                        Ok(client) => client.commit(*txn, writes.clone()).await,
                        Err(e) => Err(e),
                    },
                    None => Err(DataFusionError::Execution(format!(
                        "worker {worker} is not a member"
                    ))),
                };
                if let Err(e) = result {
                    tracing::warn!(txn, %worker, error = %e, "a decided write is not committed yet; retrying in the background");
                    pending.insert(worker.clone(), writes.clone());
                }
            }
            if pending.is_empty() {
                tracing::info!(txn, "finished a decided write");
                finished.push(*txn);
            } else {
                tokio::spawn(crate::write::retry_commit(
                    Arc::clone(&self.catalog),
                    *txn,
                    pending,
                ));
            }
        }
        for (worker, url) in &members {
            if let Err(e) = self.abort_leftovers(worker, url).await {
                tracing::warn!(%worker, error = %e, "undecided writes on this worker stay staged until the next start");
            }
            self.remove_orphans_later(worker, url);
        }
        self.catalog
            .update(|s| {
                for txn in &finished {
                    s.decided.remove(txn);
                }
                let pending: Vec<u64> = s.stats_deltas.keys().copied().collect();
                s.fold_stats_deltas(pending);
                Ok(())
            })
            .await?;
        // A replacing ingest that a crash stopped before its swap.
        for name in state
            .tables
            .keys()
            .filter(|n| crate::catalog::is_staging(n))
        {
            if let Err(e) = self.drop_table(name, true).await {
                tracing::warn!(table = %name, error = %e, "a stopped ingest's rows stay until the next start");
            }
        }
        Ok(())
    }

    /// Aborts the staged writes on a worker of transactions that can no
    /// longer commit (neither in flight nor decided): left by a failed
    /// statement, or by a crash before the decision.
    pub(super) async fn abort_leftovers(&self, worker: &str, url: &str) -> Result<()> {
        let client = WorkerClient::connect(url)?;
        let mut txns: Vec<u64> = client.staged().await?.iter().map(|w| w.txn).collect();
        txns.dedup();
        for txn in txns {
            if !self.catalog.is_unresolved(txn)? {
                client.abort(txn).await?;
                tracing::info!(txn, %worker, "aborted a write that was never decided");
            }
        }
        Ok(())
    }

    /// Removes, in the background, the directories on a worker that no
    /// table or index of the catalog names: those of a table dropped or
    /// replaced (or an index dropped) when this coordinator stopped before
    /// it removed their files. They go once no query that began before
    /// may read them.
    pub(super) fn remove_orphans_later(&self, worker: &str, url: &str) {
        let catalog = Arc::clone(&self.catalog);
        let (worker, url) = (worker.to_string(), url.to_string());
        tokio::spawn(async move {
            if let Err(e) = remove_orphans(&catalog, &worker, &url).await {
                tracing::warn!(%worker, error = %e, "files of dropped tables on this worker stay until it rejoins or the next start");
            }
        });
    }

    pub(super) async fn restore_external_tables(&self) {
        let Ok(state) = self.catalog.state() else {
            return;
        };
        for (name, sql) in state.external_tables {
            if let Err(e) = self.ctx().sql(&sql).await {
                tracing::warn!(table = %name, error = %e, "external table could not be restored");
            }
        }
    }
}

async fn remove_orphans(catalog: &Arc<Catalog>, worker: &str, url: &str) -> Result<()> {
    let client = WorkerClient::connect(url)?;
    remove_orphan_partitions(catalog, worker, &client).await?;
    // Listed before the catalog is read: a table or index is in the
    // catalog before any of its files is written, so one made meanwhile
    // is named there.
    let held = client.tables().await?;
    let state = catalog.state()?;
    // Every directory a table or index of the catalog may have.
    let live = crate::copies::live_locations(&state);
    let orphans: Vec<String> = held
        .into_iter()
        .filter(|k| !live.contains(k) && handed_out(k, &state))
        .collect();
    if orphans.is_empty() {
        return Ok(());
    }
    let generation = catalog.new_generation();
    catalog.snapshots_before(generation).await;
    for key in orphans {
        match client.drop_table(&key).await {
            Ok(()) => {
                tracing::info!(%worker, table = %key, "removed the files of a table the catalog no longer names");
            }
            Err(e) => {
                tracing::warn!(%worker, table = %key, error = %e, "files of a dropped table stay until the worker rejoins or the next start");
            }
        }
    }
    Ok(())
}

/// Removes, once no query that began before may read them, the partition
/// directories on `worker` of live tables and indexes whose copy there the
/// partition map no longer lists: a split or merge's parents, or a copy
/// moved away, when this coordinator stopped before it removed their
/// files. Partitions above every id in the map are left alone: a split or
/// merge under way stages its children there (ids only grow).
async fn remove_orphan_partitions(
    catalog: &Arc<Catalog>,
    worker: &str,
    client: &WorkerClient,
) -> Result<()> {
    let held = client.partitions().await?;
    let state = catalog.state()?;
    let mut orphans: BTreeMap<u64, Vec<crate::copies::Copy>> = BTreeMap::new();
    for (key, placements) in &state.map.tables {
        let Some((owner, locations)) = crate::copies::files_of(&state, key) else {
            continue;
        };
        let Some(top) = placements.iter().map(|p| p.id).max() else {
            continue;
        };
        let mut here: Vec<u32> = locations
            .iter()
            .filter_map(|l| held.get(l))
            .flatten()
            .copied()
            .filter(|p| {
                *p <= top
                    && !placements
                        .iter()
                        .any(|c| c.id == *p && c.replicas.iter().any(|w| w == worker))
            })
            .collect();
        here.sort_unstable();
        here.dedup();
        for p in here {
            tracing::info!(%worker, table = %key, partition = p, "files of a partition copy the map no longer lists go");
            orphans
                .entry(owner.id)
                .or_default()
                .push((key.clone(), p, worker.to_string()));
        }
    }
    for (table_id, copies) in orphans {
        crate::copies::drop_files_later(catalog, table_id, copies);
    }
    Ok(())
}

/// Whether the storage key `key` is one this catalog handed out: its
/// table's id (and its index's) below the counters that give them. A
/// directory of a table made after the catalog's state was saved (a
/// coordinator started on a backup of its data dir, or on none) is not
/// this catalog's to remove, nor is one whose name it does not know.
fn handed_out(key: &str, state: &crate::catalog_state::CatalogState) -> bool {
    let digits = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    // An index's directory: `<table key>.i<id>` or `<table key>.o<id>`.
    let (table, index) = match key.rsplit_once('.') {
        Some((t, i)) if (i.starts_with('i') || i.starts_with('o')) && digits(&i[1..]).is_some() => {
            (t, digits(&i[1..]))
        }
        _ => (key, None),
    };
    // A table's: `t<id>`, or `<name>.<id>` of an earlier version.
    let id = match table.strip_prefix('t').and_then(digits) {
        Some(id) => Some(id),
        None => table.rsplit_once('.').and_then(|(_, id)| digits(id)),
    };
    let Some(id) = id else {
        return false;
    };
    id < state.tables_created && index.is_none_or(|i| i < state.indexes_created)
}

#[cfg(test)]
mod tests {
    use super::handed_out;
    use crate::catalog_state::CatalogState;

    #[test]
    fn only_keys_of_ids_the_catalog_gave_are_removable() {
        let state = CatalogState {
            tables_created: 5,
            indexes_created: 3,
            ..Default::default()
        };
        for key in ["t0", "t4", "t4.i2", "t1.o0", "old.name.4", "old.4.i1"] {
            assert!(handed_out(key, &state), "{key}");
        }
        for key in [
            "t5",
            "t12",
            "t4.i3",
            "t1.o7",
            "old.name.5",
            "tx",
            "t",
            "t1.x2",
            "name",
        ] {
            assert!(!handed_out(key, &state), "{key}");
        }
    }
}
