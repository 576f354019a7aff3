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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn null_keys_slt() {
    run("null_keys.slt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ddl_validation_slt() {
    run("ddl_validation.slt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identifiers_slt() {
    run("identifiers.slt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn index_syntax_slt() {
    run("index_syntax.slt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ansi_slt() {
    run("ansi.slt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn float_index_slt() {
    run("float_index.slt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_slt() {
    run("limits.slt").await;
}
