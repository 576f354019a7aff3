//! What a worker runs of a plan it is sent: only what a query task needs.
//! A plan node that writes files (DataFusion's sinks: `COPY`, `INSERT`
//! into a listing table) or scans files outside the worker's data dir is
//! refused before the task is registered, whoever sent it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::{WorkerPlanRewriteEvent, WorkerPlanRewriteEventResponse};

use crate::kind::ErrorKind;

/// Refuses `plan` if it writes files, or reads files outside `root`.
pub fn check_plan(plan: &Arc<dyn ExecutionPlan>, root: &Path) -> Result<()> {
    plan.apply(|node| {
        if node.downcast_ref::<DataSinkExec>().is_some() {
            return Err(ErrorKind::PermissionDenied.error(format!(
                "a worker does not run plans that write files ({}); write through the \
                 coordinator (INSERT INTO a Tessera table)",
                node.name()
            )));
        }
        if let Some(source) = node.downcast_ref::<DataSourceExec>()
            && let Some(files) = source.data_source().downcast_ref::<FileScanConfig>()
        {
            for group in &files.file_groups {
                for file in group.iter() {
                    let path = PathBuf::from(format!("/{}", file.object_meta.location));
                    if files.object_store_url.as_str() != "file:///" || !path.starts_with(root) {
                        return Err(ErrorKind::PermissionDenied.error(format!(
                            "a worker reads only the files in its data dir ({}), not {}{}",
                            root.display(),
                            files.object_store_url.as_str(),
                            file.object_meta.location
                        )));
                    }
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map(|_| ())
}

/// The guard as a datafusion-distributed worker plan hook.
pub fn plan_guard(
    root: PathBuf,
) -> impl for<'a> Fn(WorkerPlanRewriteEvent<'a>) -> Result<WorkerPlanRewriteEventResponse>
+ Send
+ Sync
+ 'static {
    move |ev: WorkerPlanRewriteEvent<'_>| {
        check_plan(&ev.plan, &root)?;
        Ok(WorkerPlanRewriteEventResponse::new(ev.plan))
    }
}
