//! Co-located joins: when both sides of a partitioned hash join scan Tessera
//! tables hash-partitioned on the join keys into the same number of
//! partitions placed on the same workers, partition i of one side can only
//! match partition i of the other. The rule drops the repartitioning of both
//! sides and pairs the scans' partitions directly, so each task joins the
//! partitions its worker holds and no row moves.
//!
//! ```text
//!  HashJoinExec(Partitioned, l_orderkey = o_orderkey)        HashJoinExec(Partitioned)
//!    RepartitionExec Hash(l_orderkey)              ─►          PartitionScanExec lineitem p0..p7 (colocated)
//!      PartitionScanExec lineitem                              PartitionScanExec orders   p0..p7 (colocated)
//!    RepartitionExec Hash(o_orderkey)
//!      PartitionScanExec orders
//! ```
//!
//! Tessera's partitioner (xxh3 over canonical bytes) is not DataFusion's
//! repartition hash. The scans declare `Partitioning::Hash` only to each
//! other; if the operator above the join needs its input hash-partitioned,
//! the join's output is repartitioned with DataFusion's hash as before, so
//! DataFusion never pairs Tessera's partitions with its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::{JoinType, Result};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{Distribution, Partitioning, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use tessera_sql::PartitionScheme;
use tessera_worker::{PartitionScanExec, ScanPart};

use crate::catalog::Catalog;

#[derive(Debug)]
pub struct ColocateJoins {
    catalog: Arc<Catalog>,
}

impl ColocateJoins {
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Self { catalog }
    }

    /// Rewrites `plan`; `parent_needs_hash` says whether the nearest
    /// operator above that is not a pass-through needs this input
    /// hash-partitioned.
    fn rewrite(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        parent_needs_hash: bool,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let children = plan.children();
        if children.is_empty() {
            return Ok(plan);
        }
        let pass_through = is_pass_through(plan.as_ref());
        let required = plan.input_distribution_requirements();
        let mut new_children = Vec::with_capacity(children.len());
        let mut changed = false;
        for (i, child) in children.into_iter().enumerate() {
            let needs_hash = if pass_through {
                parent_needs_hash
            } else {
                required
                    .child_distribution(i)
                    .is_some_and(is_key_partitioned)
            };
            let new_child = self.rewrite(Arc::clone(child), needs_hash)?;
            changed |= !Arc::ptr_eq(&new_child, child);
            new_children.push(new_child);
        }
        let plan = if changed {
            replace_children_if_necessary(plan, new_children)?
        } else {
            plan
        };
        let Some(colocated) = self.colocate(&plan)? else {
            return Ok(plan);
        };
        let original = plan.properties().partitioning.clone();
        if parent_needs_hash && matches!(original, Partitioning::Hash(..)) {
            // Give the operator above what it was planned against.
            return Ok(Arc::new(RepartitionExec::try_new(colocated, original)?));
        }
        Ok(colocated)
    }

    /// The join with both sides' scans paired partition by partition, or
    /// `None` if the two tables are not co-located on the join keys.
    fn colocate(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(join) = plan.downcast_ref::<HashJoinExec>() else {
            return Ok(None);
        };
        if *join.partition_mode() != PartitionMode::Partitioned
            || matches!(join.join_type(), JoinType::LeftMark | JoinType::RightMark)
        {
            return Ok(None);
        }
        let (Some(left), Some(right)) = (Side::find(join.left()), Side::find(join.right())) else {
            return Ok(None);
        };
        let (Some(ldef), Some(rdef)) = (
            self.catalog.table_def(left.scan.table())?,
            self.catalog.table_def(right.scan.table())?,
        ) else {
            return Ok(None);
        };
        let (
            PartitionScheme::Hash {
                columns: lkeys,
                partitions: ln,
                ..
            },
            PartitionScheme::Hash {
                columns: rkeys,
                partitions: rn,
                ..
            },
        ) = (&ldef.scheme, &rdef.scheme)
        else {
            return Ok(None);
        };
        if ln != rn || lkeys.len() != rkeys.len() || *ln < 2 {
            return Ok(None);
        }
        // The join's key pairs, as (left table column, right table column).
        let mut pairs = vec![];
        for (l, r) in join.on() {
            if let (Some(lc), Some(rc)) = (left.table_column(l), right.table_column(r)) {
                pairs.push((lc, rc));
            }
        }
        // Partition key i of the left must be joined to partition key i of
        // the right, with the same type (the same canonical bytes).
        let lschema = ldef.schema()?;
        let rschema = rdef.schema()?;
        for (lk, rk) in lkeys.iter().zip(rkeys) {
            if !pairs.iter().any(|(l, r)| l == lk && r == rk) {
                return Ok(None);
            }
            let lt = lschema.field_with_name(lk)?.data_type();
            let rt = rschema.field_with_name(rk)?.data_type();
            if lt != rt {
                return Ok(None);
            }
        }
        // Partition i of both tables on the same worker.
        let lplace = self.catalog.placements(&ldef.name)?;
        let rplace = self.catalog.placements(&rdef.name)?;
        if lplace.len() != rplace.len()
            || lplace
                .iter()
                .zip(&rplace)
                .any(|(a, b)| a.id != b.id || a.leader() != b.leader())
        {
            return Ok(None);
        }
        // Both sides read the union of the partitions either kept: a
        // partition one side pruned still holds no row that side's
        // filter passes, so reading it is only wasted work.
        let mut union: BTreeMap<u32, ScanPart> = BTreeMap::new();
        for p in left.scan.parts().iter().chain(right.scan.parts()) {
            union.entry(p.partition).or_insert_with(|| p.clone());
        }
        let parts: Vec<ScanPart> = union.into_values().collect();
        let Some(lkey_exprs) = left.scan_keys(lkeys) else {
            return Ok(None);
        };
        let Some(rkey_exprs) = right.scan_keys(rkeys) else {
            return Ok(None);
        };
        let new_left = left.rebuild(&parts, lkey_exprs)?;
        let new_right = right.rebuild(&parts, rkey_exprs)?;
        Ok(Some(replace_children_if_necessary(
            Arc::clone(plan),
            vec![new_left, new_right],
        )?))
    }
}

#[allow(deprecated)] // HashPartitioned is KeyPartitioned's old name.
fn is_key_partitioned(d: &Distribution) -> bool {
    matches!(
        d,
        Distribution::KeyPartitioned(_) | Distribution::HashPartitioned(_)
    )
}

/// Operators that keep their input's partitioning as it is.
fn is_pass_through(plan: &dyn ExecutionPlan) -> bool {
    plan.downcast_ref::<ProjectionExec>().is_some() || plan.downcast_ref::<FilterExec>().is_some()
}

/// One side of a join: projections and filters down to a partition scan,
/// with the repartitioning that DataFusion put in between removed.
struct Side {
    /// From the join down, without repartitions; the scan last.
    chain: Vec<Arc<dyn ExecutionPlan>>,
    scan: PartitionScanExec,
}

impl Side {
    fn find(plan: &Arc<dyn ExecutionPlan>) -> Option<Side> {
        let mut chain = vec![];
        let mut node = Arc::clone(plan);
        loop {
            if let Some(scan) = node.downcast_ref::<PartitionScanExec>() {
                return Some(Side {
                    chain,
                    scan: scan.clone(),
                });
            }
            let next = if node.downcast_ref::<RepartitionExec>().is_some() {
                Arc::clone(node.children()[0])
            } else if is_pass_through(node.as_ref()) {
                chain.push(Arc::clone(&node));
                Arc::clone(node.children()[0])
            } else {
                return None;
            };
            node = next;
        }
    }

    /// The table column a join key of this side reads, if it is a plain
    /// column all the way down.
    fn table_column(&self, expr: &Arc<dyn PhysicalExpr>) -> Option<String> {
        let mut index = expr.downcast_ref::<Column>()?.index();
        for node in &self.chain {
            if let Some(p) = node.downcast_ref::<ProjectionExec>() {
                index = p.expr().get(index)?.expr.downcast_ref::<Column>()?.index();
            } else if let Some(f) = node.downcast_ref::<FilterExec>()
                && let Some(projection) = f.projection()
            {
                index = *projection.get(index)?;
            }
        }
        let field = self.scan.schema().fields().get(index)?.clone();
        Some(field.name().clone())
    }

    /// The partition key columns in the scan's output.
    fn scan_keys(&self, keys: &[String]) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        let schema = self.scan.schema();
        keys.iter()
            .map(|k| {
                let index = schema.index_of(k).ok()?;
                Some(Arc::new(Column::new(k, index)) as Arc<dyn PhysicalExpr>)
            })
            .collect()
    }

    /// The side over a scan of `parts`, output partition i = parts[i].
    fn rebuild(
        &self,
        parts: &[ScanPart],
        keys: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut spec = self.scan.spec();
        spec.colocated_on = Some(keys);
        spec.kept_partitions = parts.len() as u32;
        let mut node: Arc<dyn ExecutionPlan> = Arc::new(PartitionScanExec::try_new(
            spec,
            parts.to_vec(),
            parts.len(),
        )?);
        for parent in self.chain.iter().rev() {
            node = replace_children_if_necessary(Arc::clone(parent), vec![node])?;
        }
        Ok(node)
    }
}

impl PhysicalOptimizerRule for ColocateJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.rewrite(plan, false)
    }

    fn name(&self) -> &str {
        "tessera_colocate_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
