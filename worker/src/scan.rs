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

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, Statistics, internal_err};
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
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf;
use futures::TryStreamExt;
use prost::Message;

use crate::client::WorkerClient;
use crate::index::{RowsByFile, locate, selection_of};
use crate::snapshot::Snapshot;
use crate::storage::Storage;
use crate::yielding::YieldingSliceExec;

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
        let (stream, active) = match (&self.local, self.is_local(part)) {
            (Some(local), true) => {
                // Pinned before the manifest is read, for as long as the
                // stream lives: a compaction does not delete its files.
                let pin = local.storage.pin();
                (
                    self.scan_local(&local.storage, part, context)?,
                    Some((ActiveScan::new(&local.active_scans), pin)),
                )
            }
            _ => (self.scan_remote(part)?, None),
        };
        let schema = stream.schema();
        let counted = stream.inspect_ok(move |b| {
            let _ = &active;
            rows.add(b.num_rows());
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

#[derive(Clone, PartialEq, Message)]
struct ScanPartProto {
    #[prost(uint32, tag = "1")]
    partition: u32,
    #[prost(string, tag = "2")]
    worker_id: String,
    #[prost(string, tag = "3")]
    url: String,
}

/// One of Tessera's plan nodes, as the distributed plan carries it.
#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    /// A `PartitionScanProto`.
    #[prost(bytes = "vec", optional, tag = "1")]
    scan: Option<Vec<u8>>,
    /// A `YieldingSliceExec`.
    #[prost(bool, optional, tag = "2")]
    yielding_slice: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct PartitionScanProto {
    #[prost(string, tag = "1")]
    table: String,
    #[prost(message, optional, tag = "2")]
    schema: Option<protobuf::Schema>,
    #[prost(bool, tag = "3")]
    has_projection: bool,
    #[prost(uint32, repeated, tag = "4")]
    projection: Vec<u32>,
    #[prost(message, optional, tag = "5")]
    predicate: Option<protobuf::PhysicalExprNode>,
    #[prost(uint64, optional, tag = "6")]
    limit: Option<u64>,
    #[prost(message, repeated, tag = "7")]
    parts: Vec<ScanPartProto>,
    #[prost(uint64, tag = "8")]
    output_partitions: u64,
    #[prost(uint32, tag = "9")]
    total_partitions: u32,
    #[prost(uint32, tag = "10")]
    kept_partitions: u32,
    #[prost(string, tag = "11")]
    location: String,
    /// 0: no index; 1: LOCAL (fields 13-16); 2: rows looked up (17).
    #[prost(uint32, tag = "12")]
    index_kind: u32,
    #[prost(string, tag = "13")]
    index_label: String,
    #[prost(string, tag = "14")]
    index_location: String,
    #[prost(message, optional, tag = "15")]
    index_schema: Option<protobuf::Schema>,
    #[prost(message, optional, tag = "16")]
    index_predicate: Option<protobuf::PhysicalExprNode>,
    #[prost(message, repeated, tag = "17")]
    index_rows: Vec<IndexRowsProto>,
    #[prost(message, optional, tag = "18")]
    snapshot: Option<SnapshotProto>,
}

#[derive(Clone, PartialEq, Message)]
struct SnapshotProto {
    #[prost(uint64, tag = "1")]
    through: u64,
    #[prost(uint64, repeated, tag = "2")]
    in_flight: Vec<u64>,
    #[prost(uint64, repeated, tag = "3")]
    decided: Vec<u64>,
}

#[derive(Clone, PartialEq, Message)]
struct IndexRowsProto {
    #[prost(uint32, tag = "1")]
    partition: u32,
    #[prost(uint64, tag = "2")]
    file: u64,
    #[prost(uint32, repeated, tag = "3")]
    rows: Vec<u32>,
}

/// Encodes and decodes Tessera's plan nodes for datafusion-proto. A worker's
/// codec knows its own store, so a scan decoded there reads local partitions
/// from disk.
#[derive(Debug, Clone, Default)]
pub struct TesseraCodec {
    local: Option<Arc<LocalStore>>,
}

impl TesseraCodec {
    pub fn for_worker(local: Arc<LocalStore>) -> Self {
        Self { local: Some(local) }
    }

    fn encode_node(&self, scan: &PartitionScanExec) -> Result<Vec<u8>> {
        let predicate = match &scan.predicate {
            Some(p) => Some(serialize_physical_expr(p, self)?),
            None => None,
        };
        let mut proto = PartitionScanProto {
            table: scan.table.clone(),
            location: scan.location.clone(),
            schema: Some(scan.table_schema.as_ref().try_into()?),
            has_projection: scan.projection.is_some(),
            projection: scan
                .projection
                .iter()
                .flatten()
                .map(|i| *i as u32)
                .collect(),
            predicate,
            limit: scan.limit.map(|l| l as u64),
            parts: scan
                .parts
                .iter()
                .map(|p| ScanPartProto {
                    partition: p.partition,
                    worker_id: p.worker_id.clone(),
                    url: p.url.clone(),
                })
                .collect(),
            output_partitions: scan.properties.partitioning.partition_count() as u64,
            total_partitions: scan.total_partitions,
            kept_partitions: scan.kept_partitions,
            snapshot: scan.snapshot.as_ref().map(|s| SnapshotProto {
                through: s.through,
                in_flight: s.in_flight.clone(),
                decided: s.decided.clone(),
            }),
            ..Default::default()
        };
        match &scan.index {
            None => {}
            Some(IndexRead::Local {
                label,
                location,
                schema,
                predicate,
            }) => {
                proto.index_kind = 1;
                proto.index_label = label.clone();
                proto.index_location = location.clone();
                proto.index_schema = Some(schema.as_ref().try_into()?);
                proto.index_predicate = Some(serialize_physical_expr(predicate, self)?);
            }
            Some(IndexRead::Rows { label, rows }) => {
                proto.index_kind = 2;
                proto.index_label = label.clone();
                // Only the rows of the partitions this node reads.
                for part in &scan.parts {
                    for (file, positions) in rows.get(&part.partition).into_iter().flatten() {
                        proto.index_rows.push(IndexRowsProto {
                            partition: part.partition,
                            file: *file,
                            rows: positions.clone(),
                        });
                    }
                }
            }
        }
        Ok(proto.encode_to_vec())
    }

    fn decode_node(&self, buf: &[u8], ctx: &TaskContext) -> Result<PartitionScanExec> {
        let proto = PartitionScanProto::decode(buf).map_err(|e| {
            DataFusionError::Execution(format!("malformed partition scan from a peer: {e}"))
        })?;
        let Some(schema) = proto.schema.as_ref() else {
            return internal_err!("partition scan without a schema");
        };
        let schema: Schema = schema.try_into()?;
        let schema = Arc::new(schema);
        let predicate = match &proto.predicate {
            Some(p) => Some(parse_physical_expr(p, ctx, &schema, self)?),
            None => None,
        };
        let index = self.decode_index(&proto, ctx)?;
        let spec = ScanSpec {
            table: proto.table,
            location: proto.location,
            table_schema: schema,
            projection: proto
                .has_projection
                .then(|| proto.projection.iter().map(|i| *i as usize).collect()),
            predicate,
            limit: proto.limit.map(|l| l as usize),
            total_partitions: proto.total_partitions,
            kept_partitions: proto.kept_partitions,
            estimate: None,
            colocated_on: None,
            index,
            snapshot: proto.snapshot.map(|s| {
                let mut snapshot = Snapshot {
                    through: s.through,
                    in_flight: s.in_flight,
                    decided: s.decided,
                };
                // `sees` searches them: never trust a peer's order.
                snapshot.in_flight.sort_unstable();
                snapshot.decided.sort_unstable();
                Arc::new(snapshot)
            }),
        };
        let parts = proto
            .parts
            .into_iter()
            .map(|p| ScanPart {
                partition: p.partition,
                worker_id: p.worker_id,
                url: p.url,
            })
            .collect();
        Ok(
            PartitionScanExec::try_new(spec, parts, proto.output_partitions as usize)?
                .with_local(self.local.clone()),
        )
    }
}

impl TesseraCodec {
    fn decode_index(
        &self,
        proto: &PartitionScanProto,
        ctx: &TaskContext,
    ) -> Result<Option<IndexRead>> {
        match proto.index_kind {
            0 => Ok(None),
            1 => {
                let (Some(schema), Some(predicate)) = (&proto.index_schema, &proto.index_predicate)
                else {
                    return internal_err!("LOCAL index scan without its schema or predicate");
                };
                let schema: Schema = schema.try_into()?;
                let schema = Arc::new(schema);
                let predicate = parse_physical_expr(predicate, ctx, &schema, self)?;
                Ok(Some(IndexRead::Local {
                    label: proto.index_label.clone(),
                    location: proto.index_location.clone(),
                    schema,
                    predicate,
                }))
            }
            2 => {
                let mut rows: BTreeMap<u32, RowsByFile> = BTreeMap::new();
                for r in &proto.index_rows {
                    rows.entry(r.partition)
                        .or_default()
                        .insert(r.file, r.rows.clone());
                }
                Ok(Some(IndexRead::Rows {
                    label: proto.index_label.clone(),
                    rows: Arc::new(rows),
                }))
            }
            other => internal_err!("unknown index scan kind {other}"),
        }
    }
}

impl PhysicalExtensionCodec for TesseraCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        _converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let node = NodeProto::decode(buf).map_err(|e| {
            DataFusionError::Execution(format!("malformed plan node from a peer: {e}"))
        })?;
        match (node.scan, node.yielding_slice, inputs) {
            (Some(scan), None, []) => Ok(Arc::new(self.decode_node(&scan, ctx)?)),
            (None, Some(true), [input]) => Ok(Arc::new(YieldingSliceExec::new(Arc::clone(input)))),
            _ => internal_err!("malformed plan node from a peer ({} inputs)", inputs.len()),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let proto = if let Some(scan) = node.downcast_ref::<PartitionScanExec>() {
            NodeProto {
                scan: Some(self.encode_node(scan)?),
                yielding_slice: None,
            }
        } else if node.downcast_ref::<YieldingSliceExec>().is_some() {
            NodeProto {
                scan: None,
                yielding_slice: Some(true),
            }
        } else {
            return internal_err!("TesseraCodec cannot encode {}", node.name());
        };
        buf.extend(proto.encode_to_vec());
        Ok(())
    }
}

/// The `DoGet` ticket asking an owner to run a scan.
pub fn encode_scan(scan: &PartitionScanExec) -> Result<Vec<u8>> {
    TesseraCodec::default().encode_node(scan)
}

/// Decodes a `DoGet` scan ticket on the worker that received it.
pub fn decode_scan(
    ticket: &[u8],
    local: Arc<LocalStore>,
    ctx: &TaskContext,
) -> Result<PartitionScanExec> {
    let scan = TesseraCodec::for_worker(Arc::clone(&local)).decode_node(ticket, ctx)?;
    if let Some(part) = scan.parts.iter().find(|p| p.url != local.url) {
        return Err(DataFusionError::Execution(format!(
            "partition {} of '{}' is not held by worker {} but by {}; the partition map \
             changed while the query ran: run it again",
            part.partition, scan.table, local.url, part.worker_id
        )));
    }
    Ok(scan)
}
