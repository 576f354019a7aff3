//! `tessera bench index`: the write/read trade-off of each index kind on a
//! cluster of its own. One table per kind (none, LOCAL, GLOBAL SYNC,
//! GLOBAL ASYNC), the same rows in each; then, through the Flight SQL
//! client, single-row INSERTs from one writer (latency), from several at
//! once (throughput, and the CPU time each insert costs the cluster), and
//! point lookups.

use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use comfy_table::{CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use datafusion::common::DataFusionError;
use tessera_coordinator::CatalogState;

use crate::client::Client;

pub struct IndexBench {
    pub rows: u64,
    pub partitions: u32,
    pub workers: usize,
    pub inserts: usize,
    pub lookups: usize,
    pub writers: usize,
}

/// Rows per value of the indexed column: a lookup matches about this many.
const ROWS_PER_VALUE: u64 = 4;

const KINDS: [(&str, &str); 4] = [
    ("none", ""),
    ("LOCAL", "LOCAL"),
    ("GLOBAL SYNC", "GLOBAL SYNC"),
    ("GLOBAL ASYNC", "GLOBAL ASYNC"),
];

#[derive(Default)]
struct Row {
    kind: &'static str,
    backfill_ms: Option<f64>,
    /// One writer: inserts over the time they took.
    serial_per_s: f64,
    insert_latencies: Vec<f64>,
    write_partitions: f64,
    write_workers: f64,
    /// `--writers` clients at once.
    concurrent_per_s: f64,
    /// ... and the statements per transaction they made (group commit).
    per_txn: f64,
    cpu_ms_per_insert: Option<f64>,
    compact_ms: f64,
    lookup_partitions: String,
    lookups: Vec<f64>,
    lag: Option<(u64, f64)>,
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0.0)
}

/// A fixed pseudo-random sequence, so runs are comparable.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// CPU time this process (cluster and clients alike) has used, in seconds,
/// from `/proc/self/stat` (Linux only).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses: utime and
    // stime are the 12th and 13th, in USER_HZ (100 per second) ticks.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

pub async fn run(b: IndexBench) -> Result<(), String> {
    if b.inserts == 0 || b.lookups == 0 || b.writers == 0 {
        return Err("--inserts, --lookups and --writers must be at least 1".into());
    }
    let scratch = std::env::temp_dir().join(format!("tessera-bench-index-{}", std::process::id()));
    let result = bench(&b, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// The kinds are measured in turns (one insert or lookup for each in
/// rotation), so a slow spell of the machine weighs on all of them alike.
async fn bench(b: &IndexBench, scratch: &std::path::Path) -> Result<(), String> {
    let cluster = crate::bench::start_cluster(b.workers, scratch).await?;
    eprintln!(
        "bench: cluster of {} workers on {}, {} rows per table, {} partitions",
        b.workers, cluster.addr, b.rows, b.partitions
    );
    let coordinator = cluster.coordinator();
    let catalog = coordinator.catalog();
    let mut client = Client::connect(&cluster.addr.to_string()).await?;
    // Merges are measured apart (COMPACT TABLE before the lookups), not in
    // whichever kind's insert round they happen to fall.
    client.query("SET tessera.compaction = 'paused'").await?;
    let values = (b.rows / ROWS_PER_VALUE).max(1);
    let table = |i: usize| format!("cars{i}");
    let mut out: Vec<Row> = vec![];
    for (i, (kind, clause)) in KINDS.iter().enumerate() {
        let t = table(i);
        client
            .query(&format!(
                "CREATE TABLE {t} (id BIGINT, color BIGINT, model VARCHAR) \
                 PARTITION BY HASH (id) PARTITIONS {}",
                b.partitions
            ))
            .await?;
        client
            .query(&format!(
                "INSERT INTO {t} SELECT value, (value * 7919) % {values}, 'model ' || (value % 97) \
                 FROM range({})",
                b.rows
            ))
            .await?;
        let backfill_ms = if clause.is_empty() {
            None
        } else {
            let started = Instant::now();
            client
                .query(&format!("CREATE INDEX {t}_color ON {t} (color) {clause}"))
                .await?;
            Some(started.elapsed().as_secs_f64() * 1000.0)
        };
        out.push(Row {
            kind,
            backfill_ms,
            ..Row::default()
        });
    }
    let is_async = |i: usize| KINDS[i].0 == "GLOBAL ASYNC";

    // Round 1: one writer, single-row inserts, one per kind in turn.
    eprintln!(
        "bench: {} single-row INSERTs per kind, one writer",
        b.inserts
    );
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut fanout = [tessera_coordinator::WriteFanout::default(); KINDS.len()];
    let mut max_lag = 0u64;
    for n in 0..b.inserts {
        let id = b.rows + n as u64;
        let color = next(&mut seed) % values;
        for (i, row) in out.iter_mut().enumerate() {
            let sql = format!("INSERT INTO {} VALUES ({id}, {color}, 'new')", table(i));
            let before = coordinator.write_fanout();
            let t0 = Instant::now();
            client.query(&sql).await?;
            row.insert_latencies
                .push(t0.elapsed().as_secs_f64() * 1000.0);
            let after = coordinator.write_fanout();
            fanout[i].writes += after.writes - before.writes;
            fanout[i].partitions += after.partitions - before.partitions;
            fanout[i].workers += after.workers - before.workers;
            if is_async(i) {
                max_lag = max_lag.max(lag_entries(&catalog.state()));
            }
        }
    }
    for (row, f) in out.iter_mut().zip(fanout) {
        row.serial_per_s = 1000.0 * b.inserts as f64 / row.insert_latencies.iter().sum::<f64>();
        row.write_partitions = f.partitions as f64 / f.writes.max(1) as f64;
        row.write_workers = f.workers as f64 / f.writes.max(1) as f64;
    }
    let drain_ms = drain(catalog).await?;
    for (i, row) in out.iter_mut().enumerate() {
        if is_async(i) {
            row.lag = Some((max_lag, drain_ms));
        }
    }

    // Round 2: `--writers` clients at once, each kind on its own (twice,
    // in opposite orders), CPU time counted until ASYNC entries are applied.
    eprintln!(
        "bench: {} INSERTs per kind from {} writers at once",
        b.inserts, b.writers
    );
    let mut elapsed = [0f64; KINDS.len()];
    let mut grouped = [tessera_coordinator::WriteFanout::default(); KINDS.len()];
    let mut cpu = [Some(0f64); KINDS.len()];
    let order: Vec<usize> = (0..KINDS.len()).chain((0..KINDS.len()).rev()).collect();
    for (pass, i) in order.into_iter().enumerate() {
        let count = if pass < KINDS.len() {
            b.inserts / 2
        } else {
            b.inserts - b.inserts / 2
        };
        let first_id = b.rows
            + b.inserts as u64
            + if pass < KINDS.len() {
                0
            } else {
                (b.inserts / 2) as u64
            };
        let cpu0 = process_cpu_seconds();
        let fanout0 = coordinator.write_fanout();
        let t0 = Instant::now();
        let mut tasks = vec![];
        for w in 0..b.writers {
            let mut c = client.reconnect().await?;
            let t = table(i);
            let ids: Vec<u64> = (w..count)
                .step_by(b.writers)
                .map(|k| first_id + k as u64)
                .collect();
            tasks.push(tokio::spawn(async move {
                for id in ids {
                    let color = (id * 7919) % values;
                    c.query(&format!("INSERT INTO {t} VALUES ({id}, {color}, 'new')"))
                        .await?;
                }
                Ok::<(), String>(())
            }));
        }
        for task in tasks {
            task.await.map_err(|e| format!("a writer failed: {e}"))??;
        }
        elapsed[i] += t0.elapsed().as_secs_f64();
        let fanout = coordinator.write_fanout();
        grouped[i].writes += fanout.writes - fanout0.writes;
        grouped[i].transactions += fanout.transactions - fanout0.transactions;
        drain(catalog).await?;
        cpu[i] = match (cpu[i], cpu0, process_cpu_seconds()) {
            (Some(sum), Some(a), Some(b)) => Some(sum + (b - a)),
            _ => None,
        };
    }
    for (i, row) in out.iter_mut().enumerate() {
        row.concurrent_per_s = b.inserts as f64 / elapsed[i];
        row.per_txn = grouped[i].writes as f64 / grouped[i].transactions.max(1) as f64;
        row.cpu_ms_per_insert = cpu[i].map(|s| 1000.0 * s / b.inserts as f64);
    }

    // Lookups on compacted tables (what the background compactor leads
    // to), one per kind in turn.
    for (i, row) in out.iter_mut().enumerate() {
        let t0 = Instant::now();
        client.query(&format!("COMPACT TABLE {}", table(i))).await?;
        row.compact_ms = t0.elapsed().as_secs_f64() * 1000.0;
    }
    eprintln!("bench: {} lookups per kind", b.lookups);
    for (i, row) in out.iter_mut().enumerate() {
        let sample = format!("SELECT count(*) FROM {} WHERE color = 42", table(i));
        let plan = client.query(&format!("EXPLAIN {sample}")).await?;
        row.lookup_partitions = touched(&plan.batches);
    }
    for _ in 0..b.lookups {
        let v = next(&mut seed) % values;
        for (i, row) in out.iter_mut().enumerate() {
            let sql = format!("SELECT count(*) FROM {} WHERE color = {v}", table(i));
            let t0 = Instant::now();
            let r = client.query(&sql).await?;
            row.lookups.push(t0.elapsed().as_secs_f64() * 1000.0);
            if r.batches.iter().map(|b| b.num_rows()).sum::<usize>() != 1 {
                return Err(format!("{sql} returned no count"));
            }
        }
    }
    cluster.stop().await;
    println!(
        "{} rows per table ({} distinct colors), {} partitions, {} workers; per kind: \
         {} single-row INSERTs from one writer, {} from {} writers at once, COMPACT TABLE, \
         {} lookups `WHERE color = v`",
        b.rows, values, b.partitions, b.workers, b.inserts, b.inserts, b.writers, b.lookups
    );
    println!("{}", render(&out, b.writers));
    Ok(())
}

/// Waits until every ASYNC index has applied its outbox; how long it took.
async fn drain(catalog: &tessera_coordinator::Catalog) -> Result<f64, String> {
    let t0 = Instant::now();
    while lag_entries(&catalog.state()) > 0 {
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("the ASYNC index did not catch up within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

fn lag_entries(state: &Result<CatalogState, DataFusionError>) -> u64 {
    state.as_ref().map_or(0, |s| {
        s.index_stats
            .values()
            .map(|st| st.outbox_rows.saturating_sub(st.applied_rows))
            .sum()
    })
}

/// "index + data" partitions a lookup touches, read off its EXPLAIN.
fn touched(batches: &[RecordBatch]) -> String {
    let mut text = String::new();
    for b in batches {
        if let Some(c) = b.column_by_name("plan") {
            let c = c.as_string::<i32>();
            for i in 0..c.len() {
                text.push_str(c.value(i));
            }
        }
    }
    let after = |key: &str| {
        text.split(key)
            .nth(1)
            .and_then(|r| r.split([',', ' ', '\n']).next())
            .map(str::to_string)
    };
    match (after("index partitions="), after("data partitions=")) {
        (Some(i), Some(d)) => format!("{i} + {d}"),
        _ => text
            .split("PartitionScanExec")
            .nth(1)
            .and_then(|r| r.split("partitions=").nth(1))
            .and_then(|r| r.split([',', ' ', '\n']).next())
            .map_or("?".into(), |d| format!("- + {d}")),
    }
}

fn render(rows: &[Row], writers: usize) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "index".to_string(),
        "create (backfill) ms".into(),
        "inserts/s, 1 writer".into(),
        "insert p50 ms".into(),
        "insert p99 ms".into(),
        format!("inserts/s, {writers} writers"),
        "inserts per transaction".into(),
        "CPU ms per insert".into(),
        "partitions per insert".into(),
        "workers per insert".into(),
        "COMPACT TABLE ms".into(),
        "lookup partitions (index + data)".into(),
        "lookup p50 ms".into(),
        "lookup p99 ms".into(),
        "async lag (max entries, drain ms)".into(),
    ]);
    for r in rows {
        t.add_row(vec![
            r.kind.to_string(),
            r.backfill_ms.map_or("-".into(), |v| format!("{v:.0}")),
            format!("{:.0}", r.serial_per_s),
            format!("{:.2}", percentile(&r.insert_latencies, 0.5)),
            format!("{:.2}", percentile(&r.insert_latencies, 0.99)),
            format!("{:.0}", r.concurrent_per_s),
            format!("{:.2}", r.per_txn),
            r.cpu_ms_per_insert
                .map_or("?".into(), |v| format!("{v:.2}")),
            format!("{:.2}", r.write_partitions),
            format!("{:.2}", r.write_workers),
            format!("{:.0}", r.compact_ms),
            r.lookup_partitions.clone(),
            format!("{:.2}", percentile(&r.lookups, 0.5)),
            format!("{:.2}", percentile(&r.lookups, 0.99)),
            r.lag.map_or("-".into(), |(n, ms)| format!("{n}, {ms:.0}")),
        ]);
    }
    for i in 1..15 {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}
