//! `TesseraCodec`: Tessera's plan nodes (`PartitionScanExec` with its
//! index read and snapshot, `YieldingSliceExec`) as datafusion-proto
//! carries them between coordinator and workers, and the `DoGet` scan ticket.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf;
use prost::Message;

use super::{IndexRead, LocalStore, PartitionScanExec, ScanPart, ScanSpec};
use crate::index::RowsByFile;
use crate::snapshot::Snapshot;
use crate::yielding::YieldingSliceExec;

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
    #[prost(string, optional, tag = "19")]
    query: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct SnapshotProto {
    #[prost(uint64, tag = "1")]
    through: u64,
    #[prost(uint64, repeated, tag = "2")]
    in_flight: Vec<u64>,
    #[prost(uint64, repeated, tag = "3")]
    decided: Vec<u64>,
    #[prost(message, optional, boxed, tag = "4")]
    since: Option<Box<SnapshotProto>>,
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
            snapshot: scan.snapshot.as_deref().map(snapshot_proto),
            query: scan.query.as_deref().map(String::from),
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
            snapshot: proto.snapshot.map(|s| Arc::new(snapshot_of(s))),
            query: proto.query.map(Arc::from),
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

fn snapshot_proto(s: &Snapshot) -> SnapshotProto {
    SnapshotProto {
        through: s.through,
        in_flight: s.in_flight.clone(),
        decided: s.decided.clone(),
        since: s.since.as_deref().map(|e| Box::new(snapshot_proto(e))),
    }
}

fn snapshot_of(s: SnapshotProto) -> Snapshot {
    let mut snapshot = Snapshot {
        through: s.through,
        in_flight: s.in_flight,
        decided: s.decided,
        since: s.since.map(|e| Box::new(snapshot_of(*e))),
    };
    // `sees` searches them: never trust a peer's order.
    snapshot.in_flight.sort_unstable();
    snapshot.decided.sort_unstable();
    snapshot
}
