//! The index entries a write adds: beside each data partition (LOCAL, and
//! a GLOBAL ASYNC index's outbox) or spread over the index's own
//! partitions by term (GLOBAL SYNC).

use std::collections::BTreeMap;

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use tessera_sql::{IndexDef, IndexKind, Partitioner, TableDef};
use tessera_worker::index::entries_of;
use tessera_worker::sort_by_columns;

use super::{Piece, Role, compact_views};
use crate::catalog::Catalog;

/// The index pieces a write of `rows` (the data pieces of transaction
/// `txn`) needs for `index`, and how many entries they hold.
pub fn index_pieces(
    catalog: &Catalog,
    def: &TableDef,
    index: &IndexDef,
    txn: u64,
    rows: &[Piece],
) -> Result<(Vec<Piece>, u64)> {
    let schema = def.schema()?;
    let entry_schema = index.entry_schema(&schema)?;
    let global = index.kind.is_global();
    let mut out = vec![];
    let mut entries_by_part = vec![];
    for piece in rows.iter().filter(|p| p.role == Role::Rows) {
        let part = global.then_some(piece.partition);
        let entries = entries_of(&piece.batch, &index.columns, part, txn, 0, &entry_schema)?;
        if entries.num_rows() > 0 {
            entries_by_part.push((piece, entries));
        }
    }
    let count: u64 = entries_by_part
        .iter()
        .map(|(_, e)| e.num_rows() as u64)
        .sum();
    match index.kind {
        IndexKind::Local => {
            for (piece, entries) in entries_by_part {
                out.push(Piece {
                    location: index.storage_key(def),
                    partition: piece.partition,
                    target: piece.target.clone(),
                    batch: sort_by_columns(entries, &index.columns)?,
                    role: Role::Entries,
                });
            }
        }
        IndexKind::GlobalAsync => {
            for (piece, entries) in entries_by_part {
                out.push(Piece {
                    location: index.outbox_key(def),
                    partition: piece.partition,
                    target: piece.target.clone(),
                    batch: entries,
                    role: Role::Entries,
                });
            }
        }
        IndexKind::GlobalSync => {
            let all: Vec<RecordBatch> = entries_by_part.into_iter().map(|(_, e)| e).collect();
            out = global_index_pieces(catalog, def, index, &entry_schema, &all)?;
        }
    }
    Ok((out, count))
}

/// Entries of a global index spread over its partitions by the stable hash
/// of the term, each partition's sorted by term.
pub fn global_index_pieces(
    catalog: &Catalog,
    def: &TableDef,
    index: &IndexDef,
    entry_schema: &SchemaRef,
    entries: &[RecordBatch],
) -> Result<Vec<Piece>> {
    if entries.iter().all(|e| e.num_rows() == 0) {
        return Ok(vec![]);
    }
    let all = concat_batches(entry_schema, entries)?;
    let partitioner = Partitioner::try_new(&index.scheme(), entry_schema)?;
    let assigned = partitioner.assign(&all)?;
    let mut rows_of: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (row, p) in assigned.iter().enumerate() {
        rows_of.entry(*p).or_default().push(row as u32);
    }
    let parts: Vec<u32> = rows_of.keys().copied().collect();
    let targets = catalog.write_targets(&index.map_key(), &parts)?;
    let mut out = vec![];
    for (target, (partition, rows)) in targets.into_iter().zip(rows_of) {
        let batch = compact_views(take_record_batch(&all, &UInt32Array::from(rows))?)?;
        out.push(Piece {
            location: index.storage_key(def),
            partition,
            target,
            batch: sort_by_columns(batch, &index.columns)?,
            role: Role::Entries,
        });
    }
    Ok(out)
}
