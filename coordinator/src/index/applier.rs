//! The applier of ASYNC index outboxes: a background task that moves each
//! ASYNC index's outbox entries up to the horizon into the index.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr as PhysicalBinary, Column as PhysicalColumn, Literal as PhysicalLiteral,
};
use tessera_sql::{FILE_COLUMN, IndexDef, IndexKind, Placements, TableDef};
use tessera_worker::{ScanSpec, WorkerClient};

use crate::catalog::Catalog;
use crate::catalog_state::IndexStats;
use crate::write::{Ack, global_index_pieces, write_pieces};

use super::lookup::collect_scan;

/// How long the applier lets writes gather after being woken.
const APPLY_GATHER: Duration = Duration::from_millis(100);

/// The ASYNC applier's runtime state, above the catalog (the engine owns
/// it): writes tell it of outbox entries, `fresh` reads ask it to hurry.
#[derive(Debug, Default)]
pub struct Applier {
    /// Wakes the applier.
    wanted: tokio::sync::Notify,
    /// The largest transaction a `fresh` index read waits for.
    fresh_wanted: AtomicU64,
    /// `SET tessera.index_apply = 'paused'`.
    paused: AtomicBool,
    /// Per ASYNC index, the transactions of this run whose outbox entries
    /// are not applied yet (the oldest dates the lag).
    pending: Mutex<BTreeMap<String, BTreeSet<u64>>>,
}

impl crate::write::OutboxWatcher for Applier {
    /// ASYNC indexes `names` got outbox entries from acknowledged
    /// transaction `txn`: note it for the lag, and wake the applier.
    fn outbox_written(&self, names: &mut dyn Iterator<Item = &str>, txn: u64) {
        if let Ok(mut pending) = self.pending.lock() {
            for name in names {
                pending.entry(name.to_string()).or_default().insert(txn);
            }
        }
        self.wanted.notify_one();
    }
}

impl Applier {
    /// A `fresh` read waits for the applier to pass `target`: wake it.
    pub fn want_fresh(&self, target: u64) {
        self.fresh_wanted.fetch_max(target, Ordering::SeqCst);
        self.wanted.notify_one();
    }

    /// Whether `SET tessera.index_apply = 'paused'` holds.
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Pauses or resumes applying outboxes (maintenance, and tests of what
    /// a crash before the apply leaves).
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        self.wanted.notify_one();
    }

    /// Wakes the applier (the coordinator stops, say).
    pub fn wake(&self) {
        self.wanted.notify_one();
    }

    fn has_pending(&self) -> bool {
        self.pending
            .lock()
            .is_ok_and(|p| p.values().any(|t| !t.is_empty()))
    }

    /// Waits until woken, a transaction leaves the decision log while
    /// outbox entries wait (the applier's horizon stops at the oldest
    /// write still logged), or `timeout` passes.
    async fn woken(&self, forgotten: &mut tokio::sync::watch::Receiver<u64>, timeout: Duration) {
        let woken = async {
            loop {
                tokio::select! {
                    _ = self.wanted.notified() => return,
                    changed = forgotten.changed() => {
                        if changed.is_err() || self.has_pending() {
                            return;
                        }
                    }
                }
            }
        };
        let _ = tokio::time::timeout(timeout, woken).await;
    }
}

/// Runs the ASYNC applier until the catalog is closed: a round when a
/// write left outbox entries, a fresh read waits, or every second.
pub fn spawn_applier(catalog: &Arc<Catalog>, applier: &Arc<Applier>) {
    let weak = Arc::downgrade(catalog);
    let applier = Arc::clone(applier);
    let mut forgotten = catalog.watch_forgotten();
    tokio::spawn(async move {
        loop {
            let Some(catalog) = weak.upgrade() else {
                return;
            };
            if catalog.closed.load(Ordering::SeqCst) {
                return;
            }
            if !applier.paused() {
                // Indexes dropped since are waited for no more. The
                // catalog is read under the pending lock: an entry noted
                // before it was taken is of an index created before this
                // read, so an index is never pruned for being newer.
                let names: Vec<String> = {
                    let mut pending = applier
                        .pending
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let names: Vec<String> = catalog
                        .state()
                        .map(|s| {
                            s.indexes
                                .values()
                                .filter(|i| i.kind == IndexKind::GlobalAsync)
                                .map(|i| i.name.clone())
                                .collect()
                        })
                        .unwrap_or_default();
                    pending.retain(|name, _| names.contains(name));
                    names
                };
                for name in names {
                    let started = Instant::now();
                    // Its own task: a panic in one round is reported, and
                    // the applier goes on.
                    let round = tokio::spawn({
                        let catalog = Arc::clone(&catalog);
                        let applier = Arc::clone(&applier);
                        async move {
                            let round = apply_round(&catalog, &applier, &name);
                            round.await.map_err(|e| (name, e))
                        }
                    });
                    match round.await {
                        Ok(Ok(())) => {}
                        Ok(Err((name, e))) => {
                            tracing::warn!(index = %name, error = %e, "applying the outbox failed; retrying")
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "an outbox apply round failed; retrying")
                        }
                    }
                    if started.elapsed() > Duration::from_secs(5) {
                        tracing::warn!(
                            seconds = started.elapsed().as_secs_f64(),
                            "an outbox apply round was slow"
                        );
                    }
                }
            }
            let wake = Arc::clone(&catalog);
            drop(catalog);
            applier.woken(&mut forgotten, Duration::from_secs(1)).await;
            // Let a burst of writes gather, so one round applies them all;
            // a fresh read waiting cuts it short.
            // Only this task moves `applied_through`: read it once.
            let applied = wake.state().ok().and_then(|s| {
                s.indexes
                    .values()
                    .filter(|i| i.kind == IndexKind::GlobalAsync)
                    .map(|i| applied(i, &s.index_stats.get(&i.name).copied().unwrap_or_default()))
                    .min()
            });
            let gathering = Instant::now();
            while gathering.elapsed() < APPLY_GATHER {
                if applied.is_some_and(|a| applier.fresh_wanted.load(Ordering::SeqCst) > a) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
}

/// Applies the outbox entries of one ASYNC index up to the horizon.
async fn apply_round(catalog: &Arc<Catalog>, applier: &Applier, name: &str) -> Result<()> {
    let state = catalog.state()?;
    let Some(def) = state.indexes.get(name).cloned() else {
        return Ok(());
    };
    let Some(table) = state.tables.get(&def.table).cloned() else {
        return Ok(());
    };
    let stats = state.index_stats.get(name).copied().unwrap_or_default();
    let horizon = catalog.horizon()?;
    // Checked after the horizon is taken: a write acknowledged after the
    // pause is past it, so a round that began before does not apply it.
    if applier.paused() {
        return Ok(());
    }
    let from = applied(&def, &stats);
    let pending = stats.outbox_rows > stats.applied_rows;
    let wanted = applier.fresh_wanted.load(Ordering::SeqCst) > from;
    if horizon <= from || !(pending || wanted) {
        return Ok(());
    }
    let entry_schema = def.entry_schema(table.schema()?.as_ref())?;
    let entries = if pending {
        read_outbox(catalog, &table, &def, &entry_schema, from, horizon).await?
    } else {
        vec![]
    };
    let count: u64 = entries.iter().map(|b| b.num_rows() as u64).sum();
    // Entries past the horizon are from transactions of this run, acknowledged
    // after the horizon was taken; if one is not noted yet, it is newer than
    // the horizon.
    let next_pending = applier
        .pending
        .lock()
        .ok()
        .and_then(|p| p.get(name)?.range(horizon + 1..).next().copied())
        .unwrap_or(horizon + 1);
    let index = name.to_string();
    let record = move |s: &mut crate::catalog_state::CatalogState| {
        let st = s.index_stats.entry(index.clone()).or_default();
        st.applied_through = st.applied_through.max(horizon);
        st.applied_rows += count;
        st.entries += count;
        st.pending_since = if st.outbox_rows > st.applied_rows {
            next_pending.max(st.pending_since)
        } else {
            0
        };
        Ok(())
    };
    let pieces = global_index_pieces(catalog, &table, &def, &entry_schema, &entries)?;
    if pieces.is_empty() {
        catalog.update(record).await?;
    } else {
        let guard = catalog.begin_txn().await?;
        write_pieces(catalog, guard, pieces, Ack::Committed, move |s, _| {
            record(s)
        })
        .await?;
    }
    if let Ok(mut p) = applier.pending.lock()
        && let Some(p) = p.get_mut(name)
    {
        p.retain(|txn| *txn > horizon);
    }
    if count > 0 {
        // Applied entries leave the outbox (a crash before this only
        // leaves files the next round skips by their transaction id).
        truncate_outbox(catalog, &table, &def, horizon).await;
    }
    Ok(())
}

async fn truncate_outbox(catalog: &Catalog, table: &TableDef, def: &IndexDef, upto: u64) {
    let all: Vec<u32> = catalog
        .placements(&table.name)
        .map(|p| p.ids())
        .unwrap_or_default();
    let Ok(targets) = catalog.write_targets(&table.name, &all) else {
        return;
    };
    // Every in-sync copy drops the same files (those of transactions up
    // to `upto`); a copy catching up takes its source's manifest whole.
    let mut by_url: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for target in targets {
        for p in target.replicas.into_iter().flatten() {
            by_url.entry(p.url).or_default().push(target.partition);
        }
    }
    let location = def.outbox_key(table);
    for (url, partitions) in by_url {
        let result = async {
            WorkerClient::connect(&url)?
                .truncate(&location, partitions, upto)
                .await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(index = %def.name, %url, error = %e, "applied outbox entries were not removed");
        }
    }
}

/// The outbox entries of transactions in `(from, to]`, from every data
/// partition's owner.
async fn read_outbox(
    catalog: &Catalog,
    table: &TableDef,
    def: &IndexDef,
    entry_schema: &SchemaRef,
    from: u64,
    to: u64,
) -> Result<Vec<RecordBatch>> {
    let file = Arc::new(PhysicalColumn::new(
        FILE_COLUMN,
        entry_schema.index_of(FILE_COLUMN)?,
    )) as Arc<dyn datafusion::physical_expr::PhysicalExpr>;
    let bound = |op, v| {
        Arc::new(PhysicalBinary::new(
            Arc::clone(&file),
            op,
            Arc::new(PhysicalLiteral::new(ScalarValue::UInt64(Some(v)))),
        )) as Arc<dyn datafusion::physical_expr::PhysicalExpr>
    };
    let predicate = Arc::new(PhysicalBinary::new(
        bound(Operator::Gt, from),
        Operator::And,
        bound(Operator::LtEq, to),
    ));
    let all: Vec<u32> = catalog
        .placements(&table.name)
        .map(|p| p.ids())
        .unwrap_or_default();
    let parts = catalog.scan_parts(&table.name, &all)?;
    let spec = ScanSpec {
        table: format!("{} outbox", def.name),
        location: def.outbox_key(table),
        table_schema: Arc::clone(entry_schema),
        projection: None,
        predicate: Some(predicate),
        limit: None,
        total_partitions: all.len() as u32,
        kept_partitions: all.len() as u32,
        estimate: None,
        colocated_on: None,
        index: None,
        // Below the horizon every file is committed everywhere.
        snapshot: None,
        query: None,
    };
    collect_scan(spec, parts).await
}

/// Every write up to this one is in the ASYNC index: those the applier
/// applied, and those up to the index's creation, which its backfill
/// covers (with no write since, the applier has nothing to move).
pub(super) fn applied(def: &IndexDef, stats: &IndexStats) -> u64 {
    stats.applied_through.max(def.since_txn)
}
