//! `tessera bench tpch`: TPC-H on a cluster of its own against
//! single-process DataFusion on the same data as Parquet files, query by
//! query, with the fan-out the engine logged for each query.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use comfy_table::{CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use tessera_coordinator::{Cluster, ClusterConfig, QueryLog, QueryRecord};
use tessera_datasets::{TpchTable, tpch_query};

use crate::client::Client;
use crate::tpch;

pub struct TpchBench {
    pub sf: f64,
    pub workers: usize,
    pub partitions: u32,
    pub iterations: usize,
    /// Keep (or reuse) the Parquet files here instead of a temporary dir.
    pub parquet: Option<PathBuf>,
}

struct Row {
    query: usize,
    tessera_ms: f64,
    datafusion_ms: f64,
    partitions: u64,
    bytes_shuffled: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The log record of the query after `after`, once the coordinator has
/// collected its metrics from the workers.
async fn record_after(log: &QueryLog, after: u64) -> Option<QueryRecord> {
    for _ in 0..200 {
        if let Some(r) = log.snapshot().into_iter().rev().find(|r| r.seq > after) {
            return Some(r);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn last_id(log: &QueryLog) -> u64 {
    log.snapshot().last().map_or(0, |r| r.seq)
}

/// A benchmark's own cluster on loopback, its data under `scratch`.
pub async fn start_cluster(workers: usize, scratch: &std::path::Path) -> Result<Cluster, String> {
    Cluster::start(ClusterConfig {
        listen: "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
        workers,
        data_dir: scratch.join("cluster"),
        lease: tessera_coordinator::DEFAULT_LEASE,
        access: tessera_coordinator::Access::Insecure,
        first_password: None,
        tls: None,
        files: Default::default(),
    })
    .await
    .map_err(|e| e.to_string())
}

pub async fn run(b: TpchBench) -> Result<(), String> {
    if b.iterations == 0 {
        return Err("--iterations must be at least 1".into());
    }
    let scratch = std::env::temp_dir().join(format!("tessera-bench-{}", std::process::id()));
    let parquet_dir = b.parquet.clone().unwrap_or_else(|| scratch.join("parquet"));
    let result = bench(&b, &scratch, &parquet_dir).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn bench(
    b: &TpchBench,
    scratch: &std::path::Path,
    parquet_dir: &std::path::Path,
) -> Result<(), String> {
    let cluster = start_cluster(b.workers, scratch).await?;
    eprintln!(
        "bench: cluster of {} workers on {}, TPC-H SF {}",
        b.workers, cluster.addr, b.sf
    );
    let to = crate::ConnectArgs {
        connect: cluster.addr.to_string(),
        user: None,
        tls_ca: None,
    };
    tpch::load(&to, b.sf, b.partitions).await?;
    let have_parquet = TpchTable::ALL
        .iter()
        .all(|t| parquet_dir.join(format!("{}.parquet", t.name())).exists());
    if have_parquet && b.parquet.is_some() {
        eprintln!("bench: reusing Parquet files in {}", parquet_dir.display());
    } else {
        tpch::write_parquet(b.sf, parquet_dir)?;
    }
    let df = SessionContext::new();
    for t in TpchTable::ALL {
        let path = parquet_dir.join(format!("{}.parquet", t.name()));
        df.register_parquet(
            t.name(),
            path.to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    }

    let mut client = Client::connect(&cluster.addr.to_string()).await?;
    let log = Arc::clone(cluster.coordinator().query_log());
    let mut rows = vec![];
    for n in 1..=22 {
        let Some(sql) = tpch_query(n) else { continue };
        let mut tessera = vec![];
        let mut record = None;
        for _ in 0..b.iterations {
            let before = last_id(&log);
            let started = Instant::now();
            client
                .query(sql)
                .await
                .map_err(|e| format!("Q{n} on Tessera: {e}"))?;
            tessera.push(started.elapsed().as_secs_f64() * 1000.0);
            record = record_after(&log, before).await;
        }
        let mut datafusion = vec![];
        for _ in 0..b.iterations {
            let started = Instant::now();
            df.sql(sql)
                .await
                .map_err(|e| format!("Q{n} on DataFusion: {e}"))?
                .collect()
                .await
                .map_err(|e| format!("Q{n} on DataFusion: {e}"))?;
            datafusion.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let record = record.unwrap_or_default();
        let row = Row {
            query: n,
            tessera_ms: median(tessera),
            datafusion_ms: median(datafusion),
            partitions: record.partitions_touched,
            bytes_shuffled: record.bytes_shuffled,
        };
        eprintln!(
            "bench: Q{n:02} tessera {:.1} ms, datafusion {:.1} ms",
            row.tessera_ms, row.datafusion_ms
        );
        rows.push(row);
    }
    cluster.stop().await;
    println!(
        "TPC-H SF {}: {} workers, {} partitions per table, median of {} runs per query",
        b.sf, b.workers, b.partitions, b.iterations
    );
    println!("{}", table(&rows));
    Ok(())
}

fn table(rows: &[Row]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "query",
        "tessera ms",
        "datafusion ms",
        "ratio",
        "partitions touched",
        "bytes shuffled",
    ]);
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "-".into()
        }
    };
    for r in rows {
        t.add_row(vec![
            format!("Q{:02}", r.query),
            format!("{:.1}", r.tessera_ms),
            format!("{:.1}", r.datafusion_ms),
            ratio(r.tessera_ms, r.datafusion_ms),
            r.partitions.to_string(),
            r.bytes_shuffled.to_string(),
        ]);
    }
    let tessera: f64 = rows.iter().map(|r| r.tessera_ms).sum();
    let datafusion: f64 = rows.iter().map(|r| r.datafusion_ms).sum();
    t.add_row(vec![
        "total".to_string(),
        format!("{tessera:.1}"),
        format!("{datafusion:.1}"),
        ratio(tessera, datafusion),
        rows.iter().map(|r| r.partitions).sum::<u64>().to_string(),
        rows.iter()
            .map(|r| r.bytes_shuffled)
            .sum::<u64>()
            .to_string(),
    ]);
    for i in 1..6 {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}
