//! `ALTER TABLE t SPLIT PARTITION id [AT v]`: one partition becomes two
//! with new ids, each holding its half of the parent's slice of keys, on
//! the parent's copies. `ALTER TABLE t MERGE PARTITIONS a, b`: two
//! neighbours in key order become one with a new id, on the lower one's
//! copies.
//!
//! ```text
//!  read the parents at a snapshot S          ┐ writes to the parents go
//!  route their rows by the new layout        │ on meanwhile
//!  stage the children (transaction 1)        ┘
//!  writes to t wait (the table's gate)       ┐
//!  read what the parents got since S         │ one catch-up round: the
//!  stage it in the children (transaction 2)  │ writes of the copy's time
//!  decide 1 and 2 in one metastore write ────┘ that write also swaps the
//!                                              parents for the children
//!                                              in the partition map
//!  the parents' files go once no query that may read them runs
//! ```
//!
//! A query takes its snapshot and its partition map together, so it
//! reads either the parents (before) or the children (after), never both
//! and never neither. The children are written whole (a rewrite, not a
//! reference to the parents' files): a split or merge costs one read and
//! one write of the partitions, and writes wait only for the catch-up.
//! While S is held open no compaction merges a file S sees with one
//! written after it, so the catch-up reads exactly the files S does not
//! see. The children's index entries are written in the same
//! transactions: LOCAL index parts beside them, and GLOBAL SYNC entries
//! naming them in the index's partitions. A GLOBAL lookup keeps only
//! entries of the partitions in its query's map, so the parents' entries
//! stop counting with the same swap (they stay in the index's files).
//! Tables with a GLOBAL ASYNC index do not split or merge yet (its outbox
//! would have to follow). A split or merge runs to its end
//! once begun, even if its statement is cancelled, and one runs at a time
//! per table.

mod split_point;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::common::Result;
use datafusion::sql::sqlparser::ast;
use tessera_sql::{
    IndexDef, IndexKind, KeyRange, PartitionLayout, PartitionPlacement, PartitionScheme,
    Partitioner, Placements, TableDef,
};
use tessera_worker::{
    DataFile, ErrorKind, ScanPart, ScanSpec, Snapshot, WorkerUnavailable, call_timeout,
    is_worker_failure, sort_by_columns,
};

use crate::catalog::{Catalog, WriteTarget};
use crate::catalog_state::CatalogState;
use crate::write::{
    Piece, Role, decide_and_commit_together, index_pieces, prepare_pieces, split_by_partition,
};
use split_point::split_point;

/// What happens to a table's partitions.
#[derive(Debug, Clone)]
pub enum Reshape {
    /// One partition becomes two: at `at` (a RANGE table's key), else at
    /// the median key (RANGE) or the middle of the hash slice (HASH).
    Split {
        partition: u32,
        at: Option<Box<ast::Expr>>,
    },
    /// Two neighbours in key order become one.
    Merge { a: u32, b: u32 },
}

impl Reshape {
    fn verb(&self) -> &'static str {
        match self {
            Reshape::Split { .. } => "split",
            Reshape::Merge { .. } => "merge",
        }
    }
}

/// Runs a split or merge in its own task: a statement cancelled (or a
/// client gone) mid-way must not let writes in before its decision has
/// landed.
///
/// With `table_id`, only the table of that id (not one made again under
/// its name since) changes.
pub async fn reshape_in_task(
    catalog: &Arc<Catalog>,
    table: &str,
    table_id: Option<u64>,
    how: Reshape,
) -> Result<Done> {
    let (catalog, table) = (Arc::clone(catalog), table.to_string());
    tokio::spawn(async move { reshape(catalog, &table, table_id, &how).await })
        .await
        .map_err(|e| ErrorKind::Internal.error(format!("the split or merge stopped: {e}")))?
}

/// A partition a split or merge made, as the statement reports it.
pub struct Child {
    pub id: u32,
    pub range: String,
    pub rows: u64,
    pub bytes: u64,
    /// Of `rows`, those written to the parent while it was copied (the
    /// catch-up's).
    pub caught_up: u64,
}

pub struct Done {
    pub parents: Vec<u32>,
    pub children: Vec<Child>,
    /// How long writes to the table waited (the catch-up and the decision).
    pub writes_paused: std::time::Duration,
}

async fn reshape(
    catalog: Arc<Catalog>,
    table: &str,
    table_id: Option<u64>,
    how: &Reshape,
) -> Result<Done> {
    let Some(def) = catalog
        .table_def(table)?
        .filter(|d| table_id.is_none_or(|id| id == d.id))
    else {
        return Err(crate::catalog::no_such_table(table));
    };
    if let Reshape::Merge { a, b } = how
        && a == b
    {
        return Err(ErrorKind::InvalidArgument.error(format!(
            "MERGE PARTITIONS takes two partitions of '{table}', not {a} twice"
        )));
    }
    let name = def.name.clone();
    let verb = how.verb();
    if def.scheme == PartitionScheme::Single {
        return Err(ErrorKind::InvalidArgument.error(format!(
            "'{name}' has no PARTITION BY: its one partition holds every row and has no key to \
             {verb} on; create the table with PARTITION BY HASH or RANGE"
        )));
    }
    refuse_indexes(&catalog.state()?, &name)?;
    let _alone = Running::begin(&catalog, def.id, &name)?;
    let placements = catalog.placements(&name)?;
    let mut layout = placements
        .layout(&def.scheme)?
        .unwrap_or_else(|| PartitionLayout::initial(&def.scheme));
    let asked = match how {
        Reshape::Split { partition, .. } => vec![*partition],
        Reshape::Merge { a, b } => vec![*a, *b],
    };
    let mut parents = vec![];
    for id in asked {
        let Some(parent) = placements.by_id(id).cloned() else {
            return Err(ErrorKind::InvalidArgument.error(format!(
                "'{name}' has no partition {id}; SHOW PARTITIONS {name} lists them"
            )));
        };
        if !parent.out_of_sync.is_empty() {
            return Err(ErrorKind::FailedPrecondition.error(format!(
                "partition {id} of '{name}' has copies catching up ({}); retry once SHOW \
                 PARTITIONS {name} shows them in sync",
                parent.out_of_sync.join(", ")
            )));
        }
        parents.push(parent);
    }
    // In key order (as the map lists them).
    parents.sort_by_key(|p| placements.iter().position(|q| q.id == p.id));
    let parent_ids: Vec<u32> = parents.iter().map(|p| p.id).collect();

    // 1. Copy: the parents' rows at a snapshot, into the children, staged
    // (not decided) while writes to the parents go on.
    let (copy_guard, _) = catalog.begin_merge(&name).await?;
    // Held to the end: no compaction merges a file this snapshot sees with
    // one written after it, so the catch-up below finds the latter apart.
    let (snapshot, _pin, _) = catalog.snapshot()?;
    let mut rows = vec![];
    for id in &parent_ids {
        rows.extend(read_partition(&catalog, &def, *id, &Arc::new(snapshot.clone())).await?);
    }
    let children: Vec<u32> = match how {
        Reshape::Split { partition, at } => {
            let point = split_point(&def, &layout, *partition, at.as_deref(), &rows)?;
            let (lower, upper) = layout.split(*partition, point)?;
            vec![lower, upper]
        }
        Reshape::Merge { .. } => {
            let merged = layout.merge(parent_ids[0], parent_ids[1]).map_err(|_| {
                ErrorKind::InvalidArgument.error(format!(
                    "partitions {} and {} of '{name}' are not neighbours in key order; only \
                     neighbours merge (SHOW PARTITIONS {name} lists them in key order)",
                    parent_ids[0], parent_ids[1]
                ))
            })?;
            vec![merged]
        }
    };
    // The children go to the first parent's copies.
    let Some(parent_target) = catalog.write_targets(&name, &parent_ids[..1])?.pop() else {
        return Err(ErrorKind::Internal.error("no write target for the parent partition"));
    };
    // The children are placed on the first parent's copies as it began:
    // their rows go to those of them still in sync (one that fell out of
    // sync meanwhile is left out, and is out of sync for the children too),
    // never to another worker.
    let foreign = parent_target.replicas.iter().any(|r| {
        let worker = match r {
            Ok(part) => &part.worker_id,
            Err((worker, _)) => worker,
        };
        !parents[0].replicas.contains(worker)
    });
    if foreign {
        return Err(copies_changed(&name, &parent_ids));
    }
    let schema = def.schema()?;
    let indexes = catalog.indexes_of(&name)?;
    let into = Children {
        def: &def,
        parents: &parent_ids,
        children: &children,
        partitioner: Partitioner::try_new(&def.scheme, &schema)?.with_layout(Some(layout.clone())),
        target: parent_target,
        indexes: &indexes,
    };
    let gate = catalog.gate(&name)?;
    let (copy_pieces, copy_rows) = into.pieces(&catalog, rows, copy_guard.txn)?;
    let copied = prepare_pieces(copy_guard.txn, copy_pieces).await?;
    crate::failpoint::hit("abort-after-split-copy");

    // 2. Catch up: writes to the table wait while the rows written since
    // the snapshot are copied too, and both are decided with the swap of
    // the parents for the children in the map. A write routed before is
    // routed again (see `write::still_routed`). A long ingest holding
    // writes is not waited for without end.
    let wait = call_timeout();
    let asked_to_wait = std::time::Instant::now();
    let Ok(writes_wait) = tokio::time::timeout(wait, gate.write_owned()).await else {
        copied.abort().await;
        return Err(ErrorKind::Unavailable.error(format!(
            "writes to '{name}' did not pause within {} s (a long ingest?); nothing was \
             changed, retry the {verb}",
            wait.as_secs()
        )));
    };
    let caught_up = async {
        // Parents moved meanwhile fail the decision: fail before the
        // catch-up instead.
        let now = catalog.placements(&name)?;
        if !now.windows(parents.len()).any(|w| same_copies(w, &parents)) {
            return Err(copies_changed(&name, &parent_ids));
        }
        let (guard, _) = catalog.begin_merge(&name).await?;
        let (now, _now_pin, _) = catalog.snapshot()?;
        let since = Arc::new(now.since(snapshot));
        let mut rows = vec![];
        for id in &parent_ids {
            rows.extend(read_partition(&catalog, &def, *id, &since).await?);
        }
        if rows.iter().all(|b| b.num_rows() == 0) {
            return Ok(None);
        }
        let (pieces, rows_of) = into.pieces(&catalog, rows, guard.txn)?;
        let prepared = prepare_pieces(guard.txn, pieces).await?;
        Ok::<_, datafusion::common::DataFusionError>(Some((guard, prepared, rows_of)))
    }
    .await;
    let caught_up = match caught_up {
        Ok(c) => c,
        Err(e) => {
            copied.abort().await;
            return Err(e);
        }
    };
    let ranges: Vec<(u32, Option<KeyRange>)> = children
        .iter()
        .map(|c| (*c, layout.range_of(*c).cloned()))
        .collect();
    let mut prepared = vec![(copy_guard, copied)];
    let mut rows_of = vec![copy_rows];
    if let Some((guard, p, of)) = caught_up {
        prepared.push((guard, p));
        rows_of.push(of);
    }
    let (table_id, swapped) = (def.id, parents.clone());
    let index_ids: Vec<u64> = indexes.iter().map(|i| i.id).collect();
    let place = |s: &mut CatalogState| {
        // An index made or dropped meanwhile has entries for other rows.
        let now: Vec<u64> = s
            .indexes
            .values()
            .filter(|i| i.table == name)
            .map(|i| i.id)
            .collect();
        if now != index_ids {
            return Err(ErrorKind::FailedPrecondition.error(format!(
                "an index of '{name}' was created or dropped while its partitions split or \
                 merged; nothing was changed, retry"
            )));
        }
        place_children(s, table_id, &swapped, &ranges)
    };
    let mut counts = BTreeMap::new();
    let decide = |s: &mut CatalogState, files: &[&[DataFile]]| {
        // The parents' counts (pending ones too) leave with them.
        s.fold_stats_deltas_of(&name);
        if let Some(stats) = s.stats.get_mut(&name) {
            for p in &parent_ids {
                stats.remove(p);
            }
        }
        counts.clear();
        for (round, (of, files)) in rows_of.iter().zip(files).enumerate() {
            let made = of.iter().copied().zip(files.iter());
            crate::write::add_stats(s, &name, made.clone());
            for (p, f) in made {
                let c: &mut (u64, u64, u64) = counts.entry(p).or_default();
                c.0 += f.rows;
                c.1 += f.bytes;
                if round > 0 {
                    c.2 += f.rows;
                }
            }
        }
        Ok(())
    };
    decide_and_commit_together(&catalog, prepared, place, decide).await?;
    drop(writes_wait);
    let writes_paused = asked_to_wait.elapsed();
    // The parents' files go once no query that may read them runs.
    let copies = parents
        .iter()
        .flat_map(|p| p.replicas.iter().map(|w| (name.clone(), p.id, w.clone())))
        .collect();
    crate::copies::drop_files_later(&catalog, def.id, copies);

    let children = ranges
        .iter()
        .map(|(id, range)| {
            let (rows, bytes, caught_up) = counts.get(id).copied().unwrap_or_default();
            Child {
                id: *id,
                range: def.scheme.describe_partition(*id, range.as_ref(), &schema),
                rows,
                bytes,
                caught_up,
            }
        })
        .collect();
    Ok(Done {
        parents: parent_ids,
        children,
        writes_paused,
    })
}

/// Where a split or merge writes its rows: the children of `parents`.
struct Children<'a> {
    def: &'a TableDef,
    parents: &'a [u32],
    children: &'a [u32],
    /// Routes by the table's layout after the change.
    partitioner: Partitioner,
    /// The copies the children go to (the first parent's).
    target: WriteTarget,
    /// The table's indexes, as the split began: each gets its entries.
    indexes: &'a [IndexDef],
}

impl Children<'_> {
    /// The pieces of transaction `txn` that write `rows` of the parents
    /// into the children, with their LOCAL index parts; and the child each
    /// of the leading pieces (the rows, before the index parts) is for.
    fn pieces(
        &self,
        catalog: &Arc<Catalog>,
        rows: Vec<RecordBatch>,
        txn: u64,
    ) -> Result<(Vec<Piece>, Vec<u32>)> {
        let (def, name) = (self.def, &self.def.name);
        let mut routed = BTreeMap::new();
        for batch in rows {
            split_by_partition(&self.partitioner, batch, &mut routed)?;
        }
        if let Some(stray) = routed.keys().find(|p| !self.children.contains(p)) {
            return Err(ErrorKind::Internal.error(format!(
                "a row of partition {:?} of '{name}' routes to partition {stray}, outside it: \
                 the partition holds rows of another's keys; nothing was changed",
                self.parents
            )));
        }
        let schema = def.schema()?;
        let mut pieces = vec![];
        for (child, batches) in routed {
            let batch = concat_batches(&schema, &batches)?;
            let mut target = self.target.clone();
            target.partition = child;
            pieces.push(Piece {
                location: def.storage_key(),
                partition: child,
                target,
                batch: sort_by_columns(batch, def.scheme.cluster_by())?,
                role: Role::Rows,
            });
        }
        let written: Vec<u32> = pieces.iter().map(|p| p.partition).collect();
        for index in self.indexes {
            let (more, _) = index_pieces(catalog, def, index, txn, &pieces)?;
            pieces.extend(more);
        }
        Ok((pieces, written))
    }
}

/// At most one split or merge of a table at a time: a second would take
/// the same new ids for its children.
struct Running {
    key: (usize, u64),
}

static RUNNING: Mutex<std::collections::BTreeSet<(usize, u64)>> =
    Mutex::new(std::collections::BTreeSet::new());

impl Running {
    fn begin(catalog: &Arc<Catalog>, table_id: u64, name: &str) -> Result<Self> {
        let key = (Arc::as_ptr(catalog) as usize, table_id);
        let mut running = RUNNING
            .lock()
            .map_err(|_| ErrorKind::Internal.error("split registry poisoned"))?;
        if !running.insert(key) {
            return Err(ErrorKind::Unavailable.error(format!(
                "another split or merge of '{name}' is running; retry once it is done (SHOW \
                 PARTITIONS {name} then lists its new partitions)"
            )));
        }
        Ok(Self { key })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut running) = RUNNING.lock() {
            running.remove(&self.key);
        }
    }
}

/// Every row of `def`'s `partition` at `snapshot` (taken with the
/// table's writes held off: every acknowledged statement's rows).
async fn read_partition(
    catalog: &Catalog,
    def: &TableDef,
    partition: u32,
    snapshot: &Arc<Snapshot>,
) -> Result<Vec<RecordBatch>> {
    // Every in-sync copy holds every acknowledged statement: one that
    // cannot be reached (stopped a moment ago) hands over to the next.
    let mut failed = None;
    for copy in catalog.in_sync_copies(&def.name, partition)? {
        match read_copy(def, copy, Arc::clone(snapshot)).await {
            Ok(rows) => return Ok(rows),
            Err(e) if is_worker_failure(&e) => failed = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(failed.unwrap_or_else(|| {
        WorkerUnavailable::error(format!(
            "no copy of partition {partition} of '{}' can be read; retry once its workers are \
             back",
            def.name
        ))
    }))
}

/// The rows of one copy of a partition at `snapshot`.
async fn read_copy(
    def: &TableDef,
    copy: ScanPart,
    snapshot: Arc<Snapshot>,
) -> Result<Vec<RecordBatch>> {
    let spec = ScanSpec {
        table: def.name.clone(),
        location: def.storage_key(),
        table_schema: def.schema()?,
        projection: None,
        predicate: None,
        limit: None,
        total_partitions: 1,
        kept_partitions: 1,
        estimate: None,
        colocated_on: None,
        index: None,
        snapshot: Some(snapshot),
        query: None,
    };
    crate::index::collect_scan(spec, vec![copy]).await
}

/// Refuses a split of a table whose indexes cannot follow it yet.
fn refuse_indexes(s: &CatalogState, table: &str) -> Result<()> {
    for index in s.indexes.values().filter(|i| i.table == table) {
        if index.kind == IndexKind::GlobalAsync {
            return Err(ErrorKind::FailedPrecondition.error(format!(
                "'{table}' has the GLOBAL ASYNC index '{}', whose outbox beside each partition \
                 would have to follow it; partitions of tables with GLOBAL ASYNC indexes do not \
                 split or merge yet (DROP INDEX {0}, split or merge, then CREATE INDEX again, \
                 or use GLOBAL SYNC)",
                index.name
            )));
        }
        if !index.is_ready() {
            return Err(ErrorKind::FailedPrecondition.error(format!(
                "the index '{}' of '{table}' is still being built; split or merge once SHOW \
                 INDEXES shows it ready",
                index.name
            )));
        }
    }
    Ok(())
}

/// Swaps the parents (neighbours, in key order) for the children in the
/// partition map, in key order, as the change is decided; refuses if the
/// table, its indexes or the parents' copies changed since it began.
fn place_children(
    s: &mut CatalogState,
    table_id: u64,
    parents: &[PartitionPlacement],
    children: &[(u32, Option<KeyRange>)],
) -> Result<()> {
    let owner = s
        .tables
        .values()
        .find(|t| t.id == table_id)
        .map(|t| t.name.clone());
    let Some(table) = owner else {
        return Err(ErrorKind::FailedPrecondition.error(
            "the table was dropped or replaced while its partitions split or merged; nothing \
             was changed",
        ));
    };
    refuse_indexes(s, &table)?;
    let placements = s.map.tables.get_mut(&table);
    let at = placements.as_ref().and_then(|p| {
        p.windows(parents.len())
            .position(|w| same_copies(w, parents))
    });
    let (Some(placements), Some(at), Some(first)) = (placements, at, parents.first()) else {
        let ids: Vec<u32> = parents.iter().map(|p| p.id).collect();
        return Err(copies_changed(&table, &ids));
    };
    let child = |(id, range): &(u32, Option<KeyRange>)| PartitionPlacement {
        id: *id,
        replicas: first.replicas.clone(),
        out_of_sync: vec![],
        range: range.clone(),
    };
    placements.splice(at..at + parents.len(), children.iter().map(child));
    s.map.epoch += 1;
    s.map.layout_epoch += 1;
    // Commits of the parents still pending go: their rows are in the
    // children.
    for parent in parents {
        crate::copies::forget_pending(s, &table, parent.id, &parent.replicas);
    }
    Ok(())
}

/// Whether `now` are `then` on the same copies. A copy that fell out of
/// sync meanwhile (a write missed it) does not matter: the children's
/// copies are those that took their rows (see `Prepared::settle`), read
/// from copies in sync.
fn same_copies(now: &[PartitionPlacement], then: &[PartitionPlacement]) -> bool {
    now.len() == then.len()
        && now
            .iter()
            .zip(then)
            .all(|(n, t)| n.id == t.id && n.replicas == t.replicas && n.range == t.range)
}

fn copies_changed(table: &str, parents: &[u32]) -> datafusion::common::DataFusionError {
    let ids: Vec<String> = parents.iter().map(u32::to_string).collect();
    ErrorKind::FailedPrecondition.error(format!(
        "the copies of partition {} of '{table}' changed while it split or merged (a \
         rebalance, a worker going down, or a write that missed a copy); nothing was changed, \
         retry",
        ids.join(", ")
    ))
}
