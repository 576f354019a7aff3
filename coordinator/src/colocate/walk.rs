//! How the co-located join rule reads and rebuilds plans: what a plan's
//! scans are, whether operators keep partition i's rows in partition i,
//! and the paired scans a join is rebuilt on.

use std::sync::Arc;

use datafusion::common::{JoinType, Result};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{Distribution, Partitioning, PhysicalExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use tessera_worker::{PartitionScanExec, ScanPart};

use super::Settings;

/// Whether a column may come from the side of an outer join that pads
/// unmatched rows with NULLs.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Padding {
    /// Joins: a NULL key matches nothing, wherever it sits.
    Allowed,
    /// Groups: a NULL group must be in one partition.
    Refused,
}

/// A join that broadcasts (collects) a build side that is itself a join
/// over more than the threshold, turned into a partitioned join: both
/// sides hash-repartitioned on the keys.
pub(super) fn unbroadcast(
    plan: &Arc<dyn ExecutionPlan>,
    settings: &Settings,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(join) = plan.downcast_ref::<HashJoinExec>() else {
        return Ok(None);
    };
    if *join.partition_mode() != PartitionMode::CollectLeft
        || join.null_aware
        || !contains_join(join.left())
    {
        return Ok(None);
    }
    let Some(read) = bytes_read(join.left()) else {
        return Ok(None);
    };
    if read <= settings.broadcast_threshold {
        return Ok(None);
    }
    let mut build = Arc::clone(join.left());
    if build.downcast_ref::<CoalescePartitionsExec>().is_some() {
        build = Arc::clone(build.children()[0]);
    }
    let n = settings.target_partitions.max(1);
    let keys = |left: bool| -> Vec<Arc<dyn PhysicalExpr>> {
        join.on()
            .iter()
            .map(|(l, r)| Arc::clone(if left { l } else { r }))
            .collect()
    };
    let left = Arc::new(RepartitionExec::try_new(
        build,
        Partitioning::Hash(keys(true), n),
    )?);
    let right = Arc::new(RepartitionExec::try_new(
        Arc::clone(join.right()),
        Partitioning::Hash(keys(false), n),
    )?);
    let partitioned = join
        .builder()
        .with_partition_mode(PartitionMode::Partitioned)
        .with_new_children(vec![left, right])?
        .reset_state()
        .recompute_properties()
        .build_exec()?;
    Ok(Some(partitioned))
}

pub(super) fn contains_join(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<HashJoinExec>().is_some() || plan.children().into_iter().any(contains_join)
}

/// The estimated bytes of every scan under `plan`, if all can say.
pub(super) fn bytes_read(plan: &Arc<dyn ExecutionPlan>) -> Option<u64> {
    if let Some(scan) = plan.downcast_ref::<PartitionScanExec>() {
        return scan.estimated_size().map(|(_, bytes)| bytes);
    }
    let children = plan.children();
    if children.is_empty() {
        return None;
    }
    children
        .into_iter()
        .map(bytes_read)
        .try_fold(0u64, |sum, b| Some(sum.saturating_add(b?)))
}

#[allow(deprecated)] // HashPartitioned is KeyPartitioned's old name.
pub(super) fn is_key_partitioned(d: &Distribution) -> bool {
    matches!(
        d,
        Distribution::KeyPartitioned(_) | Distribution::HashPartitioned(_)
    )
}

/// Operators that keep their input's partitioning as it is.
pub(super) fn is_pass_through(plan: &dyn ExecutionPlan) -> bool {
    plan.downcast_ref::<ProjectionExec>().is_some() || plan.downcast_ref::<FilterExec>().is_some()
}

pub(super) fn column_index(expr: &Arc<dyn PhysicalExpr>) -> Option<usize> {
    expr.downcast_ref::<Column>().map(Column::index)
}

pub(super) fn same_scan(a: &PartitionScanExec, b: &PartitionScanExec) -> bool {
    a.table() == b.table() && ids(a.parts()) == ids(b.parts())
}

pub(super) fn ids(parts: &[ScanPart]) -> Vec<u32> {
    parts.iter().map(|p| p.partition).collect()
}

/// Which child of a join output column `index` comes from, and its index
/// there. Only through joins that keep partition i's rows in partition i:
/// the probe side of a broadcast join, or a join already paired.
pub(super) fn through_join(
    plan: &Arc<dyn ExecutionPlan>,
    join: &HashJoinExec,
    index: usize,
    padding: Padding,
) -> Option<(usize, usize)> {
    let index = match &join.projection {
        Some(p) => *p.get(index)?,
        None => index,
    };
    let left_len = join.left().schema().fields().len();
    let (child, at) = match join.join_type() {
        JoinType::Inner | JoinType::Left | JoinType::Right => {
            if index < left_len {
                (0, index)
            } else {
                (1, index - left_len)
            }
        }
        JoinType::LeftSemi | JoinType::LeftAnti => (0, index),
        JoinType::RightSemi | JoinType::RightAnti => (1, index),
        _ => return None,
    };
    let padded = match join.join_type() {
        JoinType::Left => child == 1,
        JoinType::Right => child == 0,
        _ => false,
    };
    if padded && padding == Padding::Refused {
        return None;
    }
    let ok = match join.partition_mode() {
        PartitionMode::CollectLeft => {
            child == 1
                && matches!(
                    join.join_type(),
                    JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
                )
        }
        PartitionMode::Partitioned => paired_parts(plan).is_some(),
        PartitionMode::Auto => false,
    };
    ok.then_some((child, at))
}

/// The scan and table column that output column `index` of `plan` reads,
/// following it down through operators that keep partitions apart.
pub(super) fn origin(
    plan: &Arc<dyn ExecutionPlan>,
    index: usize,
    padding: Padding,
) -> Option<(PartitionScanExec, String)> {
    if let Some(scan) = plan.downcast_ref::<PartitionScanExec>() {
        let field = scan.schema().fields().get(index)?.clone();
        return Some((scan.clone(), field.name().clone()));
    }
    if plan.downcast_ref::<RepartitionExec>().is_some() {
        return origin(plan.children()[0], index, padding);
    }
    if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        let inner = p.expr().get(index)?.expr.downcast_ref::<Column>()?.index();
        return origin(p.input(), inner, padding);
    }
    if let Some(f) = plan.downcast_ref::<FilterExec>() {
        let inner = match f.projection() {
            Some(projection) => *projection.get(index)?,
            None => index,
        };
        return origin(f.input(), inner, padding);
    }
    if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
        let (child, at) = through_join(plan, join, index, padding)?;
        return origin(plan.children()[child], at, padding);
    }
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
        // A group key of an aggregate that runs where its partitions lie.
        paired_parts(plan)?;
        let (key, _) = aggregate.group_expr().expr().get(index)?;
        return origin(aggregate.input(), column_index(key)?, padding);
    }
    None
}

/// The partitions of an already paired join (or a co-located scan), if
/// `plan` is one with no repartitioning inside.
pub(super) fn paired_parts(plan: &Arc<dyn ExecutionPlan>) -> Option<Vec<ScanPart>> {
    if let Some(scan) = plan.downcast_ref::<PartitionScanExec>() {
        return scan
            .spec()
            .colocated_on
            .is_some()
            .then(|| scan.parts().to_vec());
    }
    if is_pass_through(plan.as_ref()) {
        return paired_parts(plan.children()[0]);
    }
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
        let per_partition = matches!(
            aggregate.mode(),
            AggregateMode::Partial
                | AggregateMode::FinalPartitioned
                | AggregateMode::SinglePartitioned
        );
        return if per_partition && aggregate.group_expr().is_single() {
            paired_parts(aggregate.input())
        } else {
            None
        };
    }
    let join = plan.downcast_ref::<HashJoinExec>()?;
    match join.partition_mode() {
        PartitionMode::CollectLeft => paired_parts(join.right()),
        PartitionMode::Partitioned => {
            let (l, r) = (paired_parts(join.left())?, paired_parts(join.right())?);
            (ids(&l) == ids(&r)).then_some(l)
        }
        PartitionMode::Auto => None,
    }
}

/// `plan` with its repartitioning removed and its scan reading `parts`,
/// output partition i = parts[i], declared partitioned on the table's
/// `keys`; a paired join is kept as it is. `None` if `plan` has an
/// operator that mixes partitions.
pub(super) fn rebuild(
    plan: &Arc<dyn ExecutionPlan>,
    parts: &[ScanPart],
    keys: &[String],
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    if let Some(scan) = plan.downcast_ref::<PartitionScanExec>() {
        if scan.spec().colocated_on.is_some() {
            return Ok((ids(scan.parts()) == ids(parts)).then(|| Arc::clone(plan)));
        }
        let schema = scan.schema();
        let mut exprs = vec![];
        for k in keys {
            let Ok(index) = schema.index_of(k) else {
                return Ok(None);
            };
            exprs.push(Arc::new(Column::new(k, index)) as Arc<dyn PhysicalExpr>);
        }
        let mut spec = scan.spec();
        spec.colocated_on = Some(exprs);
        spec.kept_partitions = parts.len() as u32;
        return Ok(Some(Arc::new(PartitionScanExec::try_new(
            spec,
            parts.to_vec(),
            parts.len(),
        )?)));
    }
    if plan.downcast_ref::<RepartitionExec>().is_some() {
        return rebuild(plan.children()[0], parts, keys);
    }
    if is_pass_through(plan.as_ref()) {
        let Some(child) = rebuild(plan.children()[0], parts, keys)? else {
            return Ok(None);
        };
        return Ok(Some(replace_children_if_necessary(
            Arc::clone(plan),
            vec![child],
        )?));
    }
    // An aggregate or partitioned join is kept if already paired.
    let paired_on_parts = || {
        paired_parts(plan)
            .is_some_and(|p| ids(&p) == ids(parts))
            .then(|| Arc::clone(plan))
    };
    if plan.downcast_ref::<AggregateExec>().is_some() {
        return Ok(paired_on_parts());
    }
    let Some(join) = plan.downcast_ref::<HashJoinExec>() else {
        return Ok(None);
    };
    match join.partition_mode() {
        PartitionMode::CollectLeft => {
            let Some(probe) = rebuild(join.right(), parts, keys)? else {
                return Ok(None);
            };
            Ok(Some(replace_children_if_necessary(
                Arc::clone(plan),
                vec![Arc::clone(join.left()), probe],
            )?))
        }
        PartitionMode::Partitioned => Ok(paired_on_parts()),
        PartitionMode::Auto => Ok(None),
    }
}
