//! The foundation's end-to-end checks on a real 3-worker cluster: ports,
//! routed inserts, atomic failures, pruning in EXPLAIN, SHOW PARTITIONS
//! balance, restart persistence and errors that keep their text.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::UInt64Type;
use tessera_tests::{TestCluster, plan_text, query_url, single_i64};

async fn count(cluster: &TestCluster, table: &str) -> i64 {
    single_i64(
        &cluster
            .query(&format!("SELECT count(*) FROM {table}"))
            .await
            .expect("count"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hash_table_end_to_end() {
    let cluster = TestCluster::builder().workers(3).start().await;

    // Coordinator and three workers, each on its own loopback port.
    let mut ports = HashSet::new();
    ports.insert(cluster.cluster().addr.port());
    for w in &cluster.cluster().workers {
        assert!(w.addr.ip().is_loopback());
        ports.insert(w.addr.port());
    }
    assert_eq!(ports.len(), 4);

    cluster
        .query("CREATE TABLE t (k BIGINT, v VARCHAR NOT NULL) PARTITION BY HASH (k) PARTITIONS 8")
        .await
        .unwrap();
    cluster
        .query("INSERT INTO t SELECT value, 'row ' || CAST(value AS VARCHAR) FROM range(100000)")
        .await
        .unwrap();
    assert_eq!(count(&cluster, "t").await, 100_000);

    // A bad row fails the whole statement and leaves every partition as it was.
    let err = cluster
        .query("INSERT INTO t SELECT value, CASE WHEN value = 500 THEN NULL ELSE 'x' END FROM range(1000)")
        .await
        .unwrap_err();
    assert!(err.contains("NOT NULL"), "{err}");
    assert_eq!(count(&cluster, "t").await, 100_000);

    // Pruning: a point query keeps one partition of eight.
    let explain = plan_text(
        &cluster
            .query("EXPLAIN SELECT * FROM t WHERE k = 42")
            .await
            .unwrap(),
    );
    assert!(explain.contains("partitions=1/8"), "{explain}");
    assert!(explain.contains("workers=[worker-"), "{explain}");
    let rows = cluster.query("SELECT v FROM t WHERE k = 42").await.unwrap();
    assert_eq!(rows[0].column(0).as_string_view().value(0), "row 42");

    // A full scan runs as a distributed stage with one task per worker.
    let explain = plan_text(
        &cluster
            .query("EXPLAIN SELECT count(*) FROM t")
            .await
            .unwrap(),
    );
    assert!(
        explain.contains("partitions=8/8") || explain.contains("Stage"),
        "{explain}"
    );

    // SHOW PARTITIONS: rows sum to the table and the hash spreads them evenly.
    let parts = cluster.query("SHOW PARTITIONS t").await.unwrap();
    let rows: Vec<u64> = parts
        .iter()
        .flat_map(|b| {
            b.column_by_name("rows")
                .unwrap()
                .as_primitive::<UInt64Type>()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(rows.len(), 8);
    assert_eq!(rows.iter().sum::<u64>(), 100_000);
    let max = *rows.iter().max().unwrap() as f64;
    assert!(max / (100_000.0 / 8.0) < 1.2, "{rows:?}");

    // Errors cross Flight SQL with their text.
    let err = cluster
        .query("SELECT * FROM missing_table")
        .await
        .unwrap_err();
    assert!(err.contains("missing_table"), "{err}");
    let err = cluster.query("SELECT nope FROM t").await.unwrap_err();
    assert!(err.contains("nope"), "{err}");

    // Prepared statements describe their rows, so JDBC can tell queries
    // from updates.
    let mut client = cluster.client().await;
    let query = client
        .prepare("SELECT k, v FROM t".to_string(), None)
        .await
        .unwrap();
    let schema = query.dataset_schema().unwrap().clone();
    assert_eq!(schema.fields().len(), 2);
    query.close().await.unwrap();
    let update = client
        .prepare("INSERT INTO t VALUES (-1, 'x')".to_string(), None)
        .await
        .unwrap();
    assert!(update.dataset_schema().unwrap().fields().is_empty());
    update.close().await.unwrap();

    // Restart on the same data dir: everything is back.
    let cluster = cluster.restart().await;
    assert_eq!(count(&cluster, "t").await, 100_000);
    let rows = cluster
        .query("SELECT count(*) FROM t WHERE k < 1000")
        .await
        .unwrap();
    assert_eq!(single_i64(&rows), 1000);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn range_and_hybrid_pruning() {
    let cluster = TestCluster::builder().workers(3).start().await;
    cluster
        .query("CREATE TABLE r (ts BIGINT, v DOUBLE) PARTITION BY RANGE (ts) SPLIT AT (1000, 2000, 3000)")
        .await
        .unwrap();
    cluster
        .query("INSERT INTO r SELECT value, 1.0 FROM range(4000)")
        .await
        .unwrap();
    let explain = plan_text(
        &cluster
            .query("EXPLAIN SELECT * FROM r WHERE ts BETWEEN 1500 AND 2500")
            .await
            .unwrap(),
    );
    assert!(explain.contains("partitions=2/4"), "{explain}");
    assert!(
        explain.contains("read=[p1]") && explain.contains("read=[p2]"),
        "{explain}"
    );

    cluster
        .query("CREATE TABLE h (sensor INT, ts BIGINT, value DOUBLE) PARTITION BY HASH (sensor) PARTITIONS 8 CLUSTER BY (ts)")
        .await
        .unwrap();
    cluster
        .query("INSERT INTO h SELECT CAST(value % 10 AS INT), value, 1.0 FROM range(1000)")
        .await
        .unwrap();
    let explain = plan_text(
        &cluster
            .query("EXPLAIN SELECT * FROM h WHERE sensor = 7 AND ts BETWEEN 100 AND 200")
            .await
            .unwrap(),
    );
    assert!(explain.contains("partitions=1/8"), "{explain}");
    let n = cluster
        .query("SELECT count(*) FROM h WHERE sensor = 7 AND ts BETWEEN 100 AND 200")
        .await
        .unwrap();
    assert_eq!(single_i64(&n), 10);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_worker_fails_the_write_and_changes_nothing() {
    let mut cluster = TestCluster::builder().workers(3).start().await;
    cluster
        .query("CREATE TABLE t (k BIGINT) PARTITION BY HASH (k) PARTITIONS 6")
        .await
        .unwrap();
    cluster
        .query("INSERT INTO t SELECT value FROM range(600)")
        .await
        .unwrap();
    cluster.stop_worker(1).await;
    let err = cluster
        .query("INSERT INTO t SELECT value FROM range(600)")
        .await
        .unwrap_err();
    // Refused at connect, or cut off while the stopped worker's server
    // was still closing its connections: either way the worker is named.
    assert!(
        err.contains("worker worker-1 at http://")
            && (err.contains("unreachable") || err.contains("went away during the call")),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    let cluster = cluster.restart().await;
    assert_eq!(count(&cluster, "t").await, 600);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn external_parquet_tables() {
    let cluster = TestCluster::builder().workers(2).start().await;
    let dir = cluster.data_dir().join("ext");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("nums.parquet");
    cluster
        .query(&format!(
            "COPY (SELECT value AS n FROM range(50)) TO '{}' STORED AS PARQUET",
            file.display()
        ))
        .await
        .unwrap();
    cluster
        .query(&format!(
            "CREATE EXTERNAL TABLE ext STORED AS PARQUET LOCATION '{}'",
            file.display()
        ))
        .await
        .unwrap();
    cluster
        .query("CREATE TABLE t (n BIGINT) PARTITION BY HASH (n) PARTITIONS 4")
        .await
        .unwrap();
    cluster
        .query("INSERT INTO t SELECT * FROM ext")
        .await
        .unwrap();
    assert_eq!(count(&cluster, "t").await, 50);

    // A file scan is the coordinator's: however big it would be split,
    // it is not sent to workers (which may not read it).
    cluster
        .query("SET distributed.file_scan_config_bytes_per_partition = 1")
        .await
        .unwrap();
    let groups = cluster
        .query("SELECT n % 5 AS g, count(*) FROM ext GROUP BY g")
        .await
        .unwrap();
    assert_eq!(groups.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    cluster
        .query("SET distributed.file_scan_config_bytes_per_partition = 16777216")
        .await
        .unwrap();

    let err = cluster
        .query("CREATE EXTERNAL TABLE broken STORED AS PARQUET LOCATION '/nonexistent/x.parquet'")
        .await
        .unwrap_err();
    assert!(err.contains("LOCATION"), "{err}");

    // External tables come back after a restart too.
    let cluster = cluster.restart().await;
    assert_eq!(count(&cluster, "ext").await, 50);
    cluster.stop().await;
}

/// A crash between the commit decision and the workers' commits: the next
/// start commits the logged write and aborts the unlogged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_finishes_decided_writes_and_aborts_the_rest() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use tessera_worker::wire::{PieceHeader, PrepareRequest};
    use tessera_worker::{StagedWrite, WorkerClient};

    let cluster = TestCluster::builder().workers(2).start().await;
    cluster.query("CREATE TABLE t (k BIGINT)").await.unwrap();
    let coordinator = cluster.cluster().coordinator();
    let location = coordinator
        .catalog()
        .table_def("t")
        .unwrap()
        .unwrap()
        .storage_key();
    let owner = coordinator
        .catalog()
        .scan_parts("t", &[0])
        .unwrap()
        .remove(0);
    let client = WorkerClient::connect(&owner.url).unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
    let rows = |n: i64| {
        RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..n))],
        )
        .unwrap()
    };
    // Both writes are prepared (durable, staged); only txn 1 is decided.
    for (txn, n) in [(1u64, 7i64), (2, 5)] {
        let piece = PieceHeader {
            table: location.clone(),
            partition: 0,
        };
        client
            .prepare(&PrepareRequest { txn }, vec![(piece, rows(n))])
            .await
            .unwrap();
    }
    let write = StagedWrite {
        txn: 1,
        table: location.clone(),
        partition: 0,
    };
    coordinator
        .catalog()
        .update(|s| {
            s.decided.insert(
                1,
                BTreeMap::from([(owner.worker_id.clone(), vec![write.clone()])]),
            );
            Ok(())
        })
        .await
        .unwrap();
    // Decided means visible: the read commits the staged rows of txn 1
    // on the worker before it scans (resolve on read); txn 2 stays unseen.
    assert_eq!(count(&cluster, "t").await, 7);

    let cluster = cluster.restart().await;
    assert_eq!(count(&cluster, "t").await, 7);
    let state = cluster.cluster().coordinator().catalog().state().unwrap();
    assert!(state.decided.is_empty());
    let owner = cluster
        .cluster()
        .coordinator()
        .catalog()
        .scan_parts("t", &[0])
        .unwrap()
        .remove(0);
    let staged = WorkerClient::connect(&owner.url)
        .unwrap()
        .staged()
        .await
        .unwrap();
    assert!(staged.is_empty(), "{staged:?}");
    cluster.stop().await;
}

/// Small INSERTs from many clients at once share transactions (group
/// commit), and each is still written whole and once; a statement with a
/// bad row fails alone, the others of its moment are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_small_inserts_share_transactions() {
    const WRITERS: i64 = 8;
    const EACH: i64 = 30;
    let cluster = TestCluster::builder().workers(3).start().await;
    cluster
        .query("CREATE TABLE g (k BIGINT NOT NULL, w BIGINT NOT NULL) PARTITION BY HASH (k) PARTITIONS 4")
        .await
        .unwrap();
    let coordinator = cluster.cluster().coordinator();
    let before = coordinator.write_fanout();
    let url = cluster.url();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = url.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    // Three rows, over several partitions.
                    let k = w * 1000 + i;
                    let (k2, k3) = (k + 100_000, k + 200_000);
                    query_url(
                        &url,
                        &format!("INSERT INTO g VALUES ({k}, {w}), ({k2}, {w}), ({k3}, {w})"),
                    )
                    .await
                    .unwrap();
                    if i % 10 == 5 {
                        let bad = format!(
                            "INSERT INTO g VALUES ({}, {w}), ({}, NULL)",
                            k + 300_000,
                            k + 400_000
                        );
                        let err = query_url(&url, &bad).await.unwrap_err();
                        assert!(err.contains("NOT NULL"), "{err}");
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let after = coordinator.write_fanout();
    let statements = after.writes - before.writes;
    let transactions = after.transactions - before.transactions;
    assert_eq!(statements, (WRITERS * EACH) as u64);
    assert!(
        transactions < statements,
        "{statements} concurrent INSERTs took {transactions} transactions: none shared one"
    );
    // Every statement whole and once; nothing of the failed ones.
    let per_writer = cluster
        .query("SELECT w, count(*), count(DISTINCT k), sum(k) FROM g GROUP BY w ORDER BY w")
        .await
        .unwrap();
    let batch = arrow::compute::concat_batches(&per_writer[0].schema(), &per_writer).unwrap();
    assert_eq!(batch.num_rows(), WRITERS as usize);
    for row in 0..batch.num_rows() {
        let w = batch
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(row);
        let count = batch
            .column(1)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(row);
        let distinct = batch
            .column(2)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(row);
        let sum = batch
            .column(3)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(row);
        let expected: i64 = (0..EACH).map(|i| 3 * (w * 1000 + i) + 300_000).sum();
        assert_eq!(
            (count, distinct, sum),
            (3 * EACH, 3 * EACH, expected),
            "writer {w}"
        );
    }
    cluster.stop().await;
}

/// With a worker down, concurrent small INSERTs whose rows avoid it are
/// written (a group failed by one statement's rows is written again one
/// statement at a time), those that touch it fail and leave nothing, and
/// once it is back the table holds exactly the acknowledged rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_down_fails_only_the_inserts_that_touch_it() {
    const WRITERS: i64 = 6;
    const EACH: i64 = 20;
    let mut cluster = TestCluster::builder().workers(3).start().await;
    cluster
        .query("CREATE TABLE d (k BIGINT NOT NULL) PARTITION BY HASH (k) PARTITIONS 6")
        .await
        .unwrap();
    cluster.stop_worker(0).await;
    let url = cluster.url();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut acked = vec![];
                for i in 0..EACH {
                    let k = w * 1000 + i;
                    if query_url(&url, &format!("INSERT INTO d VALUES ({k})"))
                        .await
                        .is_ok()
                    {
                        acked.push(k);
                    }
                }
                acked
            })
        })
        .collect();
    let mut acked = vec![];
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let total = (WRITERS * EACH) as usize;
    assert!(
        !acked.is_empty() && acked.len() < total,
        "{} of {total} INSERTs acknowledged with one of three workers down",
        acked.len()
    );
    // Each key's partition is on the stopped worker or not: a key that
    // failed must fail again alone, one acknowledged must not.
    cluster.start_stopped_workers().await;
    let rows = cluster.query("SELECT k FROM d ORDER BY k").await.unwrap();
    let mut found: Vec<i64> = rows
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    found.sort();
    acked.sort();
    assert_eq!(
        found, acked,
        "the table holds exactly the acknowledged rows"
    );
    cluster.stop().await;
}
