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
//! A side may reach its scan through operators that keep partition i's
//! rows in partition i: projections and filters, the probe side of a join
//! whose build side is broadcast, and a join already paired this way. So
//! `(supplier ⋈ lineitem) ⋈ orders` and `(lineitem ⋈ orders) ⋈ lineitem`
//! pair too, and TPC-H Q21 moves no lineitem row between workers.
//!
//! An aggregate grouped by every partition key column of a table (for
//! example `GROUP BY l_orderkey`) finds each group whole in one partition:
//! it runs where the partition lies, with no shuffle between its partial
//! and final steps, and its output stays paired with the table's.
//!
//! A join's output is broadcast only when everything it reads is under
//! `tessera.broadcast_threshold_bytes`: DataFusion estimates a join's output
//! from the distinct counts of its keys, which scans do not know, and can
//! take a join of `lineitem` for a small table.
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
use datafusion::physical_expr::Partitioning;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use tessera_sql::PartitionScheme;
use tessera_worker::{PartitionScanExec, ScanPart};

mod walk;

use walk::{
    Padding, column_index, ids, is_key_partitioned, is_pass_through, origin, paired_parts, rebuild,
    same_scan, unbroadcast,
};

use crate::catalog::Catalog;
use crate::options::TesseraOptions;

#[derive(Debug)]
pub struct ColocateJoins {
    catalog: Arc<Catalog>,
}

/// What a rewrite needs from the session.
struct Settings<'a> {
    broadcast_threshold: u64,
    target_partitions: usize,
    /// The config the query was planned in: its partition map.
    config: &'a ConfigOptions,
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
        settings: &Settings,
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
            let new_child = self.rewrite(Arc::clone(child), needs_hash, settings)?;
            changed |= !Arc::ptr_eq(&new_child, child);
            new_children.push(new_child);
        }
        let plan = if changed {
            replace_children_if_necessary(plan, new_children)?
        } else {
            plan
        };
        let plan = match unbroadcast(&plan, settings)? {
            Some(partitioned) => partitioned,
            None => plan,
        };
        let colocated = match self.colocate(&plan, settings.config)? {
            Some(joined) => Some(joined),
            None => self.local_aggregate(&plan)?,
        };
        let Some(colocated) = colocated else {
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
    fn colocate(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(join) = plan.downcast_ref::<HashJoinExec>() else {
            return Ok(None);
        };
        // A broadcast join of two co-located sides is paired instead: no
        // side moves at all.
        let collected = match join.partition_mode() {
            PartitionMode::Partitioned => false,
            PartitionMode::CollectLeft => !join.null_aware,
            PartitionMode::Auto => return Ok(None),
        };
        let partitioned = *join.partition_mode() == PartitionMode::Partitioned;
        if !(collected || partitioned)
            || matches!(join.join_type(), JoinType::LeftMark | JoinType::RightMark)
        {
            return Ok(None);
        }
        let left = if collected {
            match join.left().downcast_ref::<CoalescePartitionsExec>() {
                Some(coalesce) => Arc::clone(coalesce.input()),
                None => Arc::clone(join.left()),
            }
        } else {
            Arc::clone(join.left())
        };
        // The join's key pairs, as the (scan, table column) each reads.
        let mut pairs = vec![];
        for (l, r) in join.on() {
            let (Some(l), Some(r)) = (column_index(l), column_index(r)) else {
                continue;
            };
            if let (Some(lo), Some(ro)) = (
                origin(&left, l, Padding::Allowed),
                origin(join.right(), r, Padding::Allowed),
            ) {
                pairs.push((lo, ro));
            }
        }
        let Some(((lscan, _), (rscan, _))) = pairs.first().cloned() else {
            return Ok(None);
        };
        let (Some(ldef), Some(rdef)) = (
            self.catalog.table_def(lscan.table())?,
            self.catalog.table_def(rscan.table())?,
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
        // Every join key must be a partition key: DataFusion checks that
        // both sides are partitioned on all the join keys, not a subset.
        if ln != rn || lkeys.len() != rkeys.len() || *ln < 2 || join.on().len() != lkeys.len() {
            return Ok(None);
        }
        // Partition key i of the left must be joined to partition key i of
        // the right, with the same type (the same canonical bytes), and
        // both read from the scans the first pair reads.
        let lschema = ldef.schema()?;
        let rschema = rdef.schema()?;
        for (lk, rk) in lkeys.iter().zip(rkeys) {
            let joined = pairs.iter().any(|((ls, lc), (rs, rc))| {
                lc == lk && rc == rk && same_scan(ls, &lscan) && same_scan(rs, &rscan)
            });
            if !joined {
                return Ok(None);
            }
            let lt = lschema.field_with_name(lk)?.data_type();
            let rt = rschema.field_with_name(rk)?.data_type();
            if lt != rt {
                return Ok(None);
            }
        }
        // Partition i of both tables read from the same worker (with
        // replicas: the copy each side would read, which is in sync).
        let lplace = crate::query_map::placements(config, &self.catalog, &ldef.name)?;
        let rplace = crate::query_map::placements(config, &self.catalog, &rdef.name)?;
        // Partition i must hold the same slice of keys on both sides.
        if lplace.len() != rplace.len()
            || lplace
                .iter()
                .zip(&rplace)
                .any(|(a, b)| a.id != b.id || a.range != b.range)
        {
            return Ok(None);
        }
        let all: Vec<u32> = lplace.iter().map(|p| p.id).collect();
        let (Ok(lread), Ok(rread)) = (
            self.catalog.scan_parts_at(&ldef.name, &lplace, &all),
            self.catalog.scan_parts_at(&rdef.name, &rplace, &all),
        ) else {
            return Ok(None);
        };
        let chosen = lscan.parts().iter().chain(rscan.parts());
        if lread
            .iter()
            .zip(&rread)
            .any(|(a, b)| a.worker_id != b.worker_id)
            || chosen.into_iter().any(|p| {
                lread
                    .iter()
                    .find(|r| r.partition == p.partition)
                    .is_none_or(|r| r.worker_id != p.worker_id)
            })
        {
            return Ok(None);
        }
        // Both sides read the union of the partitions either kept: a
        // partition one side pruned still holds no row that side's
        // filter passes, so reading it is only wasted work. A side that is
        // already a paired join keeps its partitions; the other side's
        // must be among them.
        let (lfixed, rfixed) = (paired_parts(&left), paired_parts(join.right()));
        let parts: Vec<ScanPart> = match (&lfixed, &rfixed) {
            (Some(a), Some(b)) if ids(a) != ids(b) => return Ok(None),
            (Some(fixed), _) | (_, Some(fixed)) => {
                let kept = ids(fixed);
                let other = if lfixed.is_some() { &rscan } else { &lscan };
                if other.parts().iter().any(|p| !kept.contains(&p.partition)) {
                    return Ok(None);
                }
                fixed.clone()
            }
            (None, None) => {
                let mut union: BTreeMap<u32, ScanPart> = BTreeMap::new();
                for p in lscan.parts().iter().chain(rscan.parts()) {
                    union.entry(p.partition).or_insert_with(|| p.clone());
                }
                union.into_values().collect()
            }
        };
        let (Some(new_left), Some(new_right)) = (
            rebuild(&left, &parts, lkeys)?,
            rebuild(join.right(), &parts, rkeys)?,
        ) else {
            return Ok(None);
        };
        if !collected {
            return Ok(Some(replace_children_if_necessary(
                Arc::clone(plan),
                vec![new_left, new_right],
            )?));
        }
        Ok(Some(
            join.builder()
                .with_partition_mode(PartitionMode::Partitioned)
                .with_new_children(vec![new_left, new_right])?
                .reset_state()
                .recompute_properties()
                .build_exec()?,
        ))
    }

    /// A final aggregate over a hash repartition of a partial one, grouped
    /// by every partition key column of one table, with the repartition
    /// dropped and the table's partitions paired instead.
    fn local_aggregate(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(last) = plan.downcast_ref::<AggregateExec>() else {
            return Ok(None);
        };
        let Some(shuffle) = last.input().downcast_ref::<RepartitionExec>() else {
            return Ok(None);
        };
        // FinalPartitioned over Partial, or SinglePartitioned alone, over
        // the shuffle: `first` groups the rows of `source`.
        let (first, partial) = match last.mode() {
            AggregateMode::FinalPartitioned => {
                let Some(first) = shuffle.input().downcast_ref::<AggregateExec>() else {
                    return Ok(None);
                };
                if *first.mode() != AggregateMode::Partial {
                    return Ok(None);
                }
                (first, true)
            }
            AggregateMode::SinglePartitioned => (last, false),
            _ => return Ok(None),
        };
        let source = if partial {
            first.input()
        } else {
            shuffle.input()
        };
        if !first.group_expr().is_single() {
            return Ok(None);
        }
        // Each group key that is a table column, where it comes from. A
        // NULL padded in by an outer join could sit in any partition.
        let origins: Vec<(PartitionScanExec, String)> = first
            .group_expr()
            .expr()
            .iter()
            .filter_map(|(e, _)| origin(source, column_index(e)?, Padding::Refused))
            .collect();
        let Some((scan, _)) = origins.first().cloned() else {
            return Ok(None);
        };
        let Some(def) = self.catalog.table_def(scan.table())? else {
            return Ok(None);
        };
        let PartitionScheme::Hash {
            columns: keys,
            partitions,
            ..
        } = &def.scheme
        else {
            return Ok(None);
        };
        let grouped_by = |k: &String| origins.iter().any(|(s, c)| c == k && same_scan(s, &scan));
        if *partitions < 2 || !keys.iter().all(grouped_by) {
            return Ok(None);
        }
        let parts = paired_parts(source).unwrap_or_else(|| scan.parts().to_vec());
        let Some(input) = rebuild(source, &parts, keys)? else {
            return Ok(None);
        };
        let input = if partial {
            replace_children_if_necessary(Arc::clone(shuffle.input()), vec![input])?
        } else {
            input
        };
        Ok(Some(replace_children_if_necessary(
            Arc::clone(plan),
            vec![input],
        )?))
    }
}

impl PhysicalOptimizerRule for ColocateJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let settings = Settings {
            broadcast_threshold: config
                .extensions
                .get::<TesseraOptions>()
                .map_or(TesseraOptions::default().broadcast_threshold_bytes, |o| {
                    o.broadcast_threshold_bytes
                }),
            target_partitions: config.execution.target_partitions,
            config,
        };
        self.rewrite(plan, false, &settings)
    }

    fn name(&self) -> &str {
        "tessera_colocate_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
