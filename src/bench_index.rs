//! `tessera bench index`: the write/read trade-off of each index kind on a
//! cluster of its own. One table per kind (none, LOCAL, GLOBAL SYNC,
//! GLOBAL ASYNC), the same rows in each; then single-row INSERTs and
//! point lookups through the Flight SQL client, timed one by one.

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
}

/// Rows per value of the indexed column: a lookup matches about this many.
const ROWS_PER_VALUE: u64 = 4;

const KINDS: [(&str, &str); 4] = [
    ("none", ""),
    ("LOCAL", "LOCAL"),
    ("GLOBAL SYNC", "GLOBAL SYNC"),
    ("GLOBAL ASYNC", "GLOBAL ASYNC"),
];

struct Row {
    kind: &'static str,
    backfill_ms: Option<f64>,
    inserts_per_s: f64,
    insert_p50: f64,
    insert_p99: f64,
    write_partitions: f64,
    lookup_partitions: String,
    lookup_p50: f64,
    lookup_p99: f64,
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

pub async fn run(b: IndexBench) -> Result<(), String> {
    if b.inserts == 0 || b.lookups == 0 {
        return Err("--inserts and --lookups must be at least 1".into());
    }
    let scratch = std::env::temp_dir().join(format!("tessera-bench-index-{}", std::process::id()));
    let result = bench(&b, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn bench(b: &IndexBench, scratch: &std::path::Path) -> Result<(), String> {
    let cluster = crate::bench::start_cluster(b.workers, scratch).await?;
    eprintln!(
        "bench: cluster of {} workers on {}, {} rows per table, {} partitions",
        b.workers, cluster.addr, b.rows, b.partitions
    );
    let mut client = Client::connect(&cluster.addr.to_string()).await?;
    let values = (b.rows / ROWS_PER_VALUE).max(1);
    let mut out = vec![];
    for (i, (kind, clause)) in KINDS.iter().enumerate() {
        let t = format!("cars{i}");
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

        // Single-row inserts.
        let coordinator = cluster.coordinator();
        let (w0, p0) = coordinator.catalog().write_fanout();
        let mut latencies = vec![];
        let mut max_lag = 0u64;
        let started = Instant::now();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..b.inserts {
            let id = b.rows + n as u64;
            let color = next(&mut seed) % values;
            let sql = format!("INSERT INTO {t} VALUES ({id}, {color}, 'new')");
            let t0 = Instant::now();
            client.query(&sql).await?;
            latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
            if *kind == "GLOBAL ASYNC" {
                max_lag = max_lag.max(lag_entries(&coordinator.catalog().state()));
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let (w1, p1) = coordinator.catalog().write_fanout();
        let lag = if *kind == "GLOBAL ASYNC" {
            let t0 = Instant::now();
            while lag_entries(&coordinator.catalog().state()) > 0 {
                if t0.elapsed() > Duration::from_secs(60) {
                    return Err("the ASYNC index did not catch up within 60 s".into());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Some((max_lag, t0.elapsed().as_secs_f64() * 1000.0))
        } else {
            None
        };

        // Point lookups.
        let probe = |seed: &mut u64| next(seed) % values;
        let sample = format!("SELECT count(*) FROM {t} WHERE color = 42");
        let plan = client.query(&format!("EXPLAIN {sample}")).await?;
        let lookup_partitions = touched(&plan.batches);
        let mut lookups = vec![];
        for _ in 0..b.lookups {
            let v = probe(&mut seed);
            let sql = format!("SELECT count(*) FROM {t} WHERE color = {v}");
            let t0 = Instant::now();
            let r = client.query(&sql).await?;
            lookups.push(t0.elapsed().as_secs_f64() * 1000.0);
            if r.batches.iter().map(|b| b.num_rows()).sum::<usize>() != 1 {
                return Err(format!("{sql} returned no count"));
            }
        }
        let row = Row {
            kind,
            backfill_ms,
            inserts_per_s: b.inserts as f64 / elapsed,
            insert_p50: percentile(&latencies, 0.5),
            insert_p99: percentile(&latencies, 0.99),
            write_partitions: (p1 - p0) as f64 / (w1 - w0).max(1) as f64,
            lookup_partitions,
            lookup_p50: percentile(&lookups, 0.5),
            lookup_p99: percentile(&lookups, 0.99),
            lag,
        };
        eprintln!(
            "bench: {kind}: {:.0} inserts/s, lookup p50 {:.2} ms",
            row.inserts_per_s, row.lookup_p50
        );
        out.push(row);
    }
    cluster.stop().await;
    println!(
        "{} rows per table ({} distinct colors), {} partitions, {} workers; \
         {} single-row INSERTs and {} lookups `WHERE color = v` per kind",
        b.rows,
        (b.rows / ROWS_PER_VALUE).max(1),
        b.partitions,
        b.workers,
        b.inserts,
        b.lookups
    );
    println!("{}", table(&out));
    Ok(())
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

fn table(rows: &[Row]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "index",
        "create (backfill) ms",
        "inserts/s",
        "insert p50 ms",
        "insert p99 ms",
        "partitions per insert",
        "lookup partitions (index + data)",
        "lookup p50 ms",
        "lookup p99 ms",
        "async lag (max entries, drain ms)",
    ]);
    for r in rows {
        t.add_row(vec![
            r.kind.to_string(),
            r.backfill_ms.map_or("-".into(), |v| format!("{v:.0}")),
            format!("{:.0}", r.inserts_per_s),
            format!("{:.2}", r.insert_p50),
            format!("{:.2}", r.insert_p99),
            format!("{:.2}", r.write_partitions),
            r.lookup_partitions.clone(),
            format!("{:.2}", r.lookup_p50),
            format!("{:.2}", r.lookup_p99),
            r.lag.map_or("-".into(), |(n, ms)| format!("{n}, {ms:.0}")),
        ]);
    }
    for i in 1..10 {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}
