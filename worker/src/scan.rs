//! `PartitionScanExec`: Tessera's leaf. It reads the Parquet files of some
//! partitions of one table, with the projection and predicate pushed into the
//! Parquet reader, and streams the rows.
//!
//! Each output partition of the node is one Tessera partition. Where the node
//! runs decides how it reads: on the worker that owns a partition it opens
//! the files on local disk; anywhere else (the coordinator, when the planner
//! keeps a one-task stage at home, or a task routed away from an owner) it
//! asks the owner over Flight `DoGet` to run that partition's scan and stream
//! the rows back. Scans always run where the data lives.
//!
//! ```text
//!   PartitionScanExec  t partitions=3/8 [p0@w0, p3@w0, p5@w2]
//!        │ execute(0)          │ execute(1)          │ execute(2)
//!     local? read p0       local? read p3       not local: DoGet(p5) ─► w2
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, Statistics, internal_err};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::TryStreamExt;

use crate::client::WorkerClient;
use crate::index::{RowsByFile, locate, selection_of};
use crate::snapshot::Snapshot;
use crate::storage::Storage;

mod codec;

pub use codec::{TesseraCodec, decode_scan, encode_scan};

/// One partition to scan and the worker that owns it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanPart {
    pub partition: u32,
    pub worker_id: String,
    pub url: String,
}

/// The worker a node was decoded on: its URL and its partitions on disk.
#[derive(Debug)]
pub struct LocalStore {
    pub url: String,
    pub storage: Arc<Storage>,
    /// Partition scans reading this worker's disk right now.
    pub active_scans: Arc<std::sync::atomic::AtomicUsize>,
    /// What each running query's scans read here so far.
    pub progress: Arc<crate::progress::ScanProgress>,
}

/// Counts a running local scan until its stream is dropped (finished,
/// failed or cancelled).
struct ActiveScan(Arc<std::sync::atomic::AtomicUsize>);

impl ActiveScan {
    fn new(gauge: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        gauge.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(Arc::clone(gauge))
    }
}

impl Drop for ActiveScan {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Reads some partitions of one Tessera table.
#[derive(Debug, Clone)]
pub struct PartitionScanExec {
    table: String,
    location: String,
    table_schema: SchemaRef,
    projection: Option<Vec<usize>>,
    predicate: Option<Arc<dyn PhysicalExpr>>,
    limit: Option<usize>,
    parts: Vec<ScanPart>,
    /// Partitions of the table in all, and kept by pruning for the whole
    /// scan (all tasks), for `partitions=K/N`.
    total_partitions: u32,
    kept_partitions: u32,
    estimate: Option<SizeEstimate>,
    colocated_on: Option<Vec<Arc<dyn PhysicalExpr>>>,
    index: Option<IndexRead>,
    snapshot: Option<Arc<Snapshot>>,
    query: Option<Arc<str>>,
    local: Option<Arc<LocalStore>>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

/// What a scan reads, independent of which parts: shared by every variant.
#[derive(Debug, Clone)]
pub struct ScanSpec {
    /// The table's name, for plans and messages.
    pub table: String,
    /// The table's directory on workers.
    pub location: String,
    pub table_schema: SchemaRef,
    pub projection: Option<Vec<usize>>,
    pub predicate: Option<Arc<dyn PhysicalExpr>>,
    pub limit: Option<usize>,
    pub total_partitions: u32,
    pub kept_partitions: u32,
    /// Rows and stored bytes of the kept partitions, if known: the
    /// planner's size estimate (join sides to broadcast).
    pub estimate: Option<SizeEstimate>,
    /// Set when output partition i is table partition i of a set that a
    /// co-located join pairs with the same partitions of another table:
    /// the key columns (in the scan's output) to declare as the hash
    /// partitioning. Coordinator-side planning only; never serialised.
    pub colocated_on: Option<Vec<Arc<dyn PhysicalExpr>>>,
    /// A secondary index that narrows the rows read.
    pub index: Option<IndexRead>,
    /// What the scan sees; `None` reads every committed file (internal
    /// reads that choose their transactions themselves, as the outbox
    /// applier).
    pub snapshot: Option<Arc<Snapshot>>,
    /// The id of the query the scan is part of: what it reads on a
    /// worker's disk counts towards that query's progress there.
    pub query: Option<Arc<str>>,
}

/// How a scan reads only the rows a secondary index names. Either way the
/// scan's predicate is still applied to those rows, so the answer is exact.
#[derive(Debug, Clone)]
pub enum IndexRead {
    /// A LOCAL index: each task reads its partition's part of the index
    /// (the same partition number under `location`) with `predicate`, then
    /// only the rows the matching entries name.
    Local {
        label: String,
        location: String,
        schema: SchemaRef,
        predicate: Arc<dyn PhysicalExpr>,
    },
    /// A GLOBAL index, already looked up by the coordinator: per data
    /// partition, the rows to read.
    Rows {
        label: String,
        rows: Arc<BTreeMap<u32, RowsByFile>>,
    },
}

impl IndexRead {
    /// What `EXPLAIN` says about the index.
    pub fn label(&self) -> &str {
        match self {
            IndexRead::Local { label, .. } | IndexRead::Rows { label, .. } => label,
        }
    }
}

/// Rows and stored bytes of some partitions, as the write path counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SizeEstimate {
    pub rows: u64,
    pub bytes: u64,
    /// Transactions decided on the partition (writes and compactions): a
    /// copy catching up rejoins the in-sync set only if none came between.
    #[serde(default)]
    pub writes: u64,
}

impl PartitionScanExec {
    /// A scan of `parts` with `output_partitions` outputs (at least
    /// `parts.len()`; outputs past the parts are empty, so variants of one
    /// distributed leaf can agree on a count).
    pub fn try_new(spec: ScanSpec, parts: Vec<ScanPart>, output_partitions: usize) -> Result<Self> {
        let schema = match &spec.projection {
            Some(p) => Arc::new(spec.table_schema.project(p)?),
            None => Arc::clone(&spec.table_schema),
        };
        let count = output_partitions.max(parts.len()).max(1);
        let partitioning = match &spec.colocated_on {
            Some(keys) => Partitioning::Hash(keys.clone(), count),
            None => Partitioning::UnknownPartitioning(count),
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            table: spec.table,
            location: spec.location,
            table_schema: spec.table_schema,
            projection: spec.projection,
            predicate: spec.predicate,
            limit: spec.limit,
            parts,
            total_partitions: spec.total_partitions,
            kept_partitions: spec.kept_partitions,
            estimate: spec.estimate,
            colocated_on: spec.colocated_on,
            index: spec.index,
            snapshot: spec.snapshot,
            query: spec.query,
            local: None,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    pub fn spec(&self) -> ScanSpec {
        ScanSpec {
            table: self.table.clone(),
            location: self.location.clone(),
            table_schema: Arc::clone(&self.table_schema),
            projection: self.projection.clone(),
            predicate: self.predicate.clone(),
            limit: self.limit,
            total_partitions: self.total_partitions,
            kept_partitions: self.kept_partitions,
            estimate: self.estimate,
            colocated_on: self.colocated_on.clone(),
            index: self.index.clone(),
            snapshot: self.snapshot.clone(),
            query: self.query.clone(),
        }
    }

    /// Estimated (rows, bytes) the scan returns: the stored bytes of the
    /// kept partitions scaled by the share of columns read, and by the
    /// limit.
    pub fn estimated_size(&self) -> Option<(u64, u64)> {
        let estimate = self.estimate?;
        let all = self.table_schema.fields().len().max(1) as u64;
        let read = self.projection.as_ref().map_or(all, |p| p.len() as u64);
        let mut rows = estimate.rows;
        let mut bytes = estimate.bytes.saturating_mul(read) / all;
        if let Some(limit) = self.limit
            && (limit as u64) < rows
        {
            bytes = bytes.saturating_mul(limit as u64) / rows.max(1);
            rows = limit as u64;
        }
        Some((rows, bytes))
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Partitions the whole scan reads (all tasks together).
    pub fn kept_partitions(&self) -> u32 {
        self.kept_partitions
    }

    pub fn parts(&self) -> &[ScanPart] {
        &self.parts
    }

    fn with_local(mut self, local: Option<Arc<LocalStore>>) -> Self {
        self.local = local;
        self
    }

    fn is_local(&self, part: &ScanPart) -> bool {
        self.local.as_ref().is_some_and(|l| l.url == part.url)
    }

    fn empty(&self) -> SendableRecordBatchStream {
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            futures::stream::empty(),
        ))
    }

    fn scan_local(
        &self,
        storage: &Arc<Storage>,
        part: &ScanPart,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if self.index.is_some() {
            let this = self.clone();
            let storage = Arc::clone(storage);
            let partition = part.partition;
            let schema = self.schema();
            let stream =
                futures::stream::once(
                    async move { this.scan_indexed(&storage, partition, ctx).await },
                )
                .try_flatten();
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)));
        }
        let files = storage
            .visible_files(&self.location, part.partition, self.snapshot.as_deref())?
            .into_iter()
            .map(|(path, f)| PartitionedFile::new(path.to_string_lossy(), f.bytes))
            .collect();
        self.read_files(files, ctx)
    }

    /// Reads only the rows the index names: files it names none of are
    /// skipped, the others read through a row selection.
    async fn scan_indexed(
        &self,
        storage: &Storage,
        partition: u32,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let rows: RowsByFile = match &self.index {
            Some(IndexRead::Rows { rows, .. }) => rows.get(&partition).cloned().unwrap_or_default(),
            Some(IndexRead::Local {
                location,
                schema,
                predicate,
                ..
            }) => {
                // Every entry file: entries are kept or not by the
                // transaction of the row they name, below.
                if let Some(snapshot) = &self.snapshot {
                    storage.resolve(location, partition, &snapshot.decided)?;
                }
                let files: Vec<PartitionedFile> = storage
                    .files(location, partition)?
                    .into_iter()
                    .map(|(path, size)| PartitionedFile::new(path.to_string_lossy(), size))
                    .collect();
                if files.is_empty() {
                    RowsByFile::new()
                } else {
                    let source = ParquetSource::new(Arc::clone(schema))
                        .with_predicate(Arc::clone(predicate))
                        .with_pushdown_filters(true);
                    let place = [
                        schema.index_of(tessera_sql::FILE_COLUMN)?,
                        schema.index_of(tessera_sql::ROW_COLUMN)?,
                    ];
                    let config = FileScanConfigBuilder::new(
                        ObjectStoreUrl::local_filesystem(),
                        Arc::new(source),
                    )
                    .with_file_group(files.into_iter().collect())
                    .with_projection_indices(Some(place.to_vec()))?
                    .build();
                    let entries: Vec<_> = DataSourceExec::from_data_source(config)
                        .execute(0, Arc::clone(&ctx))?
                        .try_collect()
                        .await?;
                    locate(&entries)?.remove(&0).unwrap_or_default()
                }
            }
            None => return internal_err!("index scan without an index"),
        };
        let files: Vec<PartitionedFile> = storage
            .indexed_files(&self.location, partition, rows, self.snapshot.as_deref())?
            .into_iter()
            .filter_map(|(path, file, named)| {
                let selection = selection_of(&named, usize::try_from(file.rows).ok()?);
                Some(
                    PartitionedFile::new(path.to_string_lossy(), file.bytes)
                        .with_extension(ParquetRowSelection::new(selection)),
                )
            })
            .collect();
        self.read_files(files, ctx)
    }

    /// Reads `files` with the scan's projection and limit. The predicate
    /// prunes row groups and pages by their statistics; rows are not
    /// filtered while decoding (evaluating it over whole column chunks
    /// inside the reader cost more than the filter above the scan, which
    /// checks every row), so the scan's rows are a superset of the matches.
    fn read_files(
        &self,
        files: Vec<PartitionedFile>,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if files.is_empty() {
            return Ok(self.empty());
        }
        let mut source = ParquetSource::new(Arc::clone(&self.table_schema));
        if let Some(predicate) = &self.predicate {
            source = source.with_predicate(Arc::clone(predicate));
        }
        let group: FileGroup = files.into_iter().collect();
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_file_group(group)
                .with_projection_indices(self.projection.clone())?
                .with_limit(self.limit)
                .build();
        DataSourceExec::from_data_source(config).execute(0, ctx)
    }

    fn scan_remote(&self, part: &ScanPart) -> Result<SendableRecordBatchStream> {
        let single = PartitionScanExec::try_new(self.spec(), vec![part.clone()], 1)?;
        let ticket = encode_scan(&single)?;
        let client = WorkerClient::connect(&part.url)?;
        let schema = self.schema();
        let url = part.url.clone();
        let stream = futures::stream::once(async move { client.scan(ticket).await })
            .map_ok(move |batches| {
                let url = url.clone();
                batches.map_err(move |e| crate::client::flight_error(&url, e))
            })
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

impl DisplayAs for PartitionScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "PartitionScanExec: table={}, partitions={}/{}",
            self.table, self.kept_partitions, self.total_partitions
        )?;
        let mut workers: Vec<&str> = self.parts.iter().map(|p| p.worker_id.as_str()).collect();
        workers.sort_unstable();
        workers.dedup();
        write!(f, ", workers=[{}]", workers.join(", "))?;
        let shown: Vec<String> = self
            .parts
            .iter()
            .map(|p| format!("p{}", p.partition))
            .collect();
        write!(f, ", read=[{}]", shown.join(", "))?;
        if self.colocated_on.is_some() {
            write!(f, ", colocated")?;
        }
        if let Some(index) = &self.index {
            write!(f, ", index={}", index.label())?;
        }
        if let Some(p) = &self.predicate {
            write!(f, ", predicate={p}")?;
        }
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for PartitionScanExec {
    fn name(&self) -> &str {
        "PartitionScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        match &self.predicate {
            Some(p) => f(p),
            None => Ok(TreeNodeRecursion::Continue),
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return internal_err!("PartitionScanExec has no children");
        }
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let Some(part) = self.parts.get(partition) else {
            return Ok(self.empty());
        };
        let rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let (stream, active, progress) = match (&self.local, self.is_local(part)) {
            (Some(local), true) => {
                // Pinned before the manifest is read, for as long as the
                // stream lives: a compaction does not delete its files.
                let pin = local.storage.pin();
                // Counted where the disk is read (a scan run for another
                // node is counted by the owner that runs it).
                let progress = self.query.clone().map(|q| (q, Arc::clone(&local.progress)));
                (
                    self.scan_local(&local.storage, part, context)?,
                    Some((ActiveScan::new(&local.active_scans), pin)),
                    progress,
                )
            }
            _ => (self.scan_remote(part)?, None, None),
        };
        let schema = stream.schema();
        let counted = stream.inspect_ok(move |b| {
            let _ = &active;
            rows.add(b.num_rows());
            if let Some((query, progress)) = &progress {
                progress.add(query, b.num_rows() as u64, b.get_array_memory_size() as u64);
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, counted)))
    }

    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<Statistics>> {
        let schema = self.schema();
        let (Some((rows, bytes)), None) = (self.estimated_size(), partition) else {
            return Ok(Arc::new(Statistics::new_unknown(&schema)));
        };
        let mut stats = Statistics::new_unknown(&schema);
        stats.num_rows = Precision::Inexact(usize::try_from(rows).unwrap_or(usize::MAX));
        stats.total_byte_size = Precision::Inexact(usize::try_from(bytes).unwrap_or(usize::MAX));
        Ok(Arc::new(stats))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
