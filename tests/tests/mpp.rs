//! MPP execution on a real 3-worker cluster: co-located, broadcast and
//! shuffled joins, top-k pushed into tasks, distinct counts, and the
//! per-query metrics of `tessera.queries`.

#![allow(clippy::unwrap_used)]

use arrow::array::AsArray;
use arrow::datatypes::{Int64Type, UInt64Type};
use tessera_tests::{TestCluster, plan_text, single_i64};

/// The metrics of the last logged query whose SQL starts with `prefix`.
async fn logged(cluster: &TestCluster, prefix: &str) -> (u64, u64, u64) {
    for _ in 0..100 {
        let rows = cluster
            .query(&format!(
                "SELECT partitions_touched, tasks, bytes_shuffled FROM tessera.queries \
                 WHERE starts_with(sql, '{prefix}') AND status = 'ok' ORDER BY started DESC LIMIT 1"
            ))
            .await
            .unwrap();
        if let Some(b) = rows.iter().find(|b| b.num_rows() == 1) {
            let v = |i: usize| b.column(i).as_primitive::<UInt64Type>().value(0);
            return (v(0), v(1), v(2));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no logged query starting with {prefix}");
}

/// The text of `EXPLAIN sql`.
async fn explain(cluster: &TestCluster, sql: &str) -> String {
    plan_text(&cluster.query(&format!("EXPLAIN {sql}")).await.unwrap())
}

async fn setup(cluster: &TestCluster) {
    cluster
        .run_all(&[
            "CREATE TABLE a (k BIGINT, v BIGINT) PARTITION BY HASH (k) PARTITIONS 6",
            "CREATE TABLE b (k BIGINT, w BIGINT) PARTITION BY HASH (k) PARTITIONS 6",
            "CREATE TABLE c (k BIGINT, w BIGINT) PARTITION BY HASH (k) PARTITIONS 5",
            "INSERT INTO a SELECT value, value % 7 FROM range(20000)",
            "INSERT INTO b SELECT value * 2, value % 3 FROM range(15000)",
            "INSERT INTO c SELECT value * 2, value % 3 FROM range(15000)",
            "SET tessera.broadcast_threshold_bytes = 0",
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn colocated_join_moves_nothing_between_workers() {
    let cluster = TestCluster::builder().workers(3).start().await;
    setup(&cluster).await;
    let sql = "SELECT count(*) FROM a JOIN b ON a.k = b.k";
    let explain = plan_text(&cluster.query(&format!("EXPLAIN {sql}")).await.unwrap());
    assert!(explain.contains("colocated"), "{explain}");
    assert!(!explain.contains("NetworkShuffleExec"), "{explain}");
    // Even keys below 20000: 10000 matches.
    assert_eq!(single_i64(&cluster.query(sql).await.unwrap()), 10000);
    let (partitions, tasks, shuffled) = logged(&cluster, sql).await;
    assert_eq!(partitions, 12);
    assert!(tasks >= 2, "{tasks} tasks");
    assert_eq!(shuffled, 0);

    // Outer, semi and anti joins over co-located partitions.
    for (sql, expected) in [
        ("SELECT count(*) FROM a LEFT JOIN b ON a.k = b.k", 20000),
        ("SELECT count(*) FROM a FULL JOIN b ON a.k = b.k", 25000),
        ("SELECT count(*) FROM a WHERE k IN (SELECT k FROM b)", 10000),
        (
            "SELECT count(*) FROM a WHERE NOT EXISTS (SELECT 1 FROM b WHERE b.k = a.k)",
            10000,
        ),
    ] {
        assert_eq!(
            single_i64(&cluster.query(sql).await.unwrap()),
            expected,
            "{sql}"
        );
    }
    cluster.stop().await;
}

/// Co-location follows partitions through the probe side of a broadcast
/// join and through joins already paired; a join over big tables is never
/// broadcast on an estimate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_chained_through_broadcasts_and_paired_joins_stay_colocated() {
    let cluster = TestCluster::builder().workers(3).start().await;
    setup(&cluster).await;
    cluster
        .run_all(&[
            "CREATE TABLE d (x BIGINT, name VARCHAR) PARTITION BY HASH (x) PARTITIONS 1",
            "INSERT INTO d SELECT value, 'd' || value FROM range(7)",
            "SET tessera.broadcast_threshold_bytes = 20000",
        ])
        .await;
    // (a ⋈ d broadcast) ⋈ b: a's partitions pass through the broadcast join.
    let sql = "SELECT count(*) FROM a JOIN d ON a.v = d.x JOIN b ON a.k = b.k";
    let plan = explain(&cluster, sql).await;
    assert!(plan.contains("NetworkBroadcastExec"), "{plan}");
    assert!(plan.contains("colocated"), "{plan}");
    assert!(!plan.contains("NetworkShuffleExec"), "{plan}");
    assert_eq!(single_i64(&cluster.query(sql).await.unwrap()), 10000);

    // (a ⋈ b) ⋈ a: the paired join pairs again with a third scan. The
    // same query joined on `k + 0` cannot pair, and must agree.
    let paired = "SELECT count(*) FROM a JOIN b ON a.k = b.k \
                  WHERE EXISTS (SELECT 1 FROM a a2 WHERE a2.k = a.k AND a2.v <> b.w)";
    let plan = explain(&cluster, paired).await;
    assert!(!plan.contains("NetworkShuffleExec"), "{plan}");
    let shuffled = paired.replace("a2.k = a.k", "a2.k + 0 = a.k");
    assert!(
        explain(&cluster, &shuffled)
            .await
            .contains("NetworkShuffleExec")
    );
    let n = single_i64(&cluster.query(paired).await.unwrap());
    assert!(n > 0);
    assert_eq!(single_i64(&cluster.query(&shuffled).await.unwrap()), n);

    // (a ⋈ d) is estimated tiny from key counts, but reads all of a: it is
    // not broadcast to the join with c (5 partitions, not co-located).
    let sql = "SELECT count(*) FROM a JOIN d ON a.v = d.x JOIN c ON a.k = c.k";
    let plan = explain(&cluster, sql).await;
    assert_eq!(plan.matches("NetworkBroadcastExec").count(), 1, "{plan}");
    assert_eq!(single_i64(&cluster.query(sql).await.unwrap()), 10000);
    cluster.stop().await;
}

/// Grouped by the partition key, an aggregate runs where each partition
/// lies and stays paired for the join above it; a NULL group padded in by
/// an outer join is still one group.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aggregates_on_the_partition_key_move_nothing() {
    let cluster = TestCluster::builder().workers(3).start().await;
    setup(&cluster).await;
    let total = |sql: &'static str| {
        let c = &cluster;
        async move { single_i64(&c.query(sql).await.unwrap()) }
    };
    // Per-key sums joined back to the table they came from.
    let local = "SELECT sum(s) FROM (SELECT a.k, sum(b.w) AS s FROM a JOIN b ON a.k = b.k \
                 GROUP BY a.k) g JOIN a ON g.k = a.k WHERE s > 0";
    let plan = explain(&cluster, local).await;
    assert!(!plan.contains("NetworkShuffleExec"), "{plan}");
    // The same grouped by `k + 0` shuffles, and must agree.
    let shuffled = "SELECT sum(s) FROM (SELECT a.k + 0 AS k, sum(b.w) AS s FROM a JOIN b \
                    ON a.k = b.k GROUP BY a.k + 0) g JOIN a ON g.k = a.k WHERE s > 0";
    assert!(
        explain(&cluster, shuffled)
            .await
            .contains("NetworkShuffleExec")
    );
    let n = total(local).await;
    assert!(n > 0);
    assert_eq!(total(shuffled).await, n);

    // Odd keys of a have no match in b: one NULL group of 10000 rows.
    let sql = "SELECT count(*) FROM (SELECT b.k, count(*) AS n FROM a LEFT JOIN b \
               ON a.k = b.k GROUP BY b.k) WHERE k IS NULL AND n = 10000";
    assert_eq!(total(sql).await, 1);
    let sql = "SELECT count(*) FROM (SELECT b.k FROM a LEFT JOIN b ON a.k = b.k GROUP BY b.k)";
    assert_eq!(total(sql).await, 10001);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_joins_shuffle_or_broadcast() {
    let cluster = TestCluster::builder().workers(3).start().await;
    setup(&cluster).await;
    // Different partition counts: not co-located, so shuffled.
    let sql = "SELECT count(*) FROM a JOIN c ON a.k = c.k";
    let explain = plan_text(&cluster.query(&format!("EXPLAIN {sql}")).await.unwrap());
    assert!(!explain.contains("colocated"), "{explain}");
    assert!(explain.contains("NetworkShuffleExec"), "{explain}");
    assert_eq!(single_i64(&cluster.query(sql).await.unwrap()), 10000);
    let (_, _, shuffled) = logged(&cluster, sql).await;
    assert!(shuffled > 0);

    // EXPLAIN ANALYZE runs it and adds a table of the stages: both sides
    // shuffled whole (20000 and 15000 rows), then gathered.
    let analyzed = cluster
        .query("EXPLAIN ANALYZE SELECT count(*) FROM a JOIN c ON a.k = c.k")
        .await
        .unwrap();
    let text = plan_text(&analyzed);
    assert!(text.contains("output_rows"), "{text}");
    let stages: Vec<&str> = text.lines().filter(|l| l.contains("| shuffle")).collect();
    let rows: Vec<&str> = stages
        .iter()
        .filter_map(|l| l.split('|').map(str::trim).nth(4))
        .collect();
    assert!(rows.contains(&"20000") && rows.contains(&"15000"), "{text}");
    assert!(stages.iter().all(|l| !l.contains("| 0 B")), "{text}");
    assert!(text.contains("| gather"), "{text}");
    assert!(text.contains("1 rows returned"), "{text}");

    // Joined on a column that is not the partition key: shuffled.
    let sql = "SELECT count(*) FROM a JOIN b ON a.v = b.w";
    let explain = plan_text(&cluster.query(&format!("EXPLAIN {sql}")).await.unwrap());
    assert!(!explain.contains("colocated"), "{explain}");

    // A small side under the threshold is broadcast.
    cluster
        .query("SET tessera.broadcast_threshold_bytes = 10000000")
        .await
        .unwrap();
    let sql = "SELECT count(*) FROM a JOIN c ON a.k = c.k WHERE c.w = 1";
    let explain = plan_text(&cluster.query(&format!("EXPLAIN {sql}")).await.unwrap());
    assert!(explain.contains("NetworkBroadcastExec"), "{explain}");
    assert_eq!(single_i64(&cluster.query(sql).await.unwrap()), 3333);
    // Small enough to broadcast, but co-located: paired instead.
    let sql = "SELECT count(*) FROM a JOIN b ON a.k = b.k WHERE b.w = 1";
    let explain = plan_text(&cluster.query(&format!("EXPLAIN {sql}")).await.unwrap());
    assert!(explain.contains("colocated"), "{explain}");
    assert!(!explain.contains("NetworkBroadcastExec"), "{explain}");
    assert_eq!(single_i64(&cluster.query(sql).await.unwrap()), 3333);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn top_k_runs_in_each_task_and_distinct_counts_are_exact() {
    let cluster = TestCluster::builder().workers(3).start().await;
    setup(&cluster).await;
    let sql = "SELECT k FROM a ORDER BY k DESC LIMIT 3";
    let explain = plan_text(&cluster.query(&format!("EXPLAIN {sql}")).await.unwrap());
    assert!(explain.contains("TopK(fetch=3)"), "{explain}");
    assert!(explain.contains("SortPreservingMergeExec"), "{explain}");
    let rows = cluster.query(sql).await.unwrap();
    let got: Vec<i64> = rows
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(got, vec![19999, 19998, 19997]);

    let distinct = "SELECT count(DISTINCT v), count(DISTINCT k % 1000) FROM a";
    let rows = cluster.query(distinct).await.unwrap();
    let b = rows.iter().find(|b| b.num_rows() == 1).unwrap();
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 7);
    assert_eq!(b.column(1).as_primitive::<Int64Type>().value(0), 1000);

    // A pruned point query touches one partition.
    let point = "SELECT v FROM a WHERE k = 77";
    cluster.query(point).await.unwrap();
    let (partitions, _, _) = logged(&cluster, point).await;
    assert_eq!(partitions, 1);
    cluster.stop().await;
}

/// A client that stops reading cancels the query: every scan the workers
/// were running is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_result_stream_cancels_worker_scans() {
    use futures::StreamExt;
    let cluster = TestCluster::builder().workers(3).start().await;
    cluster
        .query("CREATE TABLE big (k BIGINT, v BIGINT) PARTITION BY HASH (k) PARTITIONS 6")
        .await
        .unwrap();
    cluster
        .query("INSERT INTO big SELECT value, value * 3 FROM range(2000000)")
        .await
        .unwrap();
    let active = |c: &TestCluster| {
        c.cluster()
            .workers
            .iter()
            .map(|w| w.active_scans())
            .sum::<usize>()
    };
    let mut client = cluster.client().await;
    let info = client
        .execute(
            "SELECT k, sha256(CAST(v AS VARCHAR)) FROM big".to_string(),
            None,
        )
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = client.do_get(ticket).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.num_rows() > 0);
    assert!(active(&cluster) > 0, "no scan was running mid-query");
    drop(stream);
    drop(client);
    let mut left = active(&cluster);
    for _ in 0..200 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        left = active(&cluster);
    }
    assert_eq!(
        left, 0,
        "scans still running 10 s after the client went away"
    );
    // The cluster still answers.
    let n = single_i64(&cluster.query("SELECT count(*) FROM big").await.unwrap());
    assert_eq!(n, 2_000_000);
    cluster.stop().await;
}

/// Cancelling a query stops a join that computes without producing
/// anything: a nested-loop join whose filter never matches never waits on
/// its consumer, so only a yield point under its probe side lets the
/// worker drop it when the client goes away. Runs on the runtime `tessera
/// serve` runs on.
#[test]
fn cancelling_stops_a_join_that_produces_nothing() {
    tessera_coordinator::runtime_builder()
        .worker_threads(2)
        .build()
        .unwrap()
        .block_on(cancel_a_loop_join());
}

async fn cancel_a_loop_join() {
    use futures::StreamExt;
    let cluster = TestCluster::builder().workers(3).start().await;
    cluster
        .run_all(&[
            "CREATE TABLE probe (k BIGINT) PARTITION BY HASH (k) PARTITIONS 6",
            "INSERT INTO probe SELECT value FROM range(200000)",
            "CREATE TABLE build (k BIGINT) PARTITION BY HASH (k) PARTITIONS 2",
            "INSERT INTO build SELECT value FROM range(20000)",
        ])
        .await;
    // 20,000 build rows against 200,000 probe rows: many minutes of work
    // in a debug build.
    let sql = "SELECT count(*) FROM probe p, build b WHERE p.k + b.k = -1";
    let plan = plan_text(&cluster.query(&format!("EXPLAIN {sql}")).await.unwrap());
    assert!(
        plan.contains("NestedLoopJoinExec") && plan.contains("YieldingSliceExec"),
        "{plan}"
    );
    let mut client = cluster.client().await;
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = client.do_get(ticket).await.unwrap();
    let reader = tokio::spawn(async move { stream.next().await.map(|r| r.map(|b| b.num_rows())) });
    let running = tessera_worker::running_loop_joins;
    let started = std::time::Instant::now();
    while running() == 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the join never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !reader.is_finished() && running() > 0,
        "the join finished before it was cancelled"
    );
    reader.abort();
    let _ = reader.await;
    drop(client);
    let cancelled = std::time::Instant::now();
    while running() > 0 {
        assert!(
            cancelled.elapsed() < std::time::Duration::from_secs(20),
            "the join was still running 20 s after its query was cancelled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    eprintln!("join stopped {:?} after the cancel", cancelled.elapsed());
    let n = single_i64(&cluster.query("SELECT count(*) FROM probe").await.unwrap());
    assert_eq!(n, 200_000);
    cluster.stop().await;
}

/// A task that fails fails the whole query with the task's own error: in a
/// leaf stage, and after a shuffle in a stage that gathered data from every
/// worker. No task is left running and the cluster keeps answering. A read
/// that needs a stopped worker says which worker and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_task_fails_the_whole_query() {
    let mut cluster = TestCluster::builder().workers(3).start().await;
    for sql in [
        "CREATE TABLE f (k BIGINT, g BIGINT, s VARCHAR) PARTITION BY HASH (k) PARTITIONS 6",
        "INSERT INTO f SELECT value, value % 10, \
         CASE WHEN value = 4321 THEN 'oops' ELSE CAST(value AS VARCHAR) END FROM range(50000)",
    ] {
        cluster.query(sql).await.unwrap();
    }
    let active = |c: &TestCluster| {
        c.cluster()
            .workers
            .iter()
            .map(|w| w.active_scans())
            .sum::<usize>()
    };
    // The cast fails in the partial aggregate on the worker holding k = 4321.
    let leaf = "SELECT g, sum(CAST(s AS BIGINT)) FROM f GROUP BY g";
    // max(s) of group 1 is 'oops': the cast fails above the final
    // aggregate, in the stage after the shuffle.
    let after_shuffle = "SELECT g, CAST(max(s) AS BIGINT) FROM f GROUP BY g";
    let plan = plan_text(
        &cluster
            .query(&format!("EXPLAIN {after_shuffle}"))
            .await
            .unwrap(),
    );
    let shuffle = plan.find("NetworkShuffleExec").expect(&plan);
    let cast = plan.find("CAST(max(").expect(&plan);
    assert!(cast < shuffle, "the cast is not above the shuffle:\n{plan}");
    for sql in [leaf, after_shuffle] {
        let err = cluster.query(sql).await.unwrap_err();
        assert!(
            err.contains("Cannot cast string 'oops'"),
            "{sql}: unclear error: {err}"
        );
        let mut left = active(&cluster);
        for _ in 0..200 {
            if left == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            left = active(&cluster);
        }
        assert_eq!(left, 0, "{sql}: scans still running after the failure");
    }
    let n = single_i64(
        &cluster
            .query("SELECT count(*) FROM f WHERE s <> 'oops'")
            .await
            .unwrap(),
    );
    assert_eq!(n, 49_999);

    cluster.stop_worker(2).await;
    let err = cluster.query("SELECT count(*) FROM f").await.unwrap_err();
    assert!(err.contains("worker-2"), "the error names no worker: {err}");
    assert!(
        err.contains("restart") || err.contains("unreachable"),
        "the error says nothing to do: {err}"
    );
    cluster.stop().await;
}
