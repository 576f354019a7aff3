//! Runs every `.slt` file under `tests/slt/` through Flight SQL against a
//! fresh 3-worker cluster.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use tessera_tests::{TestCluster, run_slt_file};

async fn run(name: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("slt")
        .join(name);
    let cluster = TestCluster::builder().workers(3).start().await;
    run_slt_file(cluster, &path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hash_slt() {
    run("hash.slt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn range_hybrid_slt() {
    run("range_hybrid.slt").await;
}
