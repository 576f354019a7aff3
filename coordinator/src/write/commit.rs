//! The second half of a write: decide it in the metastore, then commit it
//! on every worker that holds a piece (retrying those that do not confirm).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use futures::future::join_all;
use tessera_worker::{DataFile, StagedWrite, WorkerClient};

use super::{Prepared, abort};
use crate::catalog::{Catalog, TxnGuard};
use crate::catalog_state::{CatalogState, PartsDelta, StatsDelta, table_key};

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ack {
    /// Once its decision is logged: from then on it is durable and every
    /// snapshot sees it, a worker that has not committed it yet committing
    /// it before it reads (resolve on read), so the commits need not be
    /// waited for (as CockroachDB resolves a committed transaction's
    /// intents after answering). INSERTs.
    Decided,
    /// Once every worker has confirmed its commit too (or failed to, and is
    /// retried in the background): for writers whose next step reads the
    /// workers' manifests rather than a snapshot (compaction, backfills,
    /// the ASYNC applier, bulk ingest).
    Committed,
}

/// The second half of a transaction whose writes are all prepared (staged
/// and durable on their workers): decide it (the metastore logs it, and
/// `decide` updates counters in the same write), then commit `writes`, one
/// call per worker. Once decided the write lands, even across a crash, and
/// every snapshot taken from then on sees all of it: the order in which
/// workers commit does not matter (a read resolves what has not landed).
/// Returns when `ack` says.
///
/// The decision and the commits run as one task that owns `guard`: a
/// statement dropped at any point here (its client gone) still has its
/// decision either land and be committed (then handed to the catalog to
/// forget, with the guard), or fail and be aborted, and its transaction
/// stays in flight until then (so a worker that rejoins meanwhile does not
/// have its staged files taken for leftovers). Otherwise a decision landing
/// after the drop would hold back compaction, the ASYNC applier and
/// catch-ups of its partitions until a restart.
///
/// A write holding its table's gate (INSERT, ingest) counts what it adds
/// to the table's statistics in a key of its own transaction
/// (`stats_delta/`), folded in once it is forgotten: concurrent writes to
/// one table then write no common key, so their decisions share a
/// metastore write instead of taking turns. The statistics key is also
/// what a copy rejoining its in-sync set would race on; the gate keeps
/// such a rejoin out instead. The decision holds only while the table's
/// definition is the one it read (a DROP that landed first makes it fail,
/// changing nothing).
pub(crate) async fn decide_and_commit(
    catalog: &Arc<Catalog>,
    guard: TxnGuard,
    writes: BTreeMap<String, Vec<StagedWrite>>,
    urls: BTreeMap<String, String>,
    ack: Ack,
    mut decide: impl FnMut(&mut CatalogState) -> Result<()> + Send + 'static,
) -> Result<()> {
    let catalog = Arc::clone(catalog);
    let (acked, acknowledged) = tokio::sync::oneshot::channel::<Result<()>>();
    tokio::spawn(async move {
        let txn = guard.txn;
        let gated = guard.gated_table().is_some();
        let reads: Vec<String> = guard.gated_table().map(table_key).into_iter().collect();
        // Decide: once logged, the write will land even across a crash.
        let decided = catalog
            .update_reading(&reads, |s| {
                s.decided.insert(txn, writes.clone());
                if !gated {
                    return decide(s);
                }
                // `decide` only adds to `stats` here (`add_stats`,
                // `bump_writes`), so it starts from nothing and what it
                // leaves is the delta.
                let stored = std::mem::take(&mut s.stats);
                let decided = decide(s);
                let added = std::mem::replace(&mut s.stats, stored);
                decided?;
                let delta: StatsDelta = added
                    .into_iter()
                    .filter_map(|(key, parts)| {
                        let owner = crate::catalog::owner_of(s, &key)?.id;
                        Some((key, PartsDelta { owner, parts }))
                    })
                    .collect();
                if !delta.is_empty() {
                    s.stats_deltas.insert(txn, delta);
                }
                Ok(())
            })
            .await;
        if let Err(e) = decided {
            abort(txn, urls.values()).await;
            let _ = acked.send(Err(e));
            return;
        }

        crate::failpoint::hit("abort-after-decide");
        let mut acked = Some(acked);
        if ack == Ack::Decided
            && let Some(acked) = acked.take()
        {
            let _ = acked.send(Ok(()));
        }

        // Phase 2: make it visible everywhere. The statement is decided,
        // so it succeeds; a worker that did not confirm is retried in the
        // background until it does (commit is idempotent).
        let failed = commit_all(txn, &writes, &urls).await;
        if failed.is_empty() {
            // The guard (its gate share) goes once the decision is
            // forgotten: a copy waiting to rejoin takes the gate when no
            // write of the table is still in the decision log.
            catalog.finished(txn, Some(guard));
        } else {
            tokio::spawn(retry_commit(Arc::clone(&catalog), txn, failed));
            drop(guard);
        }
        if let Some(acked) = acked {
            let _ = acked.send(Ok(()));
        }
    });
    acknowledged.await.map_err(|_| {
        DataFusionError::Execution(
            "the write's outcome is unknown: the task deciding it stopped; \
             check whether its rows are there before writing them again"
                .to_string(),
        )
    })?
}

/// Decides prepared transactions in one metastore write, so they land
/// together or not at all: `place` changes the partition map, the copies
/// that took each piece are settled, and `decide` updates counters given
/// each transaction's files. Then commits them all, and returns once every
/// worker confirmed (one that did not is retried in the background). For
/// writers that do not hold a reader share of their table's gate (whose
/// statistics go by delta keys): a split or merge, holding it whole, for
/// its copy of the parents and its catch-up on the writes made meanwhile. The caller runs it in a task of its own, so a dropped
/// statement cannot stop it between the decision and the commits.
pub(crate) async fn decide_and_commit_together(
    catalog: &Arc<Catalog>,
    prepared: Vec<(TxnGuard, Prepared)>,
    mut place: impl FnMut(&mut CatalogState) -> Result<()>,
    mut decide: impl FnMut(&mut CatalogState, &[&[DataFile]]) -> Result<()>,
) -> Result<()> {
    let decided = catalog
        .update_reading(&[], |s| {
            place(s)?;
            for (_, p) in &prepared {
                s.decided.insert(p.txn, p.writes.clone());
                p.settle(s)?;
            }
            let files: Vec<&[DataFile]> =
                prepared.iter().map(|(_, p)| p.files.as_slice()).collect();
            decide(s, &files)
        })
        .await;
    if let Err(e) = decided {
        for (_, p) in &prepared {
            p.abort().await;
        }
        return Err(e);
    }
    crate::failpoint::hit("abort-after-split-decide");
    for (guard, p) in prepared {
        let failed = commit_all(p.txn, &p.writes, &p.urls).await;
        if failed.is_empty() {
            catalog.finished(p.txn, Some(guard));
        } else {
            tokio::spawn(retry_commit(Arc::clone(catalog), p.txn, failed));
            drop(guard);
        }
    }
    Ok(())
}

/// Commits `txn` on every worker; returns the writes of workers that failed.
async fn commit_all(
    txn: u64,
    writes: &BTreeMap<String, Vec<StagedWrite>>,
    urls: &BTreeMap<String, String>,
) -> BTreeMap<String, Vec<StagedWrite>> {
    let commits = writes.iter().map(|(worker, w)| async move {
        let result = match urls.get(worker) {
            Some(url) => match WorkerClient::connect(url) {
                Ok(client) => client.commit(txn, w.clone()).await,
                Err(e) => Err(e),
            },
            None => Err(DataFusionError::Internal(format!("no url for {worker}"))),
        };
        (worker, w, result)
    });
    let mut failed = BTreeMap::new();
    for (worker, w, result) in join_all(commits).await {
        if let Err(e) = result {
            tracing::warn!(txn, %worker, error = %e, "commit not confirmed; retrying");
            failed.insert(worker.clone(), w.clone());
        }
    }
    failed
}

/// Keeps committing on workers that did not confirm, backing off up to 5 s,
/// until all have (at the URL each has then: a restarted worker may listen
/// elsewhere), or their copies have left the in-sync set or the partition
/// map, or their table was dropped (their writes then leave the decision
/// log); the next start's recovery covers a stop before that.
pub(crate) async fn retry_commit(
    catalog: Arc<Catalog>,
    txn: u64,
    mut pending: BTreeMap<String, Vec<StagedWrite>>,
) {
    let mut delay = std::time::Duration::from_millis(100);
    while !pending.is_empty() {
        tokio::time::sleep(delay).await;
        if catalog.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
        if let Ok(state) = catalog.state() {
            // Only writes still logged: a copy that left the in-sync set or
            // the partition map since has its pending commits dropped
            // (`copies::forget_pending`). Nor into a table or index
            // dropped since (its files go, or went, with it): a statement
            // acknowledged at its decision may be followed at once by its
            // table's DROP or a `SET REPLICAS` that removes a copy.
            let logged = state.decided.get(&txn);
            let live = crate::copies::live_locations(&state);
            pending.retain(|worker, writes| {
                let Some(logged) = logged.and_then(|l| l.get(worker)) else {
                    return false;
                };
                writes.retain(|w| logged.contains(w) && live.contains(&w.table));
                !writes.is_empty()
            });
        }
        let urls = catalog.members().unwrap_or_default();
        pending = commit_all(txn, &pending, &urls).await;
    }
    catalog.finished(txn, None);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;
    use crate::metastore::FileMetastore;

    /// An INSERT is acknowledged once decided, while its worker has not
    /// answered the commit; and a commit that cannot land because its
    /// table was dropped meanwhile is not retried for ever (its decision
    /// would hold back compaction and the ASYNC applier until a restart).
    #[tokio::test]
    async fn acknowledged_once_decided_and_a_dropped_tables_commit_is_let_go() {
        tokio::time::timeout(Duration::from_secs(60), decided_then_dropped())
            .await
            .expect("the test ends within a minute");
    }

    async fn decided_then_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileMetastore::open(dir.path()).unwrap();
        let catalog = Catalog::open(Box::new(store), BTreeMap::new(), Duration::from_secs(5))
            .await
            .unwrap();
        // A worker that takes connections and never answers.
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", hung.local_addr().unwrap());
        let accepted = tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((socket, _)) = hung.accept().await {
                held.push(socket);
            }
        });
        let guard = catalog.begin_txn().await.unwrap();
        let txn = guard.txn;
        let write = StagedWrite {
            txn,
            table: "t_of_a_dropped_table".into(),
            partition: 0,
        };
        let writes = BTreeMap::from([("w1".to_string(), vec![write])]);
        let urls = BTreeMap::from([("w1".to_string(), url)]);
        decide_and_commit(&catalog, guard, writes, urls, Ack::Decided, |_| Ok(()))
            .await
            .expect("acknowledged while the commit hangs");
        assert!(catalog.state().unwrap().decided.contains_key(&txn));
        assert!(catalog.is_unresolved(txn).unwrap());

        // The worker goes (its connections reset): the commit fails, and
        // the retry finds no table to commit into.
        accepted.abort();
        while catalog.is_unresolved(txn).unwrap() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(catalog.state().unwrap().decided.is_empty());
    }

    /// A decided write's pending commit on a copy that is then taken out
    /// of the partition map (`SET REPLICAS` lowered, a move switched) is
    /// let go, while the one on a copy that stays is still retried.
    #[tokio::test]
    async fn a_removed_copys_pending_commit_is_let_go() {
        tokio::time::timeout(Duration::from_secs(60), removed_copy())
            .await
            .expect("the test ends within a minute");
    }

    async fn removed_copy() {
        use arrow::datatypes::{DataType, Field, Schema};
        use tessera_sql::{PartitionPlacement, PartitionScheme, TableDef};

        let dir = tempfile::tempdir().unwrap();
        let store = FileMetastore::open(dir.path()).unwrap();
        let catalog = Catalog::open(Box::new(store), BTreeMap::new(), Duration::from_secs(5))
            .await
            .unwrap();
        let schema = Schema::new(vec![Field::new("k", DataType::Int64, false)]);
        let def = TableDef::try_new("t", 1, &schema, PartitionScheme::Single).unwrap();
        let location = def.storage_key();
        catalog
            .update(|s| {
                s.tables.insert("t".into(), def.clone());
                s.map.tables.insert(
                    "t".into(),
                    vec![PartitionPlacement {
                        id: 0,
                        replicas: vec!["w1".into(), "w2".into()],
                        out_of_sync: vec![],
                        range: None,
                    }],
                );
                Ok(())
            })
            .await
            .unwrap();
        // Workers that take connections and never answer, until aborted.
        let mut urls = BTreeMap::new();
        let mut listeners = BTreeMap::new();
        for worker in ["w1", "w2"] {
            let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.insert(
                worker.to_string(),
                format!("http://{}", hung.local_addr().unwrap()),
            );
            let accepted = tokio::spawn(async move {
                let mut held = vec![];
                while let Ok((socket, _)) = hung.accept().await {
                    held.push(socket);
                }
            });
            listeners.insert(worker, accepted);
        }
        let guard = catalog.begin_txn().await.unwrap();
        let txn = guard.txn;
        let write = StagedWrite {
            txn,
            table: location.clone(),
            partition: 0,
        };
        let writes = BTreeMap::from([
            ("w1".to_string(), vec![write.clone()]),
            ("w2".to_string(), vec![write]),
        ]);
        decide_and_commit(&catalog, guard, writes, urls, Ack::Decided, |_| Ok(()))
            .await
            .expect("acknowledged while the commits hang");

        // w2's copy leaves the map (as `SET REPLICAS` takes it off), and
        // both workers go: only w1's commit is still to land.
        let take_off = |worker: &'static str| {
            let catalog = Arc::clone(&catalog);
            async move {
                catalog
                    .update(|s| {
                        let p = &mut s.map.tables.get_mut("t").unwrap()[0];
                        p.replicas.retain(|w| w != worker);
                        crate::copies::forget_pending(s, "t", 0, &[worker.to_string()]);
                        Ok(())
                    })
                    .await
                    .unwrap();
            }
        };
        take_off("w2").await;
        for accepted in listeners.values() {
            accepted.abort();
        }
        let logged = catalog.state().unwrap().decided.get(&txn).cloned().unwrap();
        assert_eq!(logged.keys().collect::<Vec<_>>(), vec!["w1"]);
        // Retried for w1 (its copy stays), through several rounds.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(catalog.is_unresolved(txn).unwrap());

        // Once w1's copy goes too, nothing is left to commit.
        take_off("w1").await;
        while catalog.is_unresolved(txn).unwrap() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(catalog.state().unwrap().decided.is_empty());
    }
}
