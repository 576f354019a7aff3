//! Secondary indexes on a real 3-worker cluster: every kind answers exactly
//! like a full scan (random data and values, NULLs, values with no match,
//! rows from before the index via the backfill), ASYNC indexes converge
//! after a restart that came between acknowledgement and apply, and the
//! statements around them.

#![allow(clippy::unwrap_used)]

use arrow::array::{Array, AsArray};
use arrow::datatypes::UInt64Type;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::atomic::{AtomicUsize, Ordering};

use tessera_tests::{TestCluster, compare_rows, plan_text, single_i64};

/// VALUES rows `(k, c, s)` for an INSERT.
fn values(data: &[(i64, Option<i64>, Option<u8>)]) -> String {
    data.iter()
        .map(|(k, c, s)| {
            let c = c.map_or("NULL".to_string(), |c| c.to_string());
            let s = s.map_or("NULL".to_string(), |s| format!("'s{s}'"));
            format!("({k}, {c}, {s})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

const KINDS: [(&str, &str, &str); 4] = [
    ("loc", "c", "LOCAL"),
    ("syn", "c", "GLOBAL SYNC PARTITIONS 3"),
    ("asy", "c", "GLOBAL ASYNC"),
    ("str", "s", "GLOBAL SYNC"),
];

async fn check_case(
    cluster: &TestCluster,
    case: usize,
    data: &[(i64, Option<i64>, Option<u8>)],
    probes: &[i64],
) {
    let (before, after) = data.split_at(data.len() / 2);
    let (mid, late) = after.split_at(after.len() / 2);
    let mut tables = vec![format!("base{case}")];
    for (kind, ..) in KINDS {
        tables.push(format!("{kind}{case}"));
    }
    for t in &tables {
        cluster
            .query(&format!(
                "CREATE TABLE {t} (k BIGINT, c BIGINT, s VARCHAR) PARTITION BY HASH (k) PARTITIONS 4"
            ))
            .await
            .unwrap();
        if !before.is_empty() {
            cluster
                .query(&format!("INSERT INTO {t} VALUES {}", values(before)))
                .await
                .unwrap();
        }
    }
    for (kind, column, clause) in KINDS {
        cluster
            .query(&format!(
                "CREATE INDEX i_{kind}{case} ON {kind}{case} ({column}) {clause}"
            ))
            .await
            .unwrap();
    }
    for part in [mid, late] {
        if part.is_empty() {
            continue;
        }
        for t in &tables {
            cluster
                .query(&format!("INSERT INTO {t} VALUES {}", values(part)))
                .await
                .unwrap();
        }
    }
    let mut queries = vec![];
    for v in probes {
        queries.push(("c", format!("c = {v}")));
        queries.push(("c", format!("c IN ({v}, {})", v + 3)));
        queries.push(("s", format!("s = 's{}'", v.rem_euclid(7))));
        queries.push(("c", format!("{v} = c AND k > 10")));
    }
    queries.push((
        "range",
        format!("c BETWEEN {} AND {}", probes[0], probes[0] + 4),
    ));
    queries.push(("range", format!("c > {}", probes[0])));
    for (column, predicate) in &queries {
        let expected = cluster
            .query(&format!(
                "SELECT k, c, s FROM base{case} WHERE {predicate} ORDER BY k"
            ))
            .await
            .unwrap();
        for (kind, indexed, clause) in KINDS {
            let ranges = *column == "range";
            let usable = if ranges {
                clause == "LOCAL"
            } else {
                indexed == *column
            };
            if !usable {
                continue;
            }
            let t = format!("{kind}{case}");
            let sql = format!("SELECT k, c, s FROM {t} WHERE {predicate} ORDER BY k");
            let plan = plan_text(&cluster.query(&format!("EXPLAIN {sql}")).await.unwrap());
            assert!(
                plan.contains(&format!("index=i_{t} ")),
                "{sql} does not use its index:\n{plan}"
            );
            let got = cluster.query(&sql).await.unwrap();
            if let Err(e) = compare_rows(&got, &expected, 0.0) {
                panic!("{sql}: {e}");
            }
        }
    }
    for t in &tables {
        cluster.query(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

/// Every kind returns exactly the rows of a full scan with the same
/// predicate, on random data (NULLs included) and random values (some with
/// no match), with half the rows written before the index (backfilled).
#[test]
fn index_reads_equal_full_scans() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(TestCluster::builder().workers(3).start());
    rt.block_on(async {
        cluster
            .query("SET tessera.index_read = 'fresh'")
            .await
            .unwrap();
    });
    let row = (
        prop::option::weighted(0.85, 0i64..12),
        prop::option::weighted(0.9, 0u8..7),
    );
    let strategy = (
        prop::collection::vec(row, 0..60),
        prop::collection::vec(-2i64..16, 2..4),
    );
    let mut runner = TestRunner::new(Config {
        cases: 5,
        ..Config::default()
    });
    let cases = AtomicUsize::new(0);
    runner
        .run(&strategy, |(cells, probes)| {
            let case = cases.fetch_add(1, Ordering::SeqCst);
            let data: Vec<(i64, Option<i64>, Option<u8>)> = cells
                .into_iter()
                .enumerate()
                .map(|(i, (c, s))| (i as i64, c, s))
                .collect();
            rt.block_on(check_case(&cluster, case, &data, &probes));
            Ok(())
        })
        .unwrap();
    rt.block_on(cluster.stop());
}

/// The batch and row of index `name` in a `SHOW INDEXES` result.
fn index_row<'a>(
    batches: &'a [arrow::array::RecordBatch],
    name: &str,
) -> (&'a arrow::array::RecordBatch, usize) {
    for b in batches {
        let names = b.column_by_name("index_name").unwrap().as_string::<i32>();
        if let Some(i) = (0..b.num_rows()).find(|i| names.value(*i) == name) {
            return (b, i);
        }
    }
    panic!("no index {name} in SHOW INDEXES");
}

fn show_index(batches: &[arrow::array::RecordBatch], name: &str) -> (String, u64, Option<u64>) {
    let (b, i) = index_row(batches, name);
    let state = b.column_by_name("state").unwrap().as_string::<i32>();
    let entries = b
        .column_by_name("entries")
        .unwrap()
        .as_primitive::<UInt64Type>();
    let lag = b
        .column_by_name("lag_entries")
        .unwrap()
        .as_primitive::<UInt64Type>();
    let lag = (!lag.is_null(i)).then(|| lag.value(i));
    (state.value(i).to_string(), entries.value(i), lag)
}

fn lag_seconds(batches: &[arrow::array::RecordBatch], name: &str) -> f64 {
    let (b, i) = index_row(batches, name);
    b.column_by_name("lag_seconds")
        .unwrap()
        .as_primitive::<arrow::datatypes::Float64Type>()
        .value(i)
}

/// Rows acknowledged while the applier is stopped are missing from an
/// eventual read; after a restart the index converges: nothing missing,
/// nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_index_converges_after_a_restart() {
    let cluster = TestCluster::builder().workers(3).start().await;
    cluster
        .run_all(&[
        "CREATE TABLE cars (id BIGINT, color VARCHAR) PARTITION BY HASH (id) PARTITIONS 6",
        "INSERT INTO cars SELECT value, CASE WHEN value % 10 = 0 THEN NULL ELSE 'c' || (value % 5) END FROM range(3000)",
        "CREATE INDEX by_color ON cars (color) GLOBAL ASYNC PARTITIONS 4",
        ])
        .await;
    let count = |sql: &'static str| {
        let c = &cluster;
        async move { single_i64(&c.query(sql).await.unwrap()) }
    };
    assert_eq!(
        count("SELECT count(*) FROM cars WHERE color = 'c1'").await,
        600
    );
    // An index on an empty table, with no write since: a fresh read has
    // nothing to wait for.
    cluster
        .run_all(&[
            "CREATE TABLE empty (id BIGINT, color VARCHAR) PARTITION BY HASH (id) PARTITIONS 3",
            "CREATE INDEX empty_color ON empty (color) GLOBAL ASYNC",
            "SET tessera.index_read = 'fresh'",
        ])
        .await;
    let started = std::time::Instant::now();
    assert_eq!(
        count("SELECT count(*) FROM empty WHERE color = 'c1'").await,
        0
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    cluster
        .query("SET tessera.index_read = 'eventual'")
        .await
        .unwrap();
    cluster.cluster().coordinator().pause_index_apply(true);
    cluster
        .query("INSERT INTO cars SELECT value, 'c1' FROM range(3000, 3100)")
        .await
        .unwrap();
    let shown = cluster.query("SHOW INDEXES ON cars").await.unwrap();
    let (state, entries, lag) = show_index(&shown, "by_color");
    assert_eq!((state.as_str(), entries, lag), ("ready", 2700, Some(100)));
    // The lag in seconds counts from the write, and is kept in the catalog
    // (a restart does not reset it).
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let shown = cluster.query("SHOW INDEXES ON cars").await.unwrap();
    let seconds = lag_seconds(&shown, "by_color");
    assert!((1.2..60.0).contains(&seconds), "lag_seconds = {seconds}");
    let kept = cluster.cluster().coordinator().catalog().state().unwrap();
    assert!(kept.index_stats["by_color"].pending_since > 0);
    // An eventual read does not see the unapplied rows yet; EXPLAIN says so.
    assert_eq!(
        count("SELECT count(*) FROM cars WHERE color = 'c1'").await,
        600
    );
    let plan = plan_text(
        &cluster
            .query("EXPLAIN SELECT * FROM cars WHERE color = 'c1'")
            .await
            .unwrap(),
    );
    assert!(
        plan.contains("index=by_color GLOBAL ASYNC, eventually consistent, index partitions=1/4"),
        "{plan}"
    );

    let cluster = cluster.restart().await;
    cluster
        .query("SET tessera.index_read = 'fresh'")
        .await
        .unwrap();
    let fresh = single_i64(
        &cluster
            .query("SELECT count(*) FROM cars WHERE color = 'c1'")
            .await
            .unwrap(),
    );
    assert_eq!(fresh, 700);
    let shown = cluster.query("SHOW INDEXES").await.unwrap();
    assert_eq!(
        show_index(&shown, "by_color"),
        ("ready".into(), 2800, Some(0))
    );
    assert_eq!(lag_seconds(&shown, "by_color"), 0.0);
    // Every non-NULL row is reachable through the index exactly once.
    let through_index = single_i64(
        &cluster
            .query("SELECT count(*) FROM cars WHERE color IN ('c0', 'c1', 'c2', 'c3', 'c4')")
            .await
            .unwrap(),
    );
    assert_eq!(through_index, 2800);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_statements_and_errors() {
    let cluster = TestCluster::builder().workers(2).start().await;
    cluster
        .run_all(&[
            "CREATE TABLE t (k BIGINT, v BIGINT, f DOUBLE) PARTITION BY HASH (k) PARTITIONS 4",
            "INSERT INTO t SELECT value, value % 100, 0.5 FROM range(1000)",
            "CREATE INDEX tv ON t (v)",
            "CREATE INDEX IF NOT EXISTS tv ON t (v) GLOBAL",
        ])
        .await;
    let err = |sql: &'static str| {
        let c = &cluster;
        async move { c.query(sql).await.unwrap_err() }
    };
    assert!(
        err("CREATE INDEX tv ON t (v)")
            .await
            .contains("DROP INDEX tv first")
    );
    // Floats can be indexed; bytes cannot.
    cluster
        .run_all(&[
            "CREATE INDEX x ON t (f)",
            "DROP INDEX x",
            "CREATE TABLE tb (k BIGINT, b BYTEA)",
        ])
        .await;
    assert!(
        err("CREATE INDEX xb ON tb (b)")
            .await
            .contains("cannot be indexed")
    );
    assert!(
        err("CREATE INDEX x ON nope (v)")
            .await
            .contains("does not exist")
    );
    assert!(err("DROP INDEX nope").await.contains("SHOW INDEXES"));
    let shown = cluster.query("SHOW INDEXES ON t").await.unwrap();
    assert_eq!(show_index(&shown, "tv"), ("ready".into(), 1000, None));
    let sql = "SELECT count(*) FROM t WHERE v = 7";
    let plan = plan_text(&cluster.query(&format!("EXPLAIN {sql}")).await.unwrap());
    assert!(plan.contains("index=tv LOCAL"), "{plan}");
    assert_eq!(single_i64(&cluster.query(sql).await.unwrap()), 10);
    // Tessera's options read back with SHOW.
    cluster
        .query("SET tessera.index_read = 'fresh'")
        .await
        .unwrap();
    let shown = cluster.query("SHOW tessera.index_read").await.unwrap();
    let value = shown[0].column_by_name("value").unwrap().as_string::<i32>();
    assert_eq!(value.value(0), "fresh");
    let all = cluster.query("SHOW tessera").await.unwrap();
    assert_eq!(all.iter().map(|b| b.num_rows()).sum::<usize>(), 8);
    for switch in ["index_apply", "compaction"] {
        assert!(
            cluster
                .query(&format!("SET tessera.{switch} = 'stopped'"))
                .await
                .unwrap_err()
                .contains("'running' (the default) or 'paused'")
        );
        let shown = cluster
            .query(&format!("SHOW tessera.{switch}"))
            .await
            .unwrap();
        let value = shown[0].column_by_name("value").unwrap().as_string::<i32>();
        assert_eq!(value.value(0), "running");
    }
    cluster
        .query("SET tessera.compaction = 'paused'")
        .await
        .unwrap();
    let coordinator = cluster.cluster().coordinator();
    assert!(coordinator.compaction_paused());
    cluster
        .query("SET tessera.compaction = 'running'")
        .await
        .unwrap();
    assert!(!coordinator.compaction_paused());
    assert!(
        err("SHOW tessera.nope")
            .await
            .contains("SHOW tessera lists")
    );
    cluster.query("DROP INDEX tv").await.unwrap();
    let plan = plan_text(&cluster.query(&format!("EXPLAIN {sql}")).await.unwrap());
    assert!(!plan.contains("index="), "{plan}");
    assert_eq!(single_i64(&cluster.query(sql).await.unwrap()), 10);
    let shown = cluster.query("SHOW INDEXES").await.unwrap();
    assert_eq!(shown.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    cluster.stop().await;
}

/// A dropped index's files stay while a query that began before the drop
/// runs (it may have planned a read through the index), and go after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_indexs_files_outlive_older_queries() {
    let cluster = TestCluster::builder().workers(2).start().await;
    cluster
        .run_all(&[
            "CREATE TABLE t (k BIGINT, v BIGINT) PARTITION BY HASH (k) PARTITIONS 2",
            "INSERT INTO t SELECT value, value % 10 FROM range(100)",
            "CREATE INDEX tl ON t (v) LOCAL",
            "CREATE INDEX tg ON t (v) GLOBAL SYNC PARTITIONS 2",
        ])
        .await;
    let index_files = |cluster: &TestCluster| -> usize {
        files_per_partition(cluster, "t")
            .into_iter()
            .filter(|(dir, _, _)| dir.contains(".i"))
            .map(|(_, files, _)| files)
            .sum()
    };
    let before = index_files(&cluster);
    assert!(before >= 4, "{before} index files");
    let catalog = cluster.cluster().coordinator().catalog();
    // A query that began before the drops (its snapshot held).
    let (_snapshot, hold, _) = catalog.take_snapshot().await.unwrap();
    cluster.run_all(&["DROP INDEX tl", "DROP INDEX tg"]).await;
    let shown = cluster.query("SHOW INDEXES").await.unwrap();
    assert_eq!(shown.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    // Answered while the old query runs: nothing of the indexes went.
    assert_eq!(index_files(&cluster), before);
    drop(hold);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while index_files(&cluster) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped indexes' files are still there 30 s after the last older query ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        single_i64(
            &cluster
                .query("SELECT count(*) FROM t WHERE v = 3")
                .await
                .unwrap()
        ),
        10
    );
    cluster.stop().await;
}

/// Parquet files per partition directory of every stored part of `table`
/// (rows, index parts, outboxes), by directory, on all workers.
fn files_per_partition(
    cluster: &TestCluster,
    table: &str,
) -> Vec<(String, usize, std::path::PathBuf)> {
    // The table's directories (and its indexes', beside them) on workers.
    let key = cluster
        .cluster()
        .coordinator()
        .catalog()
        .table_def(table)
        .unwrap()
        .unwrap()
        .storage_key();
    let data_dir = cluster.data_dir();
    let mut out = vec![];
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().to_string();
            let parent = dir.file_name().unwrap().to_string_lossy().to_string();
            let is_part = name.starts_with('p') && name[1..].parse::<u32>().is_ok();
            if is_part && (parent == key || parent.starts_with(&format!("{key}."))) {
                let files = std::fs::read_dir(&path)
                    .unwrap()
                    .flatten()
                    .filter(|f| f.file_name().to_string_lossy().ends_with(".parquet"))
                    .count();
                out.push((format!("{parent}/{name}"), files, path));
            } else {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Ids matching each value through each index equal those of a scan that
/// cannot use one.
async fn check_indexes_exact(cluster: &TestCluster, rows: i64) {
    for v in 0..7 {
        let expected = cluster
            .query(&format!(
                "SELECT id FROM cars WHERE a + 0 = {v} ORDER BY id"
            ))
            .await
            .unwrap();
        let n: usize = expected.iter().map(|b| b.num_rows()).sum();
        assert!(n > 0 && (n as i64) < rows);
        for column in ["a", "b", "c"] {
            let sql = format!("SELECT id FROM cars WHERE {column} = {v} ORDER BY id");
            let plan = plan_text(&cluster.query(&format!("EXPLAIN {sql}")).await.unwrap());
            assert!(plan.contains("index=by_"), "{sql} uses no index:\n{plan}");
            let got = cluster.query(&sql).await.unwrap();
            if let Err(e) = compare_rows(&got, &expected, 0.0) {
                panic!("{sql}: {e}");
            }
        }
    }
    let total = single_i64(&cluster.query("SELECT count(*) FROM cars").await.unwrap());
    assert_eq!(total, rows);
}

/// `COMPACT TABLE` merges each partition's files into one, for the rows,
/// the LOCAL index parts and the GLOBAL index partitions; every index still
/// finds exactly its rows (entries naming merged-away files are forwarded,
/// ASYNC outbox entries applied after the merge too), across a second
/// compaction and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_every_index_exact() {
    let cluster = TestCluster::builder().workers(3).start().await;
    cluster
        .run_all(&[
        "CREATE TABLE cars (id BIGINT, a BIGINT, b BIGINT, c BIGINT) PARTITION BY HASH (id) PARTITIONS 3",
        "INSERT INTO cars SELECT value, value % 7 AS a, value % 7 AS b, value % 7 AS c FROM range(300)",
        "CREATE INDEX by_a ON cars (a) LOCAL",
        "CREATE INDEX by_b ON cars (b) GLOBAL SYNC PARTITIONS 2",
        "CREATE INDEX by_c ON cars (c) GLOBAL ASYNC PARTITIONS 2",
        "SET tessera.index_read = 'fresh'",
        ])
        .await;
    let compact = async |cluster: &TestCluster| {
        let done = cluster.query("COMPACT TABLE cars").await.unwrap();
        let b = &done[0];
        let names = b.column_by_name("name").unwrap().as_string::<i32>();
        let merged = b
            .column_by_name("files_merged")
            .unwrap()
            .as_primitive::<UInt64Type>();
        (0..b.num_rows())
            .map(|i| (names.value(i).to_string(), merged.value(i)))
            .collect::<Vec<_>>()
    };
    let mut rows = 300;
    for round in 0..2 {
        // Entries of these rows wait in the outbox while the files they
        // name are merged away.
        cluster.cluster().coordinator().pause_index_apply(true);
        for _ in 0..30 {
            cluster
                .query(&format!(
                    "INSERT INTO cars VALUES ({rows}, {v}, {v}, {v})",
                    v = rows % 7
                ))
                .await
                .unwrap();
            rows += 1;
        }
        let merged = compact(&cluster).await;
        assert_eq!(merged[0].0, "cars");
        assert!(merged[0].1 >= 30, "round {round}: {merged:?}");
        for (dir, files, _) in files_per_partition(&cluster, "cars") {
            if dir.contains(".o") {
                continue;
            }
            assert_eq!(files, 1, "round {round}: {dir}");
        }
        cluster.cluster().coordinator().pause_index_apply(false);
        check_indexes_exact(&cluster, rows).await;
    }
    // Nothing left to merge but the entries the ASYNC index applied since.
    let merged = compact(&cluster).await;
    assert!(
        merged.iter().all(|(name, n)| *n == 0 || name == "by_c"),
        "{merged:?}"
    );
    let cluster = cluster.restart().await;
    cluster
        .query("SET tessera.index_read = 'fresh'")
        .await
        .unwrap();
    check_indexes_exact(&cluster, rows).await;
    let e = cluster.query("COMPACT TABLE nope").await.unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
    // Every merge records where merged files went (index entries may name
    // them, and a late commit of a merged-away write must find it done),
    // for a table without indexes too.
    cluster
        .query("CREATE TABLE plain (id BIGINT) PARTITION BY HASH (id) PARTITIONS 2")
        .await
        .unwrap();
    for id in 0..6 {
        cluster
            .query(&format!("INSERT INTO plain VALUES ({id})"))
            .await
            .unwrap();
    }
    cluster.query("COMPACT TABLE plain").await.unwrap();
    let forwards = |table: &str| {
        let mut n = 0;
        for (dir, files, path) in files_per_partition(&cluster, table) {
            if dir.contains(".i") || dir.contains(".o") {
                continue;
            }
            assert_eq!(files, 1, "{dir}");
            let m = tessera_worker::read_manifest(&path).unwrap();
            n += usize::from(!m.moved.is_empty());
        }
        n
    };
    assert_eq!(forwards("plain"), 2);
    // tessera.compactions lists the merge just asked for, finished.
    let listed = cluster
        .query(
            "SELECT state, partitions_done, partitions_total, files_merged \
             FROM tessera.compactions WHERE table_name = 'plain' AND trigger = 'COMPACT TABLE'",
        )
        .await
        .unwrap();
    let b = &listed[0];
    assert_eq!(b.num_rows(), 1);
    assert_eq!(b.column(0).as_string::<i32>().value(0), "done");
    let u32s = |i: usize| {
        b.column(i)
            .as_primitive::<arrow::datatypes::UInt32Type>()
            .value(0)
    };
    assert_eq!((u32s(1), u32s(2)), (2, 2));
    assert_eq!(b.column(3).as_primitive::<UInt64Type>().value(0), 6);
    assert_eq!(forwards("cars"), 3);
    assert_eq!(
        single_i64(&cluster.query("SELECT sum(id) FROM plain").await.unwrap()),
        15
    );
    cluster.stop().await;
}
