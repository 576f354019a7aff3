//! Members only: a worker runs nothing for a process without the cluster's
//! secret, and runs no plan that reads files outside its data dir, even
//! from a member. The plans are real datafusion-distributed plans sent
//! over the wire to the cluster's real workers.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use datafusion_distributed::grpc::{BoxCloneSyncChannel, create_worker_client};
use datafusion_distributed::{
    ChannelResolver, DistributedExt, SessionStateBuilderExt, WorkerChannel, WorkerResolver,
};
use tessera_tests::TestCluster;
use url::Url;

#[derive(Debug)]
struct Fixed(Vec<Url>);

impl WorkerResolver for Fixed {
    fn get_urls(&self) -> Result<Vec<Url>> {
        Ok(self.0.clone())
    }
}

/// Channels as a process outside the cluster has them: no secret.
struct Stranger;

#[async_trait::async_trait]
impl ChannelResolver for Stranger {
    async fn get_worker_client_for_url(&self, url: &Url) -> Result<Box<dyn WorkerChannel>> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .unwrap()
            .connect_lazy();
        Ok(create_worker_client(BoxCloneSyncChannel::new(channel)))
    }
}

/// Scans Parquet files in `dir` (outside every worker's data dir) as a
/// distributed query whose scan tasks go to the cluster's workers.
async fn distributed_scan(
    workers: Vec<Url>,
    channels: Arc<dyn ChannelResolver + Send + Sync>,
    dir: &std::path::Path,
) -> Result<usize> {
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_distributed_worker_resolver(Fixed(workers))
        .with_distributed_channel_resolver(channels)
        .with_distributed_planner()
        .build();
    let ctx = SessionContext::new_with_state(state);
    ctx.sql("SET distributed.file_scan_config_bytes_per_partition = 1")
        .await?
        .collect()
        .await?;
    ctx.register_parquet("ext", dir.to_str().unwrap(), ParquetReadOptions::default())
        .await?;
    let batches = ctx
        .sql("SELECT k % 7 AS g, count(*) FROM ext GROUP BY g")
        .await?
        .collect()
        .await?;
    Ok(batches.iter().map(|b| b.num_rows()).sum())
}

fn text(e: &DataFusionError) -> String {
    format!("{e:?} {e}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_refuse_strangers_and_plans_reading_other_files() {
    let cluster = TestCluster::builder().workers(2).start().await;
    let workers: Vec<Url> = cluster
        .cluster()
        .workers
        .iter()
        .map(|w| Url::parse(&w.url).unwrap())
        .collect();

    // Four Parquet files in a directory of the test's own.
    let dir = tempfile::tempdir().unwrap();
    let local = SessionContext::new();
    for i in 0..4 {
        local
            .sql(&format!(
                "COPY (SELECT value AS k FROM range({}, {})) TO '{}/f{i}.parquet'",
                i * 1000,
                (i + 1) * 1000,
                dir.path().display()
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
    }

    // Without the secret: refused before anything runs.
    let e = distributed_scan(workers.clone(), Arc::new(Stranger), dir.path())
        .await
        .unwrap_err();
    assert!(
        text(&e).contains("does not carry this cluster's secret"),
        "{}",
        text(&e)
    );

    // With it (this process is a member): the plan itself is refused, as
    // it reads files that are not the worker's.
    let e = distributed_scan(workers, Arc::new(tessera_worker::PeerChannels), dir.path())
        .await
        .unwrap_err();
    assert!(
        text(&e).contains("reads only the files in its data dir"),
        "{}",
        text(&e)
    );

    // The cluster itself goes on answering.
    cluster
        .query("CREATE TABLE t (k BIGINT) PARTITION BY HASH (k) PARTITIONS 4")
        .await
        .unwrap();
    cluster
        .query("INSERT INTO t SELECT value FROM range(100)")
        .await
        .unwrap();
    let n = tessera_tests::single_i64(&cluster.query("SELECT count(*) FROM t").await.unwrap());
    assert_eq!(n, 100);
    // Refused tasks leave nothing behind that would hold a clean stop.
    tokio::time::timeout(std::time::Duration::from_secs(30), cluster.stop())
        .await
        .expect("the cluster stops after refusing plans");
}

/// A plan that writes files is refused whatever it writes.
#[tokio::test]
async fn plans_with_file_sinks_are_refused() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let plan = ctx
        .sql(&format!(
            "COPY (SELECT 1 AS k) TO '{}/out.parquet'",
            dir.path().display()
        ))
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let e = tessera_worker::check_plan(&plan, dir.path()).unwrap_err();
    assert!(
        e.to_string()
            .contains("does not run plans that write files"),
        "{e}"
    );
    let scan = ctx
        .sql("SELECT 1 AS k")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    tessera_worker::check_plan(&scan, dir.path()).unwrap();
}
