//! What datafusion-distributed cannot know: where partitions live. The
//! worker resolver lists live workers; the three handlers size the stage of a
//! `PartitionScanExec` by the workers holding its kept partitions, give each
//! task the partitions of one owner, and route each task to that owner.
//!
//! ```text
//!  PartitionScanExec p0@w0 p3@w0 p5@w2        (kept partitions, by owner)
//!     desired tasks = 2 owners
//!     scale up → DistributedLeafExec [ task0: p0,p3 | task1: p5 ]
//!     route    → task0 → w0, task1 → w2
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::grpc::{BoxCloneSyncChannel, create_worker_client};
use datafusion_distributed::{
    ChannelResolver, DesiredTaskCountEvent, DesiredTaskCountEventResponse, DistributedLeafExec,
    NetworkBoundaryExt, RouteTasksEvent, RouteTasksEventResponse, ScaleUpLeafNodeEvent,
    ScaleUpLeafNodeEventResponse, WorkerChannel, WorkerResolver,
};
use tessera_worker::{PartitionScanExec, ScanPart};
use url::Url;

use crate::catalog::Catalog;

/// Lists the workers queries may use (not down, not decommissioned), from
/// the membership snapshot the coordinator keeps: never a metastore call.
#[derive(Debug)]
pub struct MembershipResolver {
    pub catalog: Arc<Catalog>,
}

impl WorkerResolver for MembershipResolver {
    fn get_urls(&self) -> Result<Vec<Url>> {
        self.catalog
            .membership()
            .serving_urls()?
            .values()
            .map(|u| parse_url(u))
            .collect()
    }
}

/// The coordinator's connections to workers (plans, feeds), made anew for
/// a URL once membership has changed since they were made: a connection to
/// a worker that restarted would fail the next plan it carries, and the
/// tasks waiting on that worker for their plan would wait out
/// datafusion-distributed's 10 s before failing.
pub struct MembershipChannels {
    pub catalog: Arc<Catalog>,
    /// The membership epoch each URL's shared channel was made at.
    made: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl MembershipChannels {
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Self {
            catalog,
            made: std::sync::Mutex::new(BTreeMap::new()),
        }
    }
}

#[async_trait::async_trait]
impl ChannelResolver for MembershipChannels {
    async fn get_worker_client_for_url(&self, url: &Url) -> Result<Box<dyn WorkerChannel>> {
        let epoch = self.catalog.membership_epoch();
        let fresh = {
            let mut made = self
                .made
                .lock()
                .map_err(|_| DataFusionError::Internal("channel cache poisoned".into()))?;
            made.insert(url.to_string(), epoch) != Some(epoch)
        };
        let channel = tessera_worker::shared_channel(url.as_str(), fresh)?;
        let channel = BoxCloneSyncChannel::new(tessera_worker::secret::member_channel(channel));
        Ok(create_worker_client(channel))
    }
}

fn parse_url(url: &str) -> Result<Url> {
    Url::parse(url)
        .map_err(|e| DataFusionError::Configuration(format!("bad worker url {url}: {e}")))
}

/// The kept partitions grouped by owner, in a stable order: by worker id,
/// which (unlike its URL's port) is the same on every run.
fn by_owner(parts: &[ScanPart]) -> Vec<Vec<ScanPart>> {
    let mut groups: BTreeMap<&str, Vec<ScanPart>> = BTreeMap::new();
    for p in parts {
        groups
            .entry(p.worker_id.as_str())
            .or_default()
            .push(p.clone());
    }
    groups.into_values().collect()
}

/// One task per worker that holds kept partitions. A scan of files (an
/// external table) reads the coordinator's own disk, which workers neither
/// see (on other machines) nor may read (their plan guard): one task, here.
pub fn desired_task_count(
    ev: DesiredTaskCountEvent,
) -> Option<Result<DesiredTaskCountEventResponse>> {
    if let Some(source) = ev.plan.downcast_ref::<DataSourceExec>()
        && source
            .data_source()
            .downcast_ref::<FileScanConfig>()
            .is_some()
    {
        return Some(Ok(DesiredTaskCountEventResponse::desired(1)));
    }
    let scan = ev.plan.downcast_ref::<PartitionScanExec>()?;
    let owners = by_owner(scan.parts()).len().max(1);
    Some(Ok(DesiredTaskCountEventResponse::desired(owners)))
}

/// Gives task i the partitions of owner i. With fewer tasks than owners,
/// owners share tasks (the task's scan then fetches the others' partitions
/// from them); with more, the extra tasks read nothing.
pub fn scale_up(ev: ScaleUpLeafNodeEvent) -> Option<Result<ScaleUpLeafNodeEventResponse>> {
    let scan = ev.plan.downcast_ref::<PartitionScanExec>()?;
    let tasks = ev.task_count.max(1);
    let mut per_task: Vec<Vec<ScanPart>> = vec![vec![]; tasks];
    for (i, group) in by_owner(scan.parts()).into_iter().enumerate() {
        per_task[i % tasks].extend(group);
    }
    let outputs = per_task.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let variants: Result<Vec<Arc<dyn ExecutionPlan>>> = per_task
        .into_iter()
        .map(|parts| {
            PartitionScanExec::try_new(scan.spec(), parts, outputs)
                .map(|s| Arc::new(s) as Arc<dyn ExecutionPlan>)
        })
        .collect();
    Some(variants.and_then(|v| {
        let leaf = DistributedLeafExec::try_new(Arc::clone(ev.plan), v)?;
        Ok(ScaleUpLeafNodeEventResponse::new(Arc::new(leaf)))
    }))
}

/// Sends each task of a stage holding a partition scan to the owner of the
/// partitions of that task.
pub fn route_tasks(ev: RouteTasksEvent) -> Option<Result<RouteTasksEventResponse>> {
    let mut owners: Option<Vec<Option<String>>> = None;
    let _ = ev.plan.apply(|node| {
        if node.is_network_boundary() {
            return Ok(TreeNodeRecursion::Jump);
        }
        if let Some(leaf) = node.downcast_ref::<DistributedLeafExec>()
            && leaf
                .original()
                .downcast_ref::<PartitionScanExec>()
                .is_some()
        {
            owners = Some(
                leaf.variants()
                    .iter()
                    .map(|v| {
                        v.downcast_ref::<PartitionScanExec>()
                            .and_then(|s| s.parts().first().map(|p| p.url.clone()))
                    })
                    .collect(),
            );
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let owners = owners?;
    if owners.len() != ev.task_count {
        return None;
    }
    // A task with nothing to read runs beside the first owner.
    let fallback = owners.iter().flatten().next().cloned()?;
    let urls: Result<Vec<Url>> = owners
        .into_iter()
        .map(|o| parse_url(o.as_ref().unwrap_or(&fallback)))
        .collect();
    Some(urls.map(RouteTasksEventResponse::new))
}
