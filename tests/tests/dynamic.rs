//! REBALANCE DYNAMIC and PROPORTIONAL while reads and writes go on, with
//! `tessera.auto_rebalance` on. Writers append batches with time-ordered
//! keys to a RANGE table (REBALANCE DYNAMIC, a small split size, a LOCAL
//! index) and to a HASH table of two partitions (REBALANCE PROPORTIONAL
//! PER WORKER 2, with a GLOBAL SYNC index), readers scan both and look
//! batches up through the indexes.
//! The RANGE table must split as it grows and its partitions spread over
//! the three workers; the HASH table must end with two partitions on each
//! worker. No read may fail or see a batch half or twice; every batch
//! acknowledged before a read began is in it; at the end every batch is
//! there once, the index agrees with the scan, nothing is left to plan,
//! and all of it holds again after a restart. Seeded: `TESSERA_SEED=n`
//! repeats a run.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{UInt32Type, UInt64Type};
use tessera_datasets::Rng;
use tessera_tests::batches::{Ledger, groups, seed};
use tessera_tests::{TestCluster, query_url};

const WRITERS: u64 = 2;
const BATCHES: u64 = 80;
/// The RANGE table splits past this many bytes.
const SPLIT_BYTES: u64 = 6_000;
const TABLES: [&str; 2] = ["ts", "p"];

/// Rows of batch b, and the sum of their keys (`b * 100 + i`: keys grow
/// with the batch number, as time-ordered keys do).
fn batch_shape(b: u64) -> (i64, i64) {
    let rows = 10 + (Rng(b).next_u64() % 30) as i64;
    (rows, (0..rows).map(|i| b as i64 * 100 + i).sum())
}

fn insert_sql(table: &str, b: u64) -> String {
    let (rows, _) = batch_shape(b);
    let values: Vec<String> = (0..rows)
        .map(|i| {
            let k = b as i64 * 100 + i;
            format!("({k}, {b}, 'row {k} of batch {b}, padded to make the partition grow')")
        })
        .collect();
    format!("INSERT INTO {table} VALUES {}", values.join(", "))
}

#[derive(Default)]
struct Shared {
    ledger: Ledger,
    next: AtomicU64,
    reads: AtomicU64,
    writers_done: AtomicBool,
}

impl std::ops::Deref for Shared {
    type Target = Ledger;

    fn deref(&self) -> &Ledger {
        &self.ledger
    }
}

async fn writer(url: String, shared: Arc<Shared>) {
    loop {
        let b = shared.next.fetch_add(1, Ordering::SeqCst);
        if b >= BATCHES {
            return;
        }
        shared.start(b);
        for table in TABLES {
            match query_url(&url, &insert_sql(table, b)).await {
                Ok(_) => shared.ack(table, b),
                Err(e) => shared.violation(format!("insert of batch {b} into {table} failed: {e}")),
            }
        }
    }
}

async fn reader(url: String, shared: Arc<Shared>, seed: u64) {
    let mut rng = Rng(seed);
    while !shared.writers_done.load(Ordering::SeqCst) {
        for table in TABLES {
            let before = shared.acked(table);
            let sql = format!("SELECT b, count(*), sum(k) FROM {table} GROUP BY b");
            match query_url(&url, &sql).await {
                Ok(rows) => {
                    let what = format!("scan of {table}");
                    shared.check(&what, &groups(&rows), &before, batch_shape);
                }
                Err(e) => shared.violation(format!("scan of {table} failed: {e}")),
            }
        }
        for (table, kind) in [("ts", "LOCAL"), ("p", "GLOBAL SYNC")] {
            let acked: Vec<u64> = shared.acked(table).into_iter().collect();
            if acked.is_empty() {
                continue;
            }
            let b = acked[rng.below(acked.len() as u64) as usize];
            let sql = format!("SELECT b, count(*), sum(k) FROM {table} WHERE b = {b} GROUP BY b");
            match query_url(&url, &sql).await {
                Ok(rows) => {
                    let only = [b].into();
                    let what = format!("{kind} index lookup");
                    shared.check(&what, &groups(&rows), &only, batch_shape);
                }
                Err(e) => shared.violation(format!("lookup of batch {b} in {table} failed: {e}")),
            }
        }
        shared.reads.fetch_add(1, Ordering::SeqCst);
    }
}

/// `SHOW PARTITIONS table`: (partition, leader, bytes) in key order.
async fn partitions(url: &str, table: &str) -> Vec<(u32, String, u64)> {
    let shown = query_url(url, &format!("SHOW PARTITIONS {table}"))
        .await
        .unwrap();
    let mut out = vec![];
    for b in &shown {
        let ids = b.column(0).as_primitive::<UInt32Type>();
        let leaders = b.column(2).as_string::<i32>();
        let bytes = b.column(7).as_primitive::<UInt64Type>();
        for i in 0..b.num_rows() {
            let size = if bytes.is_null(i) { 0 } else { bytes.value(i) };
            out.push((ids.value(i), leaders.value(i).to_string(), size));
        }
    }
    out
}

/// The operations `EXPLAIN REBALANCE` plans (the total row left out).
async fn planned(url: &str) -> Vec<String> {
    let plan: Vec<RecordBatch> = query_url(url, "EXPLAIN REBALANCE").await.unwrap();
    let mut ops = vec![];
    for b in &plan {
        let op = b.column(3).as_string::<i32>();
        for i in 0..b.num_rows() {
            if op.value(i) != "total" {
                ops.push(op.value(i).to_string());
            }
        }
    }
    ops
}

/// Whether a rebalance is running (a step of `SHOW REBALANCE` pending or
/// running).
async fn rebalancing(url: &str) -> bool {
    let shown = query_url(url, "SHOW REBALANCE").await.unwrap();
    shown.iter().any(|b| {
        let states = b.column_by_name("state").unwrap().as_string::<i32>();
        (0..b.num_rows()).any(|i| matches!(states.value(i), "pending" | "running"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamic_and_proportional_tables_under_load() {
    let seed = seed();
    let mut rng = Rng(seed);
    let cluster = TestCluster::builder().workers(3).start().await;
    cluster
        .run_all(&[
            &format!(
                "CREATE TABLE ts (k BIGINT, b BIGINT, pad VARCHAR) PARTITION BY RANGE (k) \
                 REBALANCE DYNAMIC SPLIT SIZE '{SPLIT_BYTES}' MERGE SIZE '1KB'"
            ),
            "CREATE INDEX by_b ON ts (b) LOCAL",
            "CREATE TABLE p (k BIGINT, b BIGINT, pad VARCHAR) PARTITION BY HASH (k) PARTITIONS 2 \
             REBALANCE PROPORTIONAL PER WORKER 2",
            "CREATE INDEX by_pb ON p (b) GLOBAL SYNC PARTITIONS 2",
            "SET tessera.auto_rebalance = 'on'",
        ])
        .await;
    let url = cluster.url();
    let shown = cluster.query("SHOW TABLES").await.unwrap();
    let strategies: Vec<String> = shown
        .iter()
        .flat_map(|b| {
            let s = b.column_by_name("rebalance").unwrap().as_string::<i32>();
            (0..b.num_rows())
                .map(|i| s.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        strategies,
        [
            "PROPORTIONAL PER WORKER 2",
            "DYNAMIC SPLIT SIZE '6KB' MERGE SIZE '1KB'"
        ]
    );

    let shared = Arc::new(Shared::default());
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| tokio::spawn(writer(url.clone(), Arc::clone(&shared))))
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(reader(url.clone(), Arc::clone(&shared), rng.next_u64())))
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    shared.writers_done.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }

    // The automatic rebalance settles: nothing running, nothing planned.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if !rebalancing(&url).await && planned(&url).await.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the rebalance did not settle: {:?}",
            planned(&url).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let ts = partitions(&url, "ts").await;
    let p = partitions(&url, "p").await;
    let spread = |parts: &[(u32, String, u64)]| {
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for (_, w, _) in parts {
            *per.entry(w.clone()).or_default() += 1;
        }
        per
    };
    println!(
        "{} reads; ts: {} partitions {:?} by worker {:?}; p: {:?}",
        shared.reads.load(Ordering::SeqCst),
        ts.len(),
        ts.iter().map(|(_, _, b)| *b).collect::<Vec<_>>(),
        spread(&ts),
        spread(&p)
    );
    assert!(
        ts.len() >= 3,
        "seed {seed}: ts did not split as it grew: {ts:?}"
    );
    assert_eq!(
        spread(&ts).len(),
        3,
        "seed {seed}: ts is not on every worker: {ts:?}"
    );
    assert!(
        ts.iter().all(|(_, _, b)| *b <= SPLIT_BYTES),
        "seed {seed}: a partition of ts is past its split size: {ts:?}"
    );
    assert_eq!(
        p.len(),
        6,
        "seed {seed}: p has 2 partitions per worker: {p:?}"
    );
    assert!(spread(&p).values().all(|n| *n == 2), "seed {seed}: {p:?}");

    let mut scans = BTreeMap::new();
    for table in TABLES {
        let sql = format!("SELECT b, count(*), sum(k) FROM {table} GROUP BY b");
        let scan = groups(&cluster.query(&sql).await.unwrap());
        shared.check_final(table, &scan, batch_shape);
        scans.insert(table, scan);
    }
    for (table, kind) in [("ts", "LOCAL"), ("p", "GLOBAL SYNC")] {
        let ids: Vec<String> = shared.acked(table).iter().map(u64::to_string).collect();
        let sql = format!(
            "SELECT b, count(*), sum(k) FROM {table} WHERE b IN ({}) GROUP BY b",
            ids.join(", ")
        );
        let looked_up = groups(&cluster.query(&sql).await.unwrap());
        if looked_up != scans[table] {
            shared.violation(format!(
                "the {kind} index of {table} disagrees with the scan"
            ));
        }
    }
    shared.assert_none(seed);

    // Durable: the same rows and partitions after a restart.
    let cluster = cluster.restart().await;
    for table in TABLES {
        let sql = format!("SELECT b, count(*), sum(k) FROM {table} GROUP BY b");
        let again = groups(&cluster.query(&sql).await.unwrap());
        assert_eq!(
            again, scans[table],
            "seed {seed}: {table} changed across a restart"
        );
    }
    let url = cluster.url();
    assert_eq!(partitions(&url, "ts").await.len(), ts.len());
    assert_eq!(partitions(&url, "p").await.len(), 6);
    cluster.stop().await;
}

/// What `SET REBALANCE` refuses, and what `EXPLAIN REBALANCE` shows of a
/// split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_rebalance_and_explain() {
    let cluster = TestCluster::builder().workers(2).start().await;
    cluster
        .run_all(&[
            "CREATE TABLE s (k BIGINT)",
            "CREATE TABLE r (k BIGINT, v VARCHAR) PARTITION BY RANGE (k) SPLIT AT (1000)",
            "INSERT INTO r SELECT value, 'v' || CAST(value AS VARCHAR) FROM range(2000)",
        ])
        .await;
    let err = |sql: &'static str| async { cluster.query(sql).await.unwrap_err() };
    assert!(
        err("ALTER TABLE s SET REBALANCE DYNAMIC")
            .await
            .contains("no PARTITION BY")
    );
    assert!(
        err("ALTER TABLE r SET REBALANCE PROPORTIONAL")
            .await
            .contains("range-partitioned")
    );
    assert!(
        err("CREATE TABLE x (k BIGINT) PARTITION BY RANGE (k) REBALANCE PROPORTIONAL")
            .await
            .contains("range-partitioned")
    );
    assert!(
        err("ALTER TABLE nope SET REBALANCE FIXED")
            .await
            .contains("nope")
    );
    // FIXED plans nothing; DYNAMIC with a split size under the partitions'
    // sizes plans a split of each into the next ids.
    let url = cluster.url();
    assert!(planned(&url).await.is_empty());
    cluster
        .query("ALTER TABLE r SET REBALANCE DYNAMIC SPLIT SIZE '1KB' MERGE SIZE '100B'")
        .await
        .unwrap();
    let plan = cluster.query("EXPLAIN REBALANCE r").await.unwrap();
    let b = &plan[0];
    let op = b.column_by_name("operation").unwrap().as_string::<i32>();
    let made = b
        .column_by_name("new_partitions")
        .unwrap()
        .as_string::<i32>();
    let splits: Vec<(String, String)> = (0..b.num_rows())
        .filter(|i| op.value(*i) == "split")
        .map(|i| (op.value(i).to_string(), made.value(i).to_string()))
        .collect();
    assert_eq!(
        splits,
        [
            ("split".into(), "2, 3".into()),
            ("split".into(), "4, 5".into())
        ]
    );
    assert_eq!(
        partitions(&url, "r").await.len(),
        2,
        "EXPLAIN changed nothing"
    );
    cluster.query("REBALANCE APPLY r").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rebalancing(&url).await {
        assert!(Instant::now() < deadline, "the rebalance did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<u32> = partitions(&url, "r").await.iter().map(|p| p.0).collect();
    assert_eq!(ids, [2, 3, 4, 5]);
    let n = cluster.query("SELECT count(*) FROM r").await.unwrap();
    assert_eq!(tessera_tests::single_i64(&n), 2000);
    cluster
        .query("ALTER TABLE r SET REBALANCE FIXED")
        .await
        .unwrap();
    assert!(planned(&url).await.is_empty());

    // One key only: the planned split fails, and the partition is then
    // left whole (not planned again until it has doubled).
    cluster
        .run_all(&[
            "CREATE TABLE one (k BIGINT, v VARCHAR) PARTITION BY RANGE (k) REBALANCE DYNAMIC \
             SPLIT SIZE '1KB' MERGE SIZE '100B'",
            "INSERT INTO one SELECT 7, 'v' || CAST(value AS VARCHAR) FROM range(2000)",
        ])
        .await;
    // The split, then a move of a half to the other worker.
    assert_eq!(planned(&url).await, ["split", "move"]);
    cluster.query("REBALANCE APPLY one").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rebalancing(&url).await {
        assert!(Instant::now() < deadline, "the rebalance did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = cluster.query("SHOW REBALANCE").await.unwrap();
    let state = shown[0]
        .column_by_name("state")
        .unwrap()
        .as_string::<i32>()
        .value(0)
        .to_string();
    assert!(
        state.starts_with("failed") && state.contains("fewer than two distinct keys"),
        "{state}"
    );
    let moved = shown[0]
        .column_by_name("state")
        .unwrap()
        .as_string::<i32>()
        .value(1)
        .to_string();
    assert!(
        moved.starts_with("skipped"),
        "the half was never made: {moved}"
    );
    assert!(planned(&url).await.is_empty(), "held back after it failed");
    cluster.stop().await;
}
