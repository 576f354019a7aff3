//! Compaction: merging the small Parquet files that single-row INSERTs
//! leave behind, so scans and index lookups open a few files per
//! partition instead of one per write.
//!
//! ```text
//! COMPACT TABLE t (files < 128 MB), or the background compactor
//! (partitions with >= 16 files < 8 MB, tiered)
//!   per partition of the table, of its LOCAL index parts and of its
//!   GLOBAL index partitions:
//!     txn ─► the rule chooses files on one copy's manifest
//!         ─► every in-sync copy merges exactly those files into
//!            staged/<txn>.parquet and notes which files it replaces
//!         ─► decide (logged like any write) ─► commit swaps the files
//! ```
//!
//! Rows keep their order in the merged file, so index entries naming the
//! file a row was first written to stay valid: the partition's manifest
//! forwards each merged-away file to (new file, first row). No index is
//! rewritten, and an ASYNC outbox may still name merged-away files.
//! Outboxes are not compacted: they empty as the applier goes.
//!
//! A compaction takes a transaction id like a write. An index being
//! backfilled reads the files written up to its start by name, so a table
//! is not compacted until its indexes are built.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::Result;
use tessera_sql::{IndexKind, IndexState, Placements, TableDef};
use tessera_worker::wire::CompactRequest;
use tessera_worker::{Compaction, MergeRule, StagedWrite, WorkerClient};

use crate::catalog::Catalog;
use crate::compaction_log::{BACKGROUND, Compacted, CompactionLog};
use crate::write::{Ack, abort, decide_and_commit, name_worker};

/// The background compactor merges a partition once it has this many
/// small files.
const AUTO_MIN_FILES: usize = 16;

/// `COMPACT TABLE`: every file under 128 MiB of a partition that has two.
pub const EXPLICIT: MergeRule = MergeRule {
    min_files: 2,
    max_file_bytes: 128 << 20,
    tiered: false,
    below_txn: u64::MAX,
};

/// The background compactor: files under 8 MiB (the leftovers of small
/// writes, not the files of a bulk load), tiered, once a partition has
/// [`AUTO_MIN_FILES`] of them.
pub const AUTO: MergeRule = MergeRule {
    min_files: AUTO_MIN_FILES,
    max_file_bytes: 8 << 20,
    tiered: true,
    below_txn: u64::MAX,
};

/// How often the background compactor looks, when files were added.
const AUTO_EVERY: Duration = Duration::from_secs(2);

/// The directories of a table on workers that compaction merges.
#[derive(Clone)]
struct Part {
    name: String,
    kind: String,
    /// Its directory on workers.
    location: String,
    /// Its name in the partition map.
    map_key: String,
    /// Data partitions: stats to update, and index entries that may name
    /// their files. Nothing names an index file.
    data: bool,
    /// An index's id: its compaction commits only if it still exists.
    index: Option<u64>,
}

/// Compaction, above the catalog: its switch, the record of its runs, and
/// the background compactor (the engine owns it).
#[derive(Debug)]
pub struct Compactor {
    catalog: Arc<Catalog>,
    /// One compaction at a time: two merging the same files would each
    /// replace files the other already replaced.
    running: tokio::sync::Mutex<()>,
    /// `SET tessera.compaction = 'paused'`.
    paused: AtomicBool,
    /// `tessera.compactions`.
    pub log: CompactionLog,
    /// Merges this compactor decided: its own transactions, which leave
    /// the decision log too but give it nothing new to merge.
    merges: AtomicU64,
}

impl Compactor {
    pub fn new(catalog: Arc<Catalog>) -> Arc<Self> {
        Arc::new(Self {
            catalog,
            running: tokio::sync::Mutex::new(()),
            paused: AtomicBool::new(false),
            log: CompactionLog::default(),
            merges: AtomicU64::new(0),
        })
    }

    /// Whether `SET tessera.compaction = 'paused'` holds (the background
    /// compactor merges nothing; `COMPACT TABLE` still does).
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// Merges the files `rule` chooses in every partition of `table` (rows,
    /// LOCAL index parts and GLOBAL index partitions).
    pub async fn compact_table(
        &self,
        table: &str,
        rule: MergeRule,
        trigger: &'static str,
    ) -> Result<Vec<Compacted>> {
        let catalog = &self.catalog;
        let Some(def) = catalog.table_def(table)? else {
            return Err(crate::catalog::no_such_table(table));
        };
        let _one_at_a_time = self.running.lock().await;
        let id = self.log.begin(table, trigger);
        let result = compact_parts(catalog, &self.log, &def, rule, id).await;
        if let Ok(done) = &result {
            let merges: u64 = done.iter().map(|d| u64::from(d.partitions_merged)).sum();
            self.merges.fetch_add(merges, Ordering::SeqCst);
        }
        self.log.finish(id, &result);
        result
    }
}

async fn compact_parts(
    catalog: &Arc<Catalog>,
    log: &CompactionLog,
    def: &TableDef,
    rule: MergeRule,
    id: u64,
) -> Result<Vec<Compacted>> {
    let state = catalog.state()?;
    let mut parts = vec![Part {
        name: def.name.clone(),
        kind: "table".into(),
        location: def.storage_key(),
        map_key: def.name.clone(),
        data: true,
        index: None,
    }];
    for index in state.indexes.values().filter(|i| i.table == def.name) {
        parts.push(Part {
            name: index.name.clone(),
            kind: format!("{} index", index.kind),
            location: index.storage_key(def),
            map_key: if index.kind == IndexKind::Local {
                def.name.clone()
            } else {
                index.map_key()
            },
            data: false,
            index: Some(index.id),
        });
    }
    let mut ids = vec![];
    for part in &parts {
        ids.push(catalog.placements(&part.map_key)?.ids());
    }
    log.update(id, |r| {
        r.partitions_total = ids.iter().map(|i| i.len() as u32).sum()
    });
    let mut out = vec![];
    for (part, ids) in parts.into_iter().zip(ids) {
        let mut done = Compacted {
            name: part.name.clone(),
            kind: part.kind.clone(),
            partitions: ids.len() as u32,
            partitions_merged: 0,
            files_merged: 0,
            rows: 0,
            bytes_before: 0,
            bytes_after: 0,
        };
        for partition in ids {
            let merged = match merge_partition(catalog, def, &part, partition, rule).await {
                Ok(merged) => merged,
                // A copy away: this partition waits, the others go on.
                Err(e) if tessera_worker::is_worker_failure(&e) => {
                    tracing::info!(table = %part.map_key, partition, error = %e, "partition not compacted");
                    None
                }
                // Split meanwhile: its halves are new files already.
                Err(_)
                    if !catalog
                        .placements(&part.map_key)
                        .is_ok_and(|p| p.by_id(partition).is_some()) =>
                {
                    None
                }
                Err(e) => return Err(e),
            };
            log.update(id, |r| {
                r.partitions_done += 1;
                if let Some(m) = &merged {
                    r.partitions_merged += 1;
                    r.files_merged += m.replaces.len() as u64;
                }
            });
            if let Some(m) = merged {
                done.partitions_merged += 1;
                done.files_merged += m.replaces.len() as u64;
                done.rows += m.file.rows;
                done.bytes_before += m.replaces.iter().map(|f| f.bytes).sum::<u64>();
                done.bytes_after += m.file.bytes;
            }
        }
        out.push(done);
    }
    Ok(out)
}

/// Merges one partition of `part` as a transaction of its own; what it
/// merged, if it had enough files to.
async fn merge_partition(
    catalog: &Arc<Catalog>,
    def: &TableDef,
    part: &Part,
    partition: u32,
    rule: MergeRule,
) -> Result<Option<Compaction>> {
    let (guard, indexes) = catalog.begin_merge(&def.name).await?;
    if let Some(building) = indexes
        .iter()
        .find(|i| matches!(i.state, IndexState::Building { .. }))
    {
        return tessera_worker::precondition_err!(
            "index '{}' on '{}' is still being built, and its backfill reads the table's files \
             as they are; compact once SHOW INDEXES says it is ready",
            building.name,
            def.name
        );
    }
    let txn = guard.txn;
    let Some(target) = catalog.write_targets(&part.map_key, &[partition])?.pop() else {
        return Ok(None);
    };
    // The files to merge are chosen here, on one copy's manifest, and
    // every in-sync copy merges exactly those: copies of a partition stay
    // file for file alike (index entries name rows by file and offset).
    let mut copies = vec![];
    for replica in target.replicas {
        match replica {
            Ok(part) => copies.push(part),
            Err((worker, why)) => {
                return Err(tessera_worker::WorkerUnavailable::error(format!(
                    "partition {partition} of '{}' is not compacted while its copy on {worker} \
                     is away: {why}",
                    part.map_key
                )));
            }
        }
    }
    let Some(first) = copies.first() else {
        return Ok(None);
    };
    let urls: BTreeMap<String, String> = copies
        .iter()
        .map(|c| (c.worker_id.clone(), c.url.clone()))
        .collect();
    let manifest = async {
        WorkerClient::connect(&first.url)?
            .manifest(&part.location, partition)
            .await
    }
    .await
    .map_err(|e| name_worker(&first.worker_id, &first.url, e))?;
    let rule = MergeRule {
        below_txn: catalog.compaction_bound()?,
        ..rule
    };
    let files: Vec<String> = rule
        .choose(&manifest.files)
        .into_iter()
        .map(|f| f.name)
        .collect();
    if files.is_empty() {
        return Ok(None);
    }
    let request = CompactRequest {
        txn,
        table: part.location.clone(),
        partition,
        files,
    };
    let answers = futures::future::join_all(copies.iter().map(|c| async {
        let merged = async { WorkerClient::connect(&c.url)?.compact(&request).await };
        merged
            .await
            .map_err(|e| name_worker(&c.worker_id, &c.url, e))
    }))
    .await;
    // Every copy must have merged the same files, in the same order, into
    // the same rows; else none commits (the partition waits, with a
    // warning, and the others go on).
    let same = |a: &Compaction, b: &Compaction| {
        a.file.rows == b.file.rows
            && a.replaces.len() == b.replaces.len()
            && a.replaces
                .iter()
                .zip(&b.replaces)
                .all(|(x, y)| x.name == y.name)
    };
    let mut merged: Option<Compaction> = None;
    let mut differ = None;
    for (copy, answer) in copies.iter().zip(answers) {
        match answer {
            Ok(Some(m)) if merged.as_ref().is_none_or(|seen| same(seen, &m)) => merged = Some(m),
            Ok(_) => differ = Some(format!("{} merged other files", copy.worker_id)),
            Err(e) if tessera_worker::is_worker_failure(&e) => {
                abort(txn, urls.values()).await;
                return Err(e);
            }
            Err(e) => differ = Some(e.to_string()),
        }
    }
    if let Some(why) = differ {
        abort(txn, urls.values()).await;
        tracing::warn!(table = %part.map_key, partition, %why, "copies of a partition would merge different files; not compacted");
        return Ok(None);
    }
    let Some(merged) = merged else {
        abort(txn, urls.values()).await;
        return Ok(None);
    };
    let writes: BTreeMap<String, Vec<StagedWrite>> = urls
        .keys()
        .map(|w| {
            (
                w.clone(),
                vec![StagedWrite {
                    txn,
                    table: part.location.clone(),
                    partition,
                }],
            )
        })
        .collect();
    let before: u64 = merged.replaces.iter().map(|f| f.bytes).sum();
    let after = merged.file.bytes;
    let merging: Vec<String> = urls.keys().cloned().collect();
    let (def, part) = (def.clone(), part.clone());
    decide_and_commit(catalog, guard, writes, urls, Ack::Committed, move |s| {
        // Every copy in sync now merged: one that rejoined meanwhile (it
        // caught up while this ran) would be left with the old files.
        let Some(placement) = s
            .map
            .tables
            .get(&part.map_key)
            .and_then(|p| p.by_id(partition))
        else {
            return tessera_worker::precondition_err!(
                "partition {partition} of '{}' left the partition map (the table was dropped or \
                 the partition split) while it was compacted; nothing was merged",
                part.map_key
            );
        };
        let in_sync: Vec<String> = placement.in_sync().map(String::from).collect();
        if let Some(w) = in_sync.iter().find(|w| !merging.contains(w)) {
            return Err(tessera_worker::WorkerUnavailable::error(format!(
                "the copy of partition {partition} of '{}' on {w} rejoined while it was \
                 compacted; nothing was merged",
                part.map_key
            )));
        }
        let same_index = part
            .index
            .is_none_or(|id| s.indexes.get(&part.name).map(|i| i.id) == Some(id));
        if s.tables.get(&def.name).map(|t| t.id) != Some(def.id) || !same_index {
            return tessera_worker::precondition_err!(
                "'{}' was dropped or replaced while it was compacted",
                part.name
            );
        }
        crate::copies::bump_writes(s, &part.map_key, partition);
        if part.data {
            // The bytes below are the partition's as counted so far,
            // pending counts of writes included.
            s.fold_stats_deltas_of(&def.name);
        }
        if part.data
            && let Some(p) = s
                .stats
                .get_mut(&def.name)
                .and_then(|t| t.get_mut(&partition))
        {
            p.bytes = p.bytes.saturating_sub(before) + after;
        }
        Ok(())
    })
    .await?;
    Ok(Some(merged))
}

/// What `COMPACT TABLE` returns: one row per part of the table.
pub fn report(rows: &[Compacted]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.name))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.kind))),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.partitions_merged),
        )),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.partitions),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.files_merged),
        )),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.rows))),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.bytes_before),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.bytes_after),
        )),
    ];
    Ok(RecordBatch::try_new(report_schema(), columns)?)
}

pub fn report_schema() -> SchemaRef {
    let field = |name: &str, t: DataType| Field::new(name, t, false);
    Arc::new(Schema::new(vec![
        field("name", DataType::Utf8),
        field("kind", DataType::Utf8),
        field("partitions_merged", DataType::UInt32),
        field("partitions", DataType::UInt32),
        field("files_merged", DataType::UInt64),
        field("rows", DataType::UInt64),
        field("bytes_before", DataType::UInt64),
        field("bytes_after", DataType::UInt64),
    ]))
}

/// Runs the background compactor until the catalog is closed: every
/// [`AUTO_EVERY`] in which a transaction other than its own merges left
/// the decision log, each table's partitions with enough small files
/// (see [`AUTO`]) are merged. A merge is counted when it is decided,
/// before it leaves the log, so the count of others' transactions may
/// dip meanwhile; only a rise past the last one seen starts a pass.
pub fn spawn_compactor(compactor: &Arc<Compactor>) {
    let weak = Arc::downgrade(compactor);
    tokio::spawn(async move {
        let mut seen = 0u64;
        loop {
            tokio::time::sleep(AUTO_EVERY).await;
            let Some(compactor) = weak.upgrade() else {
                return;
            };
            let catalog = &compactor.catalog;
            if catalog.closed.load(Ordering::SeqCst) {
                return;
            }
            let finished = catalog
                .forgotten()
                .saturating_sub(compactor.merges.load(Ordering::SeqCst));
            if finished <= seen || compactor.paused() {
                continue;
            }
            seen = finished;
            let tables: Vec<String> = catalog
                .state()
                .map(|s| s.tables.keys().cloned().collect())
                .unwrap_or_default();
            for table in tables {
                match compactor.compact_table(&table, AUTO, BACKGROUND).await {
                    Ok(done) => {
                        for d in done.iter().filter(|d| d.files_merged > 0) {
                            tracing::info!(
                                name = %d.name,
                                partitions = d.partitions_merged,
                                files = d.files_merged,
                                "compacted"
                            );
                        }
                    }
                    // An index being built, a worker away: next time.
                    Err(e) => tracing::debug!(%table, error = %e, "compaction skipped"),
                }
            }
        }
    });
}
