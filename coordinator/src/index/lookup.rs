//! The read side of indexes: which index a scan uses, the lookup of a
//! GLOBAL one, and the wait of a `fresh` read for an ASYNC one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, DataFusionError, Result, ScalarValue, plan_err};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use tessera_sql::{
    FILE_COLUMN, IndexDef, IndexKind, PART_COLUMN, Partitioner, ROW_COLUMN, TableDef,
};
use tessera_worker::index::locate;
use tessera_worker::{IndexRead, PartitionScanExec, ScanPart, ScanSpec, Snapshot};

use crate::catalog::Catalog;
use crate::options::TesseraOptions;

use super::applier::{Applier, applied};

/// How long a `fresh` read waits for an ASYNC index to catch up.
const FRESH_WAIT: Duration = Duration::from_secs(30);

/// Runs a scan from the coordinator (each partition read by its owner)
/// and keeps the rows its predicate passes (the scan only prunes by it).
pub(crate) async fn collect_scan(
    mut spec: ScanSpec,
    parts: Vec<ScanPart>,
) -> Result<Vec<RecordBatch>> {
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
/// `catalog` and `applier` are the scanning engine's.
pub async fn plan_index_read(
    (catalog, applier): (&Arc<Catalog>, &Applier),
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
    // The query's own map (taken with its snapshot), as `kept` is.
    let total =
        crate::query_map::placements(state.config_options(), catalog, &table.name)?.len() as u32;
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
                wait_fresh(catalog, applier, def).await?;
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
                snapshot: Some(Arc::new(catalog.current_snapshot().await?)),
                query: None,
            };
            let key = def.map_key();
            let placements = crate::query_map::placements(state.config_options(), catalog, &key)?;
            let parts = catalog.scan_parts_at(&key, &placements, &ips)?;
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

/// Waits until an ASYNC index has applied every write that began before now.
async fn wait_fresh(catalog: &Arc<Catalog>, applier: &Applier, def: &IndexDef) -> Result<()> {
    // Every write begun before now (on a follower: as the leader sees it).
    let target = catalog.current_snapshot().await?.through;
    // The leader's applier (a follower runs none).
    let wake = async || {
        if !catalog.ask_leader_to_apply(target).await? {
            applier.want_fresh(target);
        }
        Ok::<_, DataFusionError>(())
    };
    wake().await?;
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
                if applier.paused() {
                    ", and tessera.index_apply is 'paused': SET it to 'running'"
                } else {
                    ""
                }
            )));
        }
        // A follower asks the leader, over the network: less often.
        let pause = if catalog.follower().is_some() { 25 } else { 5 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        wake().await?;
    }
}
