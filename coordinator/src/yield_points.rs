//! Puts a yield point under the probe side of every nested-loop and cross
//! join, so that a cancelled query stops them promptly and they share their
//! thread (see `tessera_worker::YieldingSliceExec` for why they need one).

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{CrossJoinExec, NestedLoopJoinExec};
use tessera_worker::YieldingSliceExec;

#[derive(Debug, Default)]
pub struct YieldPoints;

impl PhysicalOptimizerRule for YieldPoints {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let loops = node.downcast_ref::<NestedLoopJoinExec>().is_some()
                || node.downcast_ref::<CrossJoinExec>().is_some();
            let children = node.children();
            let [build, probe] = children.as_slice() else {
                return Ok(Transformed::no(node));
            };
            if !loops || probe.downcast_ref::<YieldingSliceExec>().is_some() {
                return Ok(Transformed::no(node));
            }
            let probe: Arc<dyn ExecutionPlan> = Arc::new(YieldingSliceExec::new(Arc::clone(probe)));
            let build = Arc::clone(build);
            Ok(Transformed::yes(replace_children_if_necessary(
                node,
                vec![build, probe],
            )?))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "tessera_yield_points"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
