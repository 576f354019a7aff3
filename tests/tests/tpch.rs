//! TPC-H differential test: the 22 queries at SF 0.01 on a 3-worker cluster
//! return the rows single-process DataFusion returns on the same data, with
//! 8, 1 and 13 partitions per table and with broadcast joins turned off;
//! with 8 partitions and the broadcast threshold scaled to the data, the
//! distributed plans of Q1, Q3, Q5 and Q18 are snapshots
//! (`tests/tests/snapshots/`; review changes with `cargo insta review`).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};

use arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use tessera_datasets::{TpchTable, load_tpch, tpch_query};
use tessera_tests::{TestCluster, compare_rows, plan_text};

const SF: f64 = 0.01;

/// Single-process DataFusion's answer to each query, computed once.
fn expected() -> &'static Vec<Vec<RecordBatch>> {
    static EXPECTED: OnceLock<Vec<Vec<RecordBatch>>> = OnceLock::new();
    EXPECTED.get_or_init(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let ctx = SessionContext::new();
                for t in TpchTable::ALL {
                    let batches: Vec<RecordBatch> =
                        t.generate(SF).collect::<Result<_, _>>().unwrap();
                    let mem = MemTable::try_new(t.schema(), vec![batches]).unwrap();
                    ctx.register_table(t.name(), Arc::new(mem)).unwrap();
                }
                let mut out = vec![];
                for n in 1..=22 {
                    let sql = tpch_query(n).unwrap();
                    out.push(ctx.sql(sql).await.unwrap().collect().await.unwrap());
                }
                out
            })
        })
        .join()
        .unwrap()
    })
}

/// The plan text with what changes from run to run (loopback ports) masked.
fn redact(plan: &str) -> String {
    let mut out = String::new();
    let mut rest = plan;
    while let Some(i) = rest.find("127.0.0.1:") {
        out.push_str(&rest[..i + "127.0.0.1:".len()]);
        rest = rest[i + "127.0.0.1:".len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push_str("PORT");
    }
    out.push_str(rest);
    out
}

/// Queries whose distributed plans are kept as snapshots: a scan with an
/// aggregate (Q1), co-located and broadcast joins (Q3, Q5), and a join on
/// a grouped subquery (Q18).
const SNAPSHOT_QUERIES: [usize; 4] = [1, 3, 5, 18];

/// The default broadcast threshold (16 MiB) scaled to SF 0.01, so plans
/// have the shapes they have at SF 1.
const SCALED_THRESHOLD: &str = "SET tessera.broadcast_threshold_bytes = 163840";

async fn check(partitions: u32, setup: &[&str]) {
    let cluster = TestCluster::builder().workers(3).start().await;
    let mut client = cluster.client().await;
    load_tpch(&mut client, SF, partitions, |_, _| {})
        .await
        .unwrap();
    for s in setup {
        cluster.query(s).await.unwrap();
    }
    if partitions == 8 && setup == [SCALED_THRESHOLD] {
        for n in SNAPSHOT_QUERIES {
            let sql = format!("EXPLAIN {}", tpch_query(n).unwrap());
            let plan = plan_text(&cluster.query(&sql).await.unwrap());
            insta::assert_snapshot!(format!("tpch_q{n:02}_distributed_plan"), redact(&plan));
        }
    }
    let expected = expected();
    let mut failures = vec![];
    for n in 1..=22 {
        let sql = tpch_query(n).unwrap();
        match cluster.query(sql).await {
            Ok(actual) => {
                if let Err(e) = compare_rows(&actual, &expected[n - 1], 1e-9) {
                    failures.push(format!("Q{n}: {e}"));
                }
            }
            Err(e) => failures.push(format!("Q{n} failed: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{partitions} partitions, setup {setup:?}:\n{}",
        failures.join("\n")
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_8_partitions() {
    check(8, &[SCALED_THRESHOLD]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_1_partition() {
    check(1, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_13_partitions() {
    check(13, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_without_broadcast() {
    check(8, &["SET tessera.broadcast_threshold_bytes = 0"]).await;
}
