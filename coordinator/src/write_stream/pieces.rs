//! The pieces of a streamed write, made from each partition's rows as
//! they are sent: sorted for CLUSTER BY, with the entries of the table's
//! secondary indexes.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};
use tessera_sql::{IndexDef, IndexKind, TableDef};
use tessera_worker::index::entries_of;
use tessera_worker::{ErrorKind, sort_by_columns};

use super::{Uploads, send};
use crate::catalog::Catalog;
use crate::write::global_index_pieces;

/// Makes the pieces of the write from each partition's rows as they are
/// sent: sorted for CLUSTER BY, with the entries of each index.
pub(super) struct Pieces<'a> {
    catalog: &'a Arc<Catalog>,
    pub(super) def: &'a TableDef,
    txn: u64,
    /// Each index the write maintains, with its entry schema and the
    /// entries made so far.
    indexes: Vec<(IndexDef, SchemaRef, u64)>,
    /// The locations of the GLOBAL SYNC indexes' partitions.
    pub(super) synced: Vec<String>,
    /// Rows sent so far per partition: where its next piece starts.
    sent: BTreeMap<u32, u32>,
}

impl<'a> Pieces<'a> {
    pub(super) fn new(
        catalog: &'a Arc<Catalog>,
        def: &'a TableDef,
        indexes: Vec<IndexDef>,
        txn: u64,
    ) -> Result<Self> {
        let schema = def.schema()?;
        let synced = indexes
            .iter()
            .filter(|i| i.kind == IndexKind::GlobalSync)
            .map(|i| i.storage_key(def))
            .collect();
        let indexes = indexes
            .into_iter()
            .map(|i| {
                let entry_schema = i.entry_schema(&schema)?;
                Ok((i, entry_schema, 0))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            catalog,
            def,
            txn,
            indexes,
            synced,
            sent: BTreeMap::new(),
        })
    }

    /// The indexes the write maintains: (name, id).
    pub(super) fn ids(&self) -> Vec<(String, u64)> {
        self.indexes
            .iter()
            .map(|(i, ..)| (i.name.clone(), i.id))
            .collect()
    }

    /// Entries made per index: (name, kind, count).
    pub(super) fn counts(&self) -> Vec<(String, IndexKind, u64)> {
        self.indexes
            .iter()
            .map(|(i, _, n)| (i.name.clone(), i.kind, *n))
            .collect()
    }

    /// Sends one piece of `partition`'s rows, and its index entries.
    pub(super) async fn send(
        &mut self,
        partition: u32,
        rows: Vec<RecordBatch>,
        uploads: &mut Uploads,
    ) -> Result<()> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let batch = concat_batches(&first.schema(), &rows)?;
        let batch = sort_by_columns(batch, self.def.scheme.cluster_by())?;
        let first_row = self.sent.get(&partition).copied().unwrap_or(0);
        let next = u32::try_from(batch.num_rows())
            .ok()
            .and_then(|n| first_row.checked_add(n))
            .ok_or_else(|| {
                ErrorKind::InvalidArgument.error(format!(
                    "one ingest can write at most {} rows to a partition of '{}'; split the \
                     upload",
                    u32::MAX,
                    self.def.name
                ))
            })?;
        self.sent.insert(partition, next);
        let (catalog, def) = (self.catalog, self.def);
        let slot = (def.storage_key(), partition);
        let target = match uploads.owners.get(&slot) {
            Some(target) => target.clone(),
            None => catalog
                .write_targets(&def.name, &[partition])?
                .pop()
                .ok_or_else(|| {
                    DataFusionError::Internal(format!(
                        "no owner for partition {partition} of '{}'",
                        def.name
                    ))
                })?,
        };
        send(uploads, slot, &target, &batch).await?;
        for (index, entry_schema, count) in &mut self.indexes {
            let part = index.kind.is_global().then_some(partition);
            let entries = entries_of(
                &batch,
                &index.columns,
                part,
                self.txn,
                first_row,
                entry_schema,
            )?;
            if entries.num_rows() == 0 {
                continue;
            }
            *count += entries.num_rows() as u64;
            match index.kind {
                IndexKind::Local => {
                    let slot = (index.storage_key(def), partition);
                    let entries = sort_by_columns(entries, &index.columns)?;
                    send(uploads, slot, &target, &entries).await?;
                }
                IndexKind::GlobalAsync => {
                    let slot = (index.outbox_key(def), partition);
                    send(uploads, slot, &target, &entries).await?;
                }
                IndexKind::GlobalSync => {
                    for piece in global_index_pieces(catalog, def, index, entry_schema, &[entries])?
                    {
                        let slot = (piece.location, piece.partition);
                        // A slot keeps the copies it was first sent to.
                        let target = uploads.owners.get(&slot).cloned().unwrap_or(piece.target);
                        send(uploads, slot, &target, &piece.batch).await?;
                    }
                }
            }
        }
        Ok(())
    }
}
