//! Secondary indexes on the coordinator: `CREATE INDEX` with its backfill,
//! `DROP INDEX`, `SHOW INDEXES`, the applier of ASYNC outboxes, and the
//! read side (which index a scan uses, and the lookup of a GLOBAL one).
//!
//! ```text
//! CREATE INDEX ─► catalog: index "building", since_txn = last txn
//!             ─► wait for older writes to finish
//!             ─► per data partition: entries of rows up to since_txn
//!                (DoGet on its owner) ─► one transaction each ─► "ready"
//! INSERT      ─► (writes after since_txn) entries in the same transaction
//! applier     ─► outbox entries with since < txn <= horizon, all partitions
//!                ─► one transaction to the index; the same metastore write
//!                   decides it and moves `applied_through` to the horizon
//! ```
//!
//! The applier's horizon is the oldest transaction still in flight, so an
//! outbox entry is never skipped by a slower transaction with a smaller id;
//! because the move of `applied_through` is decided with the entries it
//! applied, a crash at any point neither loses nor doubles an entry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, DataFusionError, Result, ScalarValue, plan_err};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use datafusion::physical_expr::expressions::{
    BinaryExpr as PhysicalBinary, Column as PhysicalColumn, Literal as PhysicalLiteral,
};
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use tessera_sql::{
    CreateIndex, FILE_COLUMN, IndexDef, IndexKind, IndexState, PART_COLUMN, Partitioner,
    ROW_COLUMN, TableDef,
};
use tessera_worker::index::locate;
use tessera_worker::wire::EntriesRequest;
use tessera_worker::{
    IndexRead, PartitionScanExec, ScanPart, ScanSpec, Snapshot, WorkerClient, sort_by_columns,
};

use crate::catalog::Catalog;
use crate::catalog_state::IndexStats;
use crate::options::TesseraOptions;
use crate::write::{Piece, Role, global_index_pieces, write_pieces};

/// How long the applier lets writes gather after being woken.
const APPLY_GATHER: Duration = Duration::from_millis(100);

/// How long a `fresh` read waits for an ASYNC index to catch up.
const FRESH_WAIT: Duration = Duration::from_secs(30);

/// `CREATE INDEX`: registers the index, then backfills the rows written
/// before it (writes go on meanwhile and maintain it themselves).
pub async fn create_index(catalog: &Arc<Catalog>, ci: CreateIndex) -> Result<()> {
    let Some(table) = catalog.table_def(&ci.table)? else {
        return plan_err!(
            "table '{}' does not exist; SHOW TABLES lists the tables",
            ci.table
        );
    };
    let workers: Vec<String> = catalog.members()?.keys().cloned().collect();
    let created = catalog
        .update(|s| {
            if let Some(old) = s.indexes.get(&ci.name) {
                if ci.if_not_exists {
                    return Ok(None);
                }
                return plan_err!(
                    "index '{}' already exists on '{}'; DROP INDEX {} first",
                    ci.name,
                    old.table,
                    ci.name
                );
            }
            let mut def = IndexDef::try_new(
                &ci.name,
                &table,
                s.indexes_created,
                ci.columns.clone(),
                ci.kind,
                ci.partitions,
            )?;
            // Under the state lock, as `begin_write` takes its txn: writes
            // after this id maintain the index, the backfill covers the rest.
            def.since_txn = catalog.last_txn();
            if def.kind.is_global() {
                s.map
                    .place_table(&def.map_key(), def.partitions, &workers, 0);
            }
            s.indexes_created += 1;
            s.index_stats.insert(def.name.clone(), Default::default());
            s.indexes.insert(def.name.clone(), def.clone());
            Ok(Some(def))
        })
        .await?;
    let Some(def) = created else {
        return Ok(());
    };
    backfill(Arc::clone(catalog), def.name.clone()).await
}

/// Adds the entries of rows written up to the index's `since_txn`, one data
/// partition per transaction; resumes where an interrupted one stopped.
pub async fn backfill(catalog: Arc<Catalog>, name: String) -> Result<()> {
    let Some(def) = catalog.state()?.indexes.get(&name).cloned() else {
        return Ok(());
    };
    // Writes that began before the index existed may still add rows up to
    // since_txn; wait until they have finished.
    while catalog
        .oldest_unfinished()?
        .is_some_and(|t| t <= def.since_txn)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Some(table) = catalog.table_def(&def.table)? else {
        return Ok(());
    };
    let IndexState::Building { done, total } = def.state else {
        return Ok(());
    };
    let schema = table.schema()?;
    let entry_schema = def.entry_schema(&schema)?;
    let columns: Vec<(String, String)> = def
        .columns
        .iter()
        .map(|c| {
            Ok((
                c.clone(),
                schema.field_with_name(c)?.data_type().to_string(),
            ))
        })
        .collect::<Result<_>>()?;
    for partition in done..total {
        let target = catalog
            .scan_parts(&table.name, &[partition])?
            .pop()
            .ok_or_else(|| DataFusionError::Internal("no partition target".into()))?;
        let request = EntriesRequest {
            table: table.storage_key(),
            partition,
            columns: columns.clone(),
            with_part: def.kind.is_global(),
            max_txn: def.since_txn,
        };
        let entries = WorkerClient::connect(&target.url)?
            .index_entries(&request)
            .await?;
        let count: u64 = entries.iter().map(|b| b.num_rows() as u64).sum();
        let pieces = if count == 0 {
            vec![]
        } else if def.kind.is_global() {
            global_index_pieces(&catalog, &table, &def, &entry_schema, &entries)?
        } else {
            let batch = concat_batches(&entry_schema, &entries)?;
            vec![Piece {
                location: def.storage_key(&table),
                partition,
                target,
                batch: sort_by_columns(batch, &def.columns)?,
                role: Role::Index,
            }]
        };
        let next = if partition + 1 == total {
            IndexState::Ready
        } else {
            IndexState::Building {
                done: partition + 1,
                total,
            }
        };
        let record = |s: &mut crate::catalog_state::CatalogState| {
            if let Some(d) = s.indexes.get_mut(&name) {
                d.state = next;
            }
            s.index_stats.entry(name.clone()).or_default().entries += count;
            Ok(())
        };
        if pieces.is_empty() {
            catalog.update(record).await?;
        } else {
            let guard = catalog.begin_txn().await?;
            write_pieces(&catalog, guard.txn, pieces, |s, _| record(s)).await?;
        }
    }
    Ok(())
}

/// `DROP INDEX`: forgets the index and removes its files everywhere.
pub async fn drop_index(catalog: &Arc<Catalog>, name: &str, if_exists: bool) -> Result<()> {
    let Some(def) = catalog.state()?.indexes.get(name).cloned() else {
        if if_exists {
            return Ok(());
        }
        return plan_err!("index '{name}' does not exist; SHOW INDEXES lists the indexes");
    };
    let table = catalog.table_def(&def.table)?;
    catalog
        .update(|s| {
            s.indexes.remove(name);
            s.index_stats.remove(name);
            s.map.drop_table(&def.map_key());
            Ok(())
        })
        .await?;
    if let Ok(mut pending) = catalog.outbox_pending.lock() {
        pending.remove(name);
    }
    let Some(table) = table else {
        return Ok(());
    };
    for url in catalog.members()?.values() {
        let client = WorkerClient::connect(url)?;
        for location in [def.storage_key(&table), def.outbox_key(&table)] {
            if let Err(e) = client.drop_table(&location).await {
                tracing::warn!(index = name, %url, error = %e, "files of a dropped index were left behind");
            }
        }
    }
    Ok(())
}

/// `SHOW INDEXES [ON t]`: one row per index.
pub fn show_indexes(catalog: &Catalog, table: Option<&str>) -> Result<RecordBatch> {
    let state = catalog.state()?;
    if let Some(t) = table
        && !state.tables.contains_key(t)
    {
        return plan_err!("table '{t}' does not exist; SHOW TABLES lists the tables");
    }
    let now_micros = crate::clock::now_micros();
    let mut names = vec![];
    let mut tables = vec![];
    let mut columns = vec![];
    let mut kinds = vec![];
    let mut partitions = vec![];
    let mut states = vec![];
    let mut entries = vec![];
    let mut lag_entries = vec![];
    let mut lag_seconds = vec![];
    for def in state.indexes.values() {
        if table.is_some_and(|t| t != def.table) {
            continue;
        }
        let stats = state
            .index_stats
            .get(&def.name)
            .copied()
            .unwrap_or_default();
        names.push(def.name.clone());
        tables.push(def.table.clone());
        columns.push(def.columns.join(", "));
        kinds.push(def.kind.to_string());
        partitions.push(def.partitions);
        states.push(def.state.to_string());
        entries.push(stats.entries);
        if def.kind == IndexKind::GlobalAsync {
            let behind = stats.outbox_rows.saturating_sub(stats.applied_rows);
            lag_entries.push(Some(behind));
            lag_seconds.push(Some(if behind == 0 || stats.pending_since == 0 {
                0.0
            } else {
                now_micros.saturating_sub(stats.pending_since) as f64 / 1e6
            }));
        } else {
            lag_entries.push(None);
            lag_seconds.push(None);
        }
    }
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("index_name", Arc::new(StringArray::from(names))),
        ("table_name", Arc::new(StringArray::from(tables))),
        ("columns", Arc::new(StringArray::from(columns))),
        ("kind", Arc::new(StringArray::from(kinds))),
        ("partitions", Arc::new(UInt32Array::from(partitions))),
        ("state", Arc::new(StringArray::from(states))),
        ("entries", Arc::new(UInt64Array::from(entries))),
        ("lag_entries", Arc::new(UInt64Array::from(lag_entries))),
        ("lag_seconds", Arc::new(Float64Array::from(lag_seconds))),
    ];
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| {
                let nullable = n.starts_with("lag_");
                Field::new(*n, a.data_type().clone(), nullable)
            })
            .collect::<Vec<_>>(),
    ));
    Ok(RecordBatch::try_new(
        schema,
        columns.into_iter().map(|(_, a)| a).collect(),
    )?)
}

/// Runs the ASYNC applier until the catalog is closed: a round when a
/// write left outbox entries, a fresh read waits, or every second.
pub fn spawn_applier(catalog: &Arc<Catalog>) {
    let weak = Arc::downgrade(catalog);
    tokio::spawn(async move {
        loop {
            let Some(catalog) = weak.upgrade() else {
                return;
            };
            if catalog.closed.load(Ordering::SeqCst) {
                return;
            }
            if !catalog.apply_paused.load(Ordering::SeqCst) {
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
                for name in names {
                    let started = Instant::now();
                    // Its own task: a panic in one round is reported, and
                    // the applier goes on.
                    let round = tokio::spawn({
                        let catalog = Arc::clone(&catalog);
                        async move { apply_round(&catalog, &name).await.map_err(|e| (name, e)) }
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
            let _ =
                tokio::time::timeout(Duration::from_secs(1), wake.apply_wanted.notified()).await;
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
                if applied.is_some_and(|a| wake.fresh_wanted.load(Ordering::SeqCst) > a) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
}

/// Applies the outbox entries of one ASYNC index up to the horizon.
async fn apply_round(catalog: &Arc<Catalog>, name: &str) -> Result<()> {
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
    if catalog.apply_paused.load(Ordering::SeqCst) {
        return Ok(());
    }
    let from = applied(&def, &stats);
    let pending = stats.outbox_rows > stats.applied_rows;
    let wanted = catalog.fresh_wanted.load(Ordering::SeqCst) > from;
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
    let next_pending = catalog
        .outbox_pending
        .lock()
        .ok()
        .and_then(|p| p.get(name)?.range(horizon + 1..).next().copied())
        .unwrap_or(horizon + 1);
    let record = |s: &mut crate::catalog_state::CatalogState| {
        let st = s.index_stats.entry(name.to_string()).or_default();
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
        write_pieces(catalog, guard.txn, pieces, |s, _| record(s)).await?;
    }
    if let Ok(mut p) = catalog.outbox_pending.lock()
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
    let all: Vec<u32> = (0..table.scheme.partition_count()).collect();
    let Ok(parts) = catalog.scan_parts(&table.name, &all) else {
        return;
    };
    let mut by_url: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for p in parts {
        by_url.entry(p.url).or_default().push(p.partition);
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
    let all: Vec<u32> = (0..table.scheme.partition_count()).collect();
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
    };
    collect_scan(spec, parts).await
}

/// Runs a scan from the coordinator (each partition read by its owner)
/// and keeps the rows its predicate passes (the scan only prunes by it).
async fn collect_scan(mut spec: ScanSpec, parts: Vec<ScanPart>) -> Result<Vec<RecordBatch>> {
    let predicate = spec.predicate.clone();
    // The predicate reads the table's columns: project after filtering.
    let projection = spec.projection.take();
    let n = parts.len();
    let scan = PartitionScanExec::try_new(spec, parts, n)?;
    let ctx = Arc::new(TaskContext::default());
    let mut out = vec![];
    let streams = (0..n)
        .map(|i| scan.execute(i, Arc::clone(&ctx)))
        .collect::<Result<Vec<_>>>()?;
    for batches in futures::future::join_all(
        streams
            .into_iter()
            .map(|s| s.try_collect::<Vec<RecordBatch>>()),
    )
    .await
    {
        for batch in batches? {
            let batch = match &predicate {
                Some(predicate) => {
                    let keep = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                    let keep = keep
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .ok_or_else(|| {
                            DataFusionError::Internal("a scan predicate gave no booleans".into())
                        })?;
                    filter_record_batch(&batch, keep)?
                }
                None => batch,
            };
            out.push(match &projection {
                Some(columns) => batch.project(columns)?,
                None => batch,
            });
        }
    }
    Ok(out)
}

/// What a filter asks of one column, if the index can serve it.
enum Lookup {
    /// `=` or `IN`: these values.
    Values(Vec<ScalarValue>),
    /// `<`, `<=`, `>`, `>=`, `BETWEEN`.
    Range,
}

fn lookup_of(expr: &Expr, column: &str) -> Option<Lookup> {
    let is_col = |e: &Expr| matches!(e, Expr::Column(c) if c.name == column);
    let literal = |e: &Expr| match e {
        Expr::Literal(v, _) if !v.is_null() => Some(v.clone()),
        _ => None,
    };
    match expr {
        // DataFusion turns a short IN list into ORs of equalities.
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => match (lookup_of(left, column)?, lookup_of(right, column)?) {
            (Lookup::Values(mut a), Lookup::Values(b)) => {
                a.extend(b);
                Some(Lookup::Values(a))
            }
            _ => Some(Lookup::Range),
        },
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (value, op) = if is_col(left) {
                (literal(right)?, *op)
            } else if is_col(right) {
                (literal(left)?, op.swap()?)
            } else {
                return None;
            };
            match op {
                Operator::Eq => Some(Lookup::Values(vec![value])),
                Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                    Some(Lookup::Range)
                }
                _ => None,
            }
        }
        Expr::InList(list) if !list.negated && is_col(&list.expr) => list
            .list
            .iter()
            .map(literal)
            .collect::<Option<Vec<_>>>()
            .map(Lookup::Values),
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_col(expr) && literal(low).is_some() && literal(high).is_some() => {
            Some(Lookup::Range)
        }
        _ => None,
    }
}

/// Picks the index a scan of `table` with `filters` uses, if any, and looks
/// a GLOBAL one up. Returns the index read and the data partitions to keep
/// (a subset of `kept`). A GLOBAL index serves `=` and `IN`; a LOCAL one
/// also ranges. GLOBAL is preferred: it reads one index partition per value.
pub async fn plan_index_read(
    catalog: &Arc<Catalog>,
    state: &dyn Session,
    snapshot: &Snapshot,
    table: &TableDef,
    schema: &SchemaRef,
    filters: &[Expr],
    kept: &[u32],
) -> Result<Option<(IndexRead, Vec<u32>)>> {
    let indexes: Vec<IndexDef> = catalog
        .indexes_of(&table.name)?
        .into_iter()
        .filter(IndexDef::is_ready)
        .collect();
    if indexes.is_empty() || filters.is_empty() {
        return Ok(None);
    }
    let total = table.scheme.partition_count();
    let mut local = None;
    for def in &indexes {
        let first = &def.columns[0];
        let served: Vec<(&Expr, Lookup)> = filters
            .iter()
            .filter_map(|f| lookup_of(f, first).map(|l| (f, l)))
            .collect();
        if served.is_empty() {
            continue;
        }
        let entry_schema = def.entry_schema(schema)?;
        let df_schema = DFSchema::try_from(Arc::clone(&entry_schema))?;
        if def.kind.is_global() {
            let Some((expr, Lookup::Values(values))) = served
                .into_iter()
                .find(|(_, l)| matches!(l, Lookup::Values(_)))
            else {
                continue;
            };
            let predicate = state.create_physical_expr(expr.clone(), &df_schema)?;
            let fresh = def.kind == IndexKind::GlobalAsync && wants_fresh(state)?;
            if fresh {
                wait_fresh(catalog, def).await?;
            }
            let ips = index_partitions(def, &entry_schema, values)?;
            let projection = vec![
                entry_schema.index_of(PART_COLUMN)?,
                entry_schema.index_of(FILE_COLUMN)?,
                entry_schema.index_of(ROW_COLUMN)?,
            ];
            let spec = ScanSpec {
                table: def.name.clone(),
                location: def.storage_key(table),
                table_schema: Arc::clone(&entry_schema),
                projection: Some(projection),
                predicate: Some(predicate),
                limit: None,
                total_partitions: def.partitions,
                kept_partitions: ips.len() as u32,
                estimate: None,
                colocated_on: None,
                index: None,
                // The index as decided now (an ASYNC index's entries are
                // applied by later transactions than the rows they name);
                // entries count when the query's snapshot sees their row.
                snapshot: Some(Arc::new(catalog.latest_snapshot()?)),
            };
            let parts = catalog.scan_parts(&def.map_key(), &ips)?;
            let entries = collect_scan(spec, parts).await?;
            let mut rows = locate(&entries)?;
            let kept_set: BTreeSet<u32> = kept.iter().copied().collect();
            rows.retain(|p, _| kept_set.contains(p));
            for files in rows.values_mut() {
                files.retain(|txn, _| snapshot.sees(*txn));
            }
            rows.retain(|_, files| !files.is_empty());
            let data: Vec<u32> = rows.keys().copied().collect();
            let consistency = match (def.kind, fresh) {
                (IndexKind::GlobalAsync, false) => ", eventually consistent",
                (IndexKind::GlobalAsync, true) => ", fresh",
                _ => "",
            };
            let label = format!(
                "{} {}{consistency}, index partitions={}/{}, data partitions={}/{}",
                def.name,
                def.kind,
                ips.len(),
                def.partitions,
                data.len(),
                total
            );
            return Ok(Some((
                IndexRead::Rows {
                    label,
                    rows: Arc::new(rows),
                },
                data,
            )));
        }
        if local.is_none() {
            let exprs: Vec<Expr> = served.into_iter().map(|(e, _)| e.clone()).collect();
            let Some(expr) = datafusion::logical_expr::utils::conjunction(exprs) else {
                continue;
            };
            let predicate = state.create_physical_expr(expr, &df_schema)?;
            let label = format!(
                "{} LOCAL, index partitions={}/{}, data partitions={}/{}",
                def.name,
                kept.len(),
                total,
                kept.len(),
                total
            );
            local = Some((
                IndexRead::Local {
                    label,
                    location: def.storage_key(table),
                    schema: entry_schema,
                    predicate,
                },
                kept.to_vec(),
            ));
        }
    }
    Ok(local)
}

/// The index partitions holding `values` (stable hash of the term).
fn index_partitions(
    def: &IndexDef,
    entry_schema: &SchemaRef,
    values: Vec<ScalarValue>,
) -> Result<Vec<u32>> {
    let field = entry_schema.field(0);
    let values = values
        .into_iter()
        .map(|v| v.cast_to(field.data_type()))
        .collect::<Result<Vec<_>>>()?;
    let array = ScalarValue::iter_to_array(values)?;
    let schema = Arc::new(Schema::new(vec![field.clone()]));
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![array])?;
    let assigned = Partitioner::try_new(&def.scheme(), &schema)?.assign(&batch)?;
    let set: BTreeSet<u32> = assigned.into_iter().collect();
    Ok(set.into_iter().collect())
}

fn wants_fresh(state: &dyn Session) -> Result<bool> {
    let mode = state
        .config_options()
        .extensions
        .get::<TesseraOptions>()
        .map(|o| o.index_read.to_ascii_lowercase())
        .unwrap_or_default();
    match mode.as_str() {
        "fresh" => Ok(true),
        "" | "eventual" => Ok(false),
        other => plan_err!(
            "tessera.index_read is '{other}'; set it to 'eventual' (the default) or 'fresh'"
        ),
    }
}

/// Every write up to this one is in the ASYNC index: those the applier
/// applied, and those up to the index's creation, which its backfill
/// covers (with no write since, the applier has nothing to move).
fn applied(def: &IndexDef, stats: &IndexStats) -> u64 {
    stats.applied_through.max(def.since_txn)
}

/// Waits until an ASYNC index has applied every write that began before now.
async fn wait_fresh(catalog: &Arc<Catalog>, def: &IndexDef) -> Result<()> {
    let target = catalog.last_txn();
    catalog.fresh_wanted.fetch_max(target, Ordering::SeqCst);
    let start = Instant::now();
    loop {
        let stats = catalog.index_stats(&def.name)?;
        if applied(def, &stats) >= target {
            return Ok(());
        }
        if start.elapsed() > FRESH_WAIT {
            return Err(DataFusionError::Execution(format!(
                "the ASYNC index '{}' has not caught up within {} s ({} entries behind, applied \
                 through transaction {} of {}, oldest in flight {:?}{}); retry, or SET \
                 tessera.index_read = 'eventual' to read it as it is",
                def.name,
                FRESH_WAIT.as_secs(),
                stats.outbox_rows.saturating_sub(stats.applied_rows),
                applied(def, &stats),
                target,
                catalog.oldest_unfinished()?,
                if catalog.apply_paused.load(Ordering::SeqCst) {
                    ", and tessera.index_apply is 'paused': SET it to 'running'"
                } else {
                    ""
                }
            )));
        }
        catalog.apply_wanted.notify_one();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
