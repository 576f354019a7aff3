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

mod applier;
mod lookup;

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::common::{DataFusionError, Result, plan_err};
use tessera_sql::{CreateIndex, IndexDef, IndexKind, IndexState, Placements, TableDef};
use tessera_worker::wire::EntriesRequest;
use tessera_worker::{WorkerClient, sort_by_columns};

use crate::catalog::Catalog;
use crate::write::{Ack, Piece, Role, global_index_pieces, write_pieces};

pub use applier::{Applier, spawn_applier};
pub(crate) use lookup::collect_scan;
pub use lookup::plan_index_read;

/// `CREATE INDEX`: registers the index, then backfills the rows written
/// before it (writes go on meanwhile and maintain it themselves).
pub async fn create_index(catalog: &Arc<Catalog>, ci: CreateIndex) -> Result<()> {
    let Some(table) = catalog.table_def(&ci.table)? else {
        return Err(crate::catalog::no_such_table(&ci.table));
    };
    let workers: Vec<String> = catalog.members()?.keys().cloned().collect();
    let created = catalog
        .update(|s| {
            if let Some(old) = s.indexes.get(&ci.name) {
                if ci.if_not_exists {
                    return Ok(None);
                }
                return tessera_worker::already_exists_err!(
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
            // The backfill goes over the table's partitions now (a table
            // split has more than its scheme made).
            let data_partitions = s.map.table(&table.name).map_or(0, |p| p.len() as u32);
            def.state = IndexState::Building {
                done: 0,
                total: data_partitions,
            };
            if def.kind == IndexKind::Local {
                def.partitions = data_partitions;
            }
            if def.kind.is_global() {
                if s.map.tables.contains_key(&def.map_key()) {
                    return plan_err!(
                        "a GLOBAL index '{}' on '{}' would share its partition map with table \
                         '{}'; give the index another name",
                        def.name,
                        def.table,
                        def.map_key()
                    );
                }
                // As many copies of its partitions as the table has of its.
                let replicas = s
                    .tables
                    .get(&def.table)
                    .map_or(1, |t| t.replication.replicas);
                s.map
                    .place_table(&def.map_key(), def.partitions, replicas, &workers, 0)?;
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
    // Partitions in key order: `done` counts those indexed (a table with
    // an index building does not split or merge, so the order holds).
    let ids = catalog.placements(&table.name)?.ids();
    for at in done..total {
        let Some(&partition) = ids.get(at as usize) else {
            return Err(DataFusionError::Internal(format!(
                "'{}' has {} partitions, fewer than the {total} its index '{name}' counted",
                table.name,
                ids.len()
            )));
        };
        let source = catalog
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
        let entries = WorkerClient::connect(&source.url)?
            .index_entries(&request)
            .await?;
        let count: u64 = entries.iter().map(|b| b.num_rows() as u64).sum();
        let pieces = if count == 0 {
            vec![]
        } else if def.kind.is_global() {
            global_index_pieces(&catalog, &table, &def, &entry_schema, &entries)?
        } else {
            let batch = concat_batches(&entry_schema, &entries)?;
            let target = catalog
                .write_targets(&table.name, &[partition])?
                .pop()
                .ok_or_else(|| DataFusionError::Internal("no partition target".into()))?;
            vec![Piece {
                location: def.storage_key(&table),
                partition,
                target,
                batch: sort_by_columns(batch, &def.columns)?,
                role: Role::Entries,
            }]
        };
        let next = if at + 1 == total {
            IndexState::Ready
        } else {
            IndexState::Building {
                done: at + 1,
                total,
            }
        };
        let index = name.clone();
        let record = move |s: &mut crate::catalog_state::CatalogState| {
            if let Some(d) = s.indexes.get_mut(&index) {
                d.state = next;
            }
            s.index_stats.entry(index.clone()).or_default().entries += count;
            Ok(())
        };
        if pieces.is_empty() {
            catalog.update(record).await?;
        } else {
            let guard = catalog.begin_txn().await?;
            write_pieces(&catalog, guard, pieces, Ack::Committed, move |s, _| {
                record(s)
            })
            .await?;
        }
    }
    Ok(())
}

/// `DROP INDEX`: forgets the index, then removes its files everywhere once
/// every query that began before (and may have planned a read through it)
/// has ended.
pub async fn drop_index(catalog: &Arc<Catalog>, name: &str, if_exists: bool) -> Result<()> {
    let Some(def) = catalog.state()?.indexes.get(name).cloned() else {
        if if_exists {
            return Ok(());
        }
        return tessera_worker::not_found_err!(
            "index '{name}' does not exist; SHOW INDEXES lists the indexes"
        );
    };
    let table = catalog.table_def(&def.table)?;
    catalog
        .update(|s| {
            s.indexes.remove(name);
            s.index_stats.remove(name);
            s.remove_stats(&def.map_key());
            s.map.drop_table(&def.map_key());
            Ok(())
        })
        .await?;
    let Some(table) = table else {
        return Ok(());
    };
    let generation = catalog.new_generation();
    let catalog = Arc::clone(catalog);
    tokio::spawn(async move {
        catalog.snapshots_before(generation).await;
        remove_index_files(&catalog, &[def], &table).await;
    });
    Ok(())
}

/// Removes the files of `table`'s indexes no longer in the catalog from
/// every worker (one that cannot be reached keeps them).
pub(crate) async fn remove_index_files(catalog: &Catalog, indexes: &[IndexDef], table: &TableDef) {
    let Ok(members) = catalog.members() else {
        return;
    };
    for url in members.values() {
        let Ok(client) = WorkerClient::connect(url) else {
            continue;
        };
        for index in indexes {
            for location in [index.storage_key(table), index.outbox_key(table)] {
                if let Err(e) = client.drop_table(&location).await {
                    tracing::warn!(index = %index.name, %url, error = %e, "files of a dropped index were left behind");
                }
            }
        }
    }
}

/// `SHOW INDEXES [ON t]`: one row per index.
pub fn show_indexes(catalog: &Catalog, table: Option<&str>) -> Result<RecordBatch> {
    let state = catalog.state()?;
    if let Some(t) = table
        && !state.tables.contains_key(t)
    {
        return Err(crate::catalog::no_such_table(t));
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
        // A LOCAL index has a part per data partition, however many the
        // table has split into.
        partitions.push(match def.kind {
            IndexKind::Local => state.map.table(&def.table).map_or(0, |p| p.len() as u32),
            _ => def.partitions,
        });
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
