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
                    let location = file.object_meta.location.as_ref();
                    if files.object_store_url.as_str() != "file:///" || !inside(root, location) {
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

/// Whether the local file at object store path `location` lies inside
/// `root`: judged on the path as it will be opened (escapes such as `%2E`
/// refused outright, then both sides canonicalized, symbolic links
/// resolved).
fn inside(root: &Path, location: &str) -> bool {
    if location.contains('%') || location.split('/').any(|p| p == ".." || p == ".") {
        return false;
    }
    let path = PathBuf::from(format!("/{location}"));
    match (path.canonicalize(), root.canonicalize()) {
        (Ok(path), Ok(root)) => path.starts_with(root),
        _ => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_really_inside_the_root_pass() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("t1").join("p0.parquet");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"x").unwrap();
        let rel = |p: &Path| p.to_str().unwrap().trim_start_matches('/').to_string();
        assert!(inside(root.path(), &rel(&file)));
        let escape = format!("{}/t1/%2E%2E/%2E%2E/etc/passwd", rel(root.path()));
        assert!(!inside(root.path(), &escape));
        let dots = format!("{}/t1/../../etc/passwd", rel(root.path()));
        assert!(!inside(root.path(), &dots));
        assert!(!inside(root.path(), "etc/passwd"));
        // A link inside the root to a file outside it.
        let link = root.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        assert!(!inside(root.path(), &rel(&link)));
    }
}
