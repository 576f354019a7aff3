//! Snapshot reads under concurrency. Writers insert multi-partition batches
//! into a table with a LOCAL, a GLOBAL SYNC and a GLOBAL ASYNC index while
//! readers query through each index and by full scan, `COMPACT TABLE` and
//! the background compactor and ASYNC applier run, and one worker is
//! stopped and started again in the middle. No read may fail (a read runs
//! again until the worker is back); every read must see each batch whole or
//! not at all, and every batch acknowledged before it began; at
//! the end every acknowledged batch is there once, every failed one is not,
//! and each index agrees with the scan. Seeded: `TESSERA_SEED=n` repeats a
//! run, and the seed is printed.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tessera_datasets::Rng;
use tessera_tests::batches::{groups, seed, whole_batches};
use tessera_tests::{TestCluster, plan_text, query_url};
use tokio::sync::watch;

const WRITERS: u64 = 4;
const BATCHES_PER_WRITER: u64 = 20;
const READERS: usize = 4;

/// Rows in batch `b` (2 to 12, spread over the table's partitions) and the
/// sum of their keys.
fn batch_shape(b: u64) -> (i64, i64) {
    let rows = 2 + (Rng(b).next_u64() % 11) as i64;
    let first = b as i64 * 1000;
    (rows, (0..rows).map(|i| first + i).sum())
}

fn insert_sql(b: u64) -> String {
    let (rows, _) = batch_shape(b);
    let values: Vec<String> = (0..rows)
        .map(|i| {
            let k = b as i64 * 1000 + i;
            format!("({k}, {b}, {b}, {b}, {b})")
        })
        .collect();
    format!("INSERT INTO t VALUES {}", values.join(", "))
}

/// What the tasks share.
#[derive(Default)]
struct Shared {
    started: Mutex<BTreeSet<u64>>,
    acked: Mutex<BTreeSet<u64>>,
    failed: Mutex<BTreeSet<u64>>,
    violations: Mutex<Vec<String>>,
    /// Errors while a worker was down or coming back (allowed).
    outage_errors: AtomicU64,
    outage_texts: Mutex<Vec<String>>,
    reads: AtomicU64,
    /// Set while the worker is down; cleared once it has rejoined.
    outage: AtomicBool,
    /// Bumped when the worker goes down and when it is back: a statement
    /// that saw it change ran across the outage.
    outage_changes: AtomicU64,
    /// The id of the worker stopped.
    victim: Mutex<String>,
    writers_done: AtomicBool,
}

impl Shared {
    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }

    /// Where the outage stands, to note when a statement begins.
    fn outage_mark(&self) -> (bool, u64) {
        (
            self.outage.load(Ordering::SeqCst),
            self.outage_changes.load(Ordering::SeqCst),
        )
    }

    /// Whether an error of a statement that began at `mark` is one a
    /// worker's outage explains: the statement ran while the worker was
    /// down, and the error names it.
    fn tolerated(&self, mark: (bool, u64), error: &str) -> bool {
        let during = mark.0
            || self.outage.load(Ordering::SeqCst)
            || self.outage_changes.load(Ordering::SeqCst) != mark.1;
        let victim = self.victim.lock().unwrap().clone();
        let explained = during && error.contains(&format!("worker {victim} "));
        if explained {
            self.outage_errors.fetch_add(1, Ordering::SeqCst);
            self.outage_texts.lock().unwrap().push(error.to_string());
        }
        explained
    }
}

/// Checks one full-scan result: whole batches only, none unknown, every
/// batch acknowledged before the read began present.
fn check_scan(shared: &Shared, seen: &BTreeMap<u64, (i64, i64)>, acked_before: &BTreeSet<u64>) {
    let started = shared.started.lock().unwrap().clone();
    for wrong in whole_batches("scan", seen, &started, acked_before, batch_shape) {
        shared.violation(wrong);
    }
}

async fn writer(url: String, shared: Arc<Shared>, id: u64, progress: Arc<watch::Sender<u64>>) {
    for seq in 0..BATCHES_PER_WRITER {
        let b = (id + 1) * 1000 + seq;
        shared.started.lock().unwrap().insert(b);
        let outage = shared.outage_mark();
        match query_url(&url, &insert_sql(b)).await {
            Ok(_) => {
                shared.acked.lock().unwrap().insert(b);
            }
            Err(e) => {
                shared.failed.lock().unwrap().insert(b);
                if !shared.tolerated(outage, &e) {
                    shared.violation(format!(
                        "insert of batch {b} failed, not for the worker's outage: {e}"
                    ));
                }
            }
        }
        progress.send_modify(|n| *n += 1);
    }
}

/// Reader `kind`: 0 full scan, 1 LOCAL, 2 GLOBAL SYNC, 3 GLOBAL ASYNC.
async fn reader(url: String, shared: Arc<Shared>, kind: usize, seed: u64) {
    let mut rng = Rng(seed);
    while !shared.writers_done.load(Ordering::SeqCst) {
        let acked_before = shared.acked.lock().unwrap().clone();
        let outage = shared.outage.load(Ordering::SeqCst);
        if kind == 0 {
            let sql = "SELECT b, count(*), sum(k) FROM t GROUP BY b";
            match query_url(&url, sql).await {
                Ok(rows) => check_scan(&shared, &groups(&rows), &acked_before),
                // A read rides out the restart: it runs again until the
                // worker is back.
                Err(e) => shared.violation(format!("scan failed (outage: {outage}): {e}")),
            }
        } else {
            let started: Vec<u64> = shared.started.lock().unwrap().iter().copied().collect();
            let acked: Vec<u64> = acked_before.iter().copied().collect();
            let pick_acked = !acked.is_empty() && rng.below(2) == 0;
            let pool = if pick_acked { &acked } else { &started };
            if pool.is_empty() {
                tokio::task::yield_now().await;
                continue;
            }
            let b = pool[rng.below(pool.len() as u64) as usize];
            let column = ["", "l", "g", "a"][kind];
            let sql = format!("SELECT b, count(*), sum(k) FROM t WHERE {column} = {b} GROUP BY b");
            match query_url(&url, &sql).await {
                Ok(rows) => {
                    let seen = groups(&rows);
                    match seen.get(&b) {
                        Some(got) if *got != batch_shape(b) => shared.violation(format!(
                            "index {column}: batch {b} is half visible or doubled: {got:?}, \
                             written {:?}",
                            batch_shape(b)
                        )),
                        // An ASYNC index read as it is may lag.
                        None if kind != 3 && acked_before.contains(&b) => {
                            shared.violation(format!(
                                "index {column}: batch {b}, acknowledged before the read, is \
                                 missing"
                            ))
                        }
                        _ => {}
                    }
                    if seen.keys().any(|k| *k != b) {
                        shared.violation(format!("index {column}: rows of other batches {seen:?}"));
                    }
                }
                Err(e) => {
                    shared.violation(format!("lookup on {column} failed (outage: {outage}): {e}"));
                }
            }
        }
        shared.reads.fetch_add(1, Ordering::SeqCst);
    }
}

/// `COMPACT TABLE t` after every few acknowledged writes.
async fn compactor(url: String, shared: Arc<Shared>, mut progress: watch::Receiver<u64>) {
    let mut last = 0;
    loop {
        let Ok(n) = progress.wait_for(|n| *n >= last + 6).await.map(|n| *n) else {
            return;
        };
        if shared.writers_done.load(Ordering::SeqCst) {
            return;
        }
        last = n;
        let outage = shared.outage_mark();
        if let Err(e) = query_url(&url, "COMPACT TABLE t").await
            && !shared.tolerated(outage, &e)
        {
            shared.violation(format!(
                "COMPACT TABLE failed, not for the worker's outage: {e}"
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_reads_under_writes_compaction_and_a_worker_restart() {
    let seed = seed();
    let mut rng = Rng(seed);

    let mut cluster = TestCluster::builder().workers(3).start().await;
    cluster
        .run_all(&[
            "CREATE TABLE t (k BIGINT, b BIGINT, l BIGINT, g BIGINT, a BIGINT) \
             PARTITION BY HASH (k) PARTITIONS 6",
            "CREATE INDEX by_l ON t (l) LOCAL",
            "CREATE INDEX by_g ON t (g) GLOBAL SYNC PARTITIONS 4",
            "CREATE INDEX by_a ON t (a) GLOBAL ASYNC PARTITIONS 4",
        ])
        .await;
    // The readers really go through the indexes.
    for (column, index) in [("l", "by_l"), ("g", "by_g"), ("a", "by_a")] {
        let plan = plan_text(
            &cluster
                .query(&format!(
                    "EXPLAIN SELECT count(*) FROM t WHERE {column} = 7"
                ))
                .await
                .unwrap(),
        );
        assert!(plan.contains(&format!("index={index}")), "{plan}");
    }

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
    let readers: Vec<_> = (0..READERS)
        .map(|kind| {
            let (url, shared) = (url.clone(), Arc::clone(&shared));
            tokio::spawn(reader(url, shared, kind, rng.next_u64()))
        })
        .collect();
    let compaction = tokio::spawn(compactor(
        url.clone(),
        Arc::clone(&shared),
        watch_rx.clone(),
    ));

    // A third of the way in, one worker goes down until every writer has
    // tried at least once more, then comes back.
    let total = WRITERS * BATCHES_PER_WRITER;
    let mut rx = watch_rx.clone();
    let at = *rx.wait_for(|n| *n >= total / 3).await.unwrap();
    let victim = rng.below(3) as usize;
    *shared.victim.lock().unwrap() = format!("worker-{victim}");
    shared.outage.store(true, Ordering::SeqCst);
    shared.outage_changes.fetch_add(1, Ordering::SeqCst);
    cluster.stop_worker(victim).await;
    let _ = rx.wait_for(|n| *n >= (at + WRITERS).min(total)).await;
    cluster.start_stopped_workers().await;
    shared.outage_changes.fetch_add(1, Ordering::SeqCst);
    shared.outage.store(false, Ordering::SeqCst);

    for w in writers {
        w.await.unwrap();
    }
    shared.writers_done.store(true, Ordering::SeqCst);
    // The compactor ends when the last sender goes.
    drop(progress);
    for r in readers {
        r.await.unwrap();
    }
    compaction.await.unwrap();

    // At the end: every acknowledged batch once, no failed one, and each
    // index the same as the scan (the ASYNC one read fresh).
    let acked = shared.acked.lock().unwrap().clone();
    let failed = shared.failed.lock().unwrap().clone();
    let started = shared.started.lock().unwrap().clone();
    let scan = groups(
        &cluster
            .query("SELECT b, count(*), sum(k) FROM t GROUP BY b")
            .await
            .unwrap(),
    );
    check_scan(&shared, &scan, &acked);
    for b in &failed {
        if scan.contains_key(b) {
            shared.violation(format!("batch {b} failed, yet its rows are there"));
        }
    }
    cluster
        .query("SET tessera.index_read = 'fresh'")
        .await
        .unwrap();
    let ids: Vec<String> = started.iter().map(u64::to_string).collect();
    for column in ["l", "g", "a"] {
        let mut looked_up = BTreeMap::new();
        for chunk in ids.chunks(20) {
            let sql = format!(
                "SELECT b, count(*), sum(k) FROM t WHERE {column} IN ({}) GROUP BY b",
                chunk.join(", ")
            );
            looked_up.extend(groups(&cluster.query(&sql).await.unwrap()));
        }
        if looked_up != scan {
            shared.violation(format!(
                "index {column} disagrees with the scan at the end: {looked_up:?} vs {scan:?}"
            ));
        }
    }
    let reads = shared.reads.load(Ordering::SeqCst);
    let violations = shared.violations.lock().unwrap().clone();
    println!(
        "{} batches acknowledged, {} failed during the outage, {reads} reads, {} errors \
         during the outage",
        acked.len(),
        failed.len(),
        shared.outage_errors.load(Ordering::SeqCst)
    );
    for text in shared.outage_texts.lock().unwrap().iter() {
        println!("  during the outage: {text}");
    }
    assert!(
        violations.is_empty(),
        "seed {seed}: {} violations, first ones:\n{}",
        violations.len(),
        violations
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!acked.is_empty() && reads > 0, "nothing ran");

    // Durable: the same after a restart.
    let cluster = cluster.restart().await;
    let again = groups(
        &cluster
            .query("SELECT b, count(*), sum(k) FROM t GROUP BY b")
            .await
            .unwrap(),
    );
    assert_eq!(again, scan, "seed {seed}: rows changed across a restart");
    cluster.stop().await;
}
