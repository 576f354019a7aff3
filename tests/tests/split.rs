//! `ALTER TABLE .. SPLIT PARTITION` and `MERGE PARTITIONS` under load. Writers insert batches
//! whose rows spread over the key space into a RANGE table (with a LOCAL
//! index) and a HASH table (with a GLOBAL SYNC one), both with three copies (a write needs two),
//! readers scan both and look batches up through the index, `COMPACT
//! TABLE` runs, a splitter keeps splitting partitions of both (RANGE at
//! the median of its rows or at a key given, HASH at the middle of its
//! slice) and now and then merges two neighbours, and one worker is stopped a third of the way in and started
//! again a little later (splits then write to two copies; the third
//! catches up). No read may fail or see a batch half or twice; every batch
//! acknowledged before a read began is in it; at the end every
//! acknowledged batch is there once, point lookups prune to the one
//! partition holding the key, the index agrees with the scan, and all of
//! it holds again after a restart. Seeded: `TESSERA_SEED=n` repeats a run.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::AsArray;
use arrow::datatypes::{Int64Type, UInt32Type};
use tessera_datasets::Rng;
use tessera_tests::batches::{Ledger, groups, seed};
use tessera_tests::{TestCluster, plan_text, query_url};
use tokio::sync::watch;

const WRITERS: u64 = 3;
const BATCHES_PER_WRITER: u64 = 25;
/// Keys of row i of batch b: `i * SPREAD + b`, so a batch's rows spread
/// over the whole key space and every key is distinct.
const SPREAD: i64 = 10_000;

fn batch_shape(b: u64) -> (i64, i64) {
    let rows = 3 + (Rng(b).next_u64() % 10) as i64;
    (rows, (0..rows).map(|i| i * SPREAD + b as i64).sum())
}

fn insert_sql(table: &str, b: u64) -> String {
    let (rows, _) = batch_shape(b);
    let values: Vec<String> = (0..rows)
        .map(|i| format!("({}, {b}, {b})", i * SPREAD + b as i64))
        .collect();
    format!("INSERT INTO {table} VALUES {}", values.join(", "))
}

#[derive(Default)]
struct Shared {
    ledger: Ledger,
    reads: AtomicU64,
    splits: AtomicU64,
    merges: AtomicU64,
    /// Rows the splits' and merges' catch-up rounds copied.
    caught_up: AtomicU64,
    writers_done: AtomicBool,
    /// The worker stopped, while it is down or catching up.
    victim: Mutex<Option<String>>,
    /// Errors the outage explains.
    outage_errors: AtomicU64,
}

impl std::ops::Deref for Shared {
    type Target = Ledger;

    fn deref(&self) -> &Ledger {
        &self.ledger
    }
}

impl Shared {
    fn count_caught_up(&self, report: &[arrow::array::RecordBatch]) {
        for b in report {
            let rows = b
                .column_by_name("caught_up_rows")
                .unwrap()
                .as_primitive::<arrow::datatypes::UInt64Type>();
            let n: u64 = rows.values().iter().sum();
            self.caught_up.fetch_add(n, Ordering::SeqCst);
        }
    }

    /// Whether `error` is one a worker's outage explains: it names the
    /// stopped worker, or a copy still catching up.
    fn tolerated(&self, error: &str) -> bool {
        let victim = self.victim.lock().unwrap().clone();
        let explained =
            victim.is_some_and(|v| error.contains(&v)) || error.contains("copies catching up");
        if explained {
            self.outage_errors.fetch_add(1, Ordering::SeqCst);
        }
        explained
    }
}

async fn writer(url: String, shared: Arc<Shared>, id: u64, progress: Arc<watch::Sender<u64>>) {
    for seq in 0..BATCHES_PER_WRITER {
        let b = (id + 1) * 100 + seq;
        shared.start(b);
        for table in ["r", "h"] {
            match query_url(&url, &insert_sql(table, b)).await {
                Ok(_) => shared.ack(table, b),
                Err(e) => shared.violation(format!("insert of batch {b} into {table} failed: {e}")),
            }
        }
        progress.send_modify(|n| *n += 1);
    }
}

async fn reader(url: String, shared: Arc<Shared>, seed: u64) {
    let mut rng = Rng(seed);
    while !shared.writers_done.load(Ordering::SeqCst) {
        for table in ["r", "h"] {
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
        // One batch through each index: r's LOCAL, h's GLOBAL SYNC.
        for (table, kind) in [("r", "LOCAL"), ("h", "GLOBAL SYNC")] {
            let before = shared.acked(table);
            let acked: Vec<u64> = before.iter().copied().collect();
            let Some(b) =
                (!acked.is_empty()).then(|| acked[rng.below(acked.len() as u64) as usize])
            else {
                continue;
            };
            let sql = format!("SELECT b, count(*), sum(k) FROM {table} WHERE l = {b} GROUP BY b");
            match query_url(&url, &sql).await {
                Ok(rows) => {
                    let only = BTreeSet::from([b]);
                    let what = format!("{kind} index lookup");
                    shared.check(&what, &groups(&rows), &only, batch_shape);
                }
                Err(e) => shared.violation(format!("lookup of batch {b} in {table} failed: {e}")),
            }
        }
        shared.reads.fetch_add(1, Ordering::SeqCst);
    }
}

/// The partition ids of `table` now.
async fn partitions(url: &str, table: &str) -> Vec<u32> {
    let rows = query_url(url, &format!("SHOW PARTITIONS {table}"))
        .await
        .unwrap();
    rows.iter()
        .flat_map(|b| {
            let ids = b.column(0).as_primitive::<UInt32Type>();
            (0..b.num_rows()).map(|i| ids.value(i)).collect::<Vec<_>>()
        })
        .collect()
}

/// Splits a partition of each table after every few acknowledged batches,
/// and compacts now and then.
async fn splitter(url: String, shared: Arc<Shared>, mut progress: watch::Receiver<u64>, seed: u64) {
    let mut rng = Rng(seed);
    let mut last = 0;
    loop {
        let Ok(n) = progress.wait_for(|n| *n >= last + 4).await.map(|n| *n) else {
            return;
        };
        if shared.writers_done.load(Ordering::SeqCst) {
            return;
        }
        last = n;
        for table in ["r", "h"] {
            let ids = partitions(&url, table).await;
            let i = rng.below(ids.len() as u64) as usize;
            if ids.len() > 2 && rng.below(3) == 0 {
                // Two neighbours (SHOW PARTITIONS lists them in key order).
                let i = i.min(ids.len() - 2);
                let (a, b) = (ids[i], ids[i + 1]);
                let sql = format!("ALTER TABLE {table} MERGE PARTITIONS {a}, {b}");
                match query_url(&url, &sql).await {
                    Ok(report) => {
                        shared.merges.fetch_add(1, Ordering::SeqCst);
                        shared.count_caught_up(&report);
                    }
                    Err(e) if shared.tolerated(&e) => {}
                    Err(e) => shared.violation(format!("{sql} failed: {e}")),
                }
                continue;
            }
            let id = ids[i];
            // RANGE: at the median, or at a key that may fall outside the
            // partition (then refused, changing nothing).
            let at = if table == "r" && rng.below(3) == 0 {
                format!(" AT {}", rng.below(12) as i64 * SPREAD + 50)
            } else {
                String::new()
            };
            let sql = format!("ALTER TABLE {table} SPLIT PARTITION {id}{at}");
            match query_url(&url, &sql).await {
                Ok(report) => {
                    shared.splits.fetch_add(1, Ordering::SeqCst);
                    shared.count_caught_up(&report);
                }
                Err(e) if e.contains("cannot split at") || e.contains("fewer than two") => {}
                Err(e) if shared.tolerated(&e) => {}
                Err(e) => shared.violation(format!("{sql} failed: {e}")),
            }
        }
        if rng.below(3) == 0 {
            for table in ["r", "h"] {
                if let Err(e) = query_url(&url, &format!("COMPACT TABLE {table}")).await
                    && !shared.tolerated(&e)
                {
                    shared.violation(format!("COMPACT TABLE {table} failed: {e}"));
                }
            }
        }
    }
}

/// Each key's row is found by a query that keeps one partition, the one
/// holding it.
async fn point_lookups(cluster: &TestCluster, table: &str, acked: &BTreeSet<u64>, rng: &mut Rng) {
    let acked: Vec<u64> = acked.iter().copied().collect();
    for _ in 0..8 {
        let b = acked[rng.below(acked.len() as u64) as usize];
        let (rows, _) = batch_shape(b);
        let k = rng.below(rows as u64) as i64 * SPREAD + b as i64;
        let sql = format!("SELECT b FROM {table} WHERE k = {k}");
        let got = cluster.query(&sql).await.unwrap();
        let found: Vec<i64> = got
            .iter()
            .flat_map(|r| r.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(found, vec![b as i64], "{sql}");
        let plan = plan_text(&cluster.query(&format!("EXPLAIN {sql}")).await.unwrap());
        assert!(
            plan.contains("partitions=1/"),
            "{sql} keeps one partition: {plan}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splits_under_writes_reads_and_compaction() {
    let seed = seed();
    let mut rng = Rng(seed);

    let mut cluster = TestCluster::builder().workers(3).start().await;
    cluster
        .run_all(&[
            "CREATE TABLE r (k BIGINT, b BIGINT, l BIGINT) PARTITION BY RANGE (k) SPLIT AT (60000) \
             REPLICAS 3 WRITE QUORUM MAJORITY",
            "CREATE INDEX by_l ON r (l) LOCAL",
            "CREATE TABLE h (k BIGINT, b BIGINT, l BIGINT) PARTITION BY HASH (k) PARTITIONS 2 \
             REPLICAS 3 WRITE QUORUM MAJORITY",
            "CREATE INDEX by_g ON h (l) GLOBAL SYNC PARTITIONS 2",
        ])
        .await;

    let url = cluster.url();
    let shared = Arc::new(Shared::default());
    let (progress, watch_rx) = watch::channel(0u64);
    let progress = Arc::new(progress);
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            let (url, shared) = (url.clone(), Arc::clone(&shared));
            tokio::spawn(writer(url, shared, id, Arc::clone(&progress)))
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (url, shared) = (url.clone(), Arc::clone(&shared));
            tokio::spawn(reader(url, shared, rng.next_u64()))
        })
        .collect();
    let splits = tokio::spawn(splitter(
        url.clone(),
        Arc::clone(&shared),
        watch_rx.clone(),
        rng.next_u64(),
    ));
    // A third of the way in, a worker stops until the writers have
    // written a few batches more; its copies catch up once it is back.
    let total = WRITERS * BATCHES_PER_WRITER;
    let mut rx = watch_rx;
    let at = *rx.wait_for(|n| *n >= total / 3).await.unwrap();
    let victim = rng.below(3) as usize;
    *shared.victim.lock().unwrap() = Some(format!("worker-{victim}"));
    cluster.stop_worker(victim).await;
    let _ = rx.wait_for(|n| *n >= (at + 2 * WRITERS).min(total)).await;
    cluster.start_stopped_workers().await;
    for w in writers {
        w.await.unwrap();
    }
    shared.writers_done.store(true, Ordering::SeqCst);
    drop(progress);
    for r in readers {
        r.await.unwrap();
    }
    splits.await.unwrap();

    let mut scans = BTreeMap::new();
    for table in ["r", "h"] {
        let acked = shared.acked(table);
        let sql = format!("SELECT b, count(*), sum(k) FROM {table} GROUP BY b");
        let scan = groups(&cluster.query(&sql).await.unwrap());
        shared.check_final(table, &scan, batch_shape);
        point_lookups(&cluster, table, &acked, &mut rng).await;
        scans.insert(table, scan);
    }
    for (table, kind) in [("r", "LOCAL"), ("h", "GLOBAL SYNC")] {
        let ids: Vec<String> = shared.acked(table).iter().map(u64::to_string).collect();
        let mut looked_up = BTreeMap::new();
        for chunk in ids.chunks(20) {
            let sql = format!(
                "SELECT b, count(*), sum(k) FROM {table} WHERE l IN ({}) GROUP BY b",
                chunk.join(", ")
            );
            looked_up.extend(groups(&cluster.query(&sql).await.unwrap()));
        }
        if looked_up != scans[table] {
            shared.violation(format!(
                "the {kind} index of {table} disagrees with the scan: {looked_up:?}"
            ));
        }
    }
    let split_count = shared.splits.load(Ordering::SeqCst);
    let merge_count = shared.merges.load(Ordering::SeqCst);
    let parts_r = partitions(&url, "r").await.len();
    let parts_h = partitions(&url, "h").await.len();
    if parts_r + parts_h + merge_count as usize != 4 + split_count as usize {
        shared.violation(format!(
            "{split_count} splits and {merge_count} merges, but {parts_r} + {parts_h} \
             partitions (4 at the start)"
        ));
    }
    println!(
        "{split_count} splits, {merge_count} merges, {} reads, {} errors the outage explains; \
         partitions now: r {parts_r}, h {parts_h}; {} rows caught up",
        shared.reads.load(Ordering::SeqCst),
        shared.outage_errors.load(Ordering::SeqCst),
        shared.caught_up.load(Ordering::SeqCst)
    );
    shared.assert_none(seed);
    assert!(
        split_count >= 2,
        "seed {seed}: only {split_count} splits ran"
    );

    // Durable: the same rows, partitions and routing after a restart.
    let cluster = cluster.restart().await;
    for table in ["r", "h"] {
        let sql = format!("SELECT b, count(*), sum(k) FROM {table} GROUP BY b");
        let again = groups(&cluster.query(&sql).await.unwrap());
        assert_eq!(
            again, scans[table],
            "seed {seed}: {table} changed across a restart"
        );
        point_lookups(&cluster, table, &shared.acked(table), &mut rng).await;
    }
    let url = cluster.url();
    assert_eq!(partitions(&url, "r").await.len(), parts_r);
    cluster.stop().await;
}

/// What a split or merge refuses, and what it reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_refusals_and_report() {
    let cluster = TestCluster::builder().workers(2).start().await;
    cluster
        .run_all(&[
            "CREATE TABLE s (k BIGINT)",
            "CREATE TABLE d (k DATE, v BIGINT) PARTITION BY RANGE (k) SPLIT AT ('2024-01-01')",
            "INSERT INTO d VALUES ('2023-06-01', 1), ('2024-03-01', 2), ('2024-09-01', 3)",
            "CREATE TABLE g (k BIGINT, v BIGINT) PARTITION BY HASH (k) PARTITIONS 2",
            "CREATE INDEX by_v ON g (v) GLOBAL ASYNC",
        ])
        .await;
    let err = |sql: &'static str| async { cluster.query(sql).await.unwrap_err() };
    assert!(
        err("ALTER TABLE s SPLIT PARTITION 0")
            .await
            .contains("no key to split on")
    );
    assert!(
        err("ALTER TABLE d SPLIT PARTITION 7")
            .await
            .contains("has no partition 7")
    );
    assert!(
        err("ALTER TABLE d SPLIT PARTITION 1 AT '2023-01-01'")
            .await
            .contains("cannot split at")
    );
    assert!(
        err("ALTER TABLE d SPLIT PARTITION 1 AT 5")
            .await
            .contains("is a number")
    );
    assert!(
        err("ALTER TABLE g SPLIT PARTITION 0")
            .await
            .contains("GLOBAL ASYNC index 'by_v'")
    );
    assert!(
        err("ALTER TABLE g SPLIT PARTITION 0 AT 5")
            .await
            .contains("GLOBAL ASYNC index")
    );
    assert!(
        err("ALTER TABLE nope SPLIT PARTITION 0")
            .await
            .contains("nope")
    );

    let report = cluster
        .query("ALTER TABLE d SPLIT PARTITION 1 AT '2024-06-01'")
        .await
        .unwrap();
    let report = &report[0];
    assert_eq!(report.num_rows(), 2);
    let ids = report.column(0).as_primitive::<UInt32Type>();
    assert_eq!((ids.value(0), ids.value(1)), (2, 3));
    let ranges = report.column(2).as_string::<i32>();
    assert_eq!(ranges.value(0), "k [2024-01-01, 2024-06-01)");
    assert_eq!(ranges.value(1), "k [2024-06-01, +inf)");
    let rows = report
        .column(3)
        .as_primitive::<arrow::datatypes::UInt64Type>();
    assert_eq!((rows.value(0), rows.value(1)), (1, 1));
    // The old id is gone; the new ones split again (at their median).
    assert!(
        err("ALTER TABLE d SPLIT PARTITION 1")
            .await
            .contains("has no partition 1")
    );
    let parts = cluster.query("SHOW PARTITIONS d").await.unwrap();
    let shown = parts[0].column(1).as_string::<i32>();
    let shown: Vec<&str> = (0..parts[0].num_rows()).map(|i| shown.value(i)).collect();
    assert_eq!(
        shown,
        [
            "k (-inf, 2024-01-01)",
            "k [2024-01-01, 2024-06-01)",
            "k [2024-06-01, +inf)"
        ]
    );
    let got = cluster
        .query("SELECT v FROM d WHERE k >= DATE '2024-06-01' ORDER BY v")
        .await
        .unwrap();
    assert_eq!(got[0].column(0).as_primitive::<Int64Type>().values(), &[3]);
    assert!(
        err("ALTER TABLE d SPLIT PARTITION 3")
            .await
            .contains("fewer than two distinct keys")
    );

    // Merges: neighbours only, two different ones, of a partitioned table.
    assert!(
        err("ALTER TABLE d MERGE PARTITIONS 0, 3")
            .await
            .contains("not neighbours")
    );
    assert!(
        err("ALTER TABLE d MERGE PARTITIONS 2, 2")
            .await
            .contains("not 2 twice")
    );
    assert!(
        err("ALTER TABLE d MERGE PARTITIONS 1, 2")
            .await
            .contains("has no partition 1")
    );
    assert!(
        err("ALTER TABLE s MERGE PARTITIONS 0, 1")
            .await
            .contains("no key to merge on")
    );
    assert!(
        err("ALTER TABLE g MERGE PARTITIONS 0, 1")
            .await
            .contains("GLOBAL ASYNC index 'by_v'")
    );
    // Named in either order, neighbours merge into one new id.
    let report = cluster
        .query("ALTER TABLE d MERGE PARTITIONS 3, 2")
        .await
        .unwrap();
    let report = &report[0];
    assert_eq!(report.num_rows(), 1);
    assert_eq!(report.column(0).as_primitive::<UInt32Type>().value(0), 4);
    assert_eq!(report.column(1).as_string::<i32>().value(0), "2, 3");
    assert_eq!(
        report.column(2).as_string::<i32>().value(0),
        "k [2024-01-01, +inf)"
    );
    let rows = report
        .column(3)
        .as_primitive::<arrow::datatypes::UInt64Type>();
    assert_eq!(rows.value(0), 2);
    let report = cluster
        .query("ALTER TABLE d MERGE PARTITIONS 0, 4")
        .await
        .unwrap();
    assert_eq!(
        report[0].column(2).as_string::<i32>().value(0),
        "k (-inf, +inf)"
    );
    let got = cluster.query("SELECT v FROM d ORDER BY v").await.unwrap();
    assert_eq!(
        got[0].column(0).as_primitive::<Int64Type>().values(),
        &[1, 2, 3]
    );
    let plan = plan_text(
        &cluster
            .query("EXPLAIN SELECT v FROM d WHERE k = DATE '2024-09-01'")
            .await
            .unwrap(),
    );
    assert!(plan.contains("partitions=1/1"), "{plan}");
    cluster.stop().await;
}
