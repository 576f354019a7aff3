//! `tessera simulate`: the placement model replayed on a key stream (no
//! cluster), printed as a table per step and strategy.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use indicatif::{ProgressBar, ProgressStyle};
use tessera_sql::simulate::{Config, Keys, Step, Strategy, simulate_with};

use crate::client::QueryResult;
use crate::output::{Format, write_result};

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// uniform, zipf:EXPONENT (as zipf:1.1) or timeseries.
    #[arg(long, default_value = "uniform")]
    keys: String,
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// FROM..TO: workers at the start, and how many join.
    #[arg(long, default_value = "4..12")]
    workers: String,
    /// all, or a comma list of mod, fixed (64 and 256), fixed:P,
    /// dynamic, proportional, proportional:n.
    #[arg(long, default_value = "all")]
    strategy: String,
    /// DYNAMIC: split a key range past this many rows [default: rows/64].
    #[arg(long)]
    split_rows: Option<u64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// `FROM..TO` (or one count, which joins nobody).
fn parse_workers(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("--workers '{s}': give FROM..TO, as 4..12 (from at least 1)");
    let (from, to) = s.split_once("..").unwrap_or((s, s));
    let from: u32 = from.trim().parse().map_err(|_| bad())?;
    let to: u32 = to.trim().parse().map_err(|_| bad())?;
    if from == 0 || to < from || to > 1000 {
        return Err(bad());
    }
    Ok((from, to))
}

pub fn run(args: SimulateArgs) -> Result<(), String> {
    let keys: Keys = args
        .keys
        .parse()
        .map_err(|e: datafusion::error::DataFusionError| e.strip_backtrace().to_string())?;
    let (from, to) = parse_workers(&args.workers)?;
    if args.rows == 0 || args.rows > 100_000_000 {
        return Err(format!("--rows {}: give 1 to 100000000", args.rows));
    }
    // By default a range splits past 1/64 of the rows: about 16 ranges
    // per worker at 4 workers.
    let split_rows = args.split_rows.unwrap_or((args.rows / 64).max(2));
    let strategies = Strategy::parse_list(&args.strategy, split_rows)
        .map_err(|e| e.strip_backtrace().to_string())?;
    let config = Config {
        keys,
        rows: args.rows,
        from,
        to,
        strategies: strategies.clone(),
        seed: args.seed,
    };
    let bar = ProgressBar::new(strategies.len() as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} strategies {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("simulate {} rows", args.rows));
    let steps =
        simulate_with(&config, |_| bar.inc(1)).map_err(|e| e.strip_backtrace().to_string())?;
    bar.finish_and_clear();
    let result = report(&steps, args.rows).map_err(|e| e.to_string())?;
    write_result(&mut std::io::stdout().lock(), &result, args.format)
}

fn round(v: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (v * scale).round() / scale
}

/// One row per step: rows moved (also as a share of all rows), the
/// optimum and the ratio, skew, partitions, and fan-out.
fn report(steps: &[Step], rows: u64) -> Result<QueryResult, arrow::error::ArrowError> {
    let pct = |v: u64| round(v as f64 * 100.0 / rows as f64, 2);
    let fields = [
        ("strategy", DataType::Utf8, false),
        ("step", DataType::UInt32, false),
        ("event", DataType::Utf8, false),
        ("workers", DataType::UInt32, false),
        ("moved_rows", DataType::UInt64, false),
        ("moved_pct", DataType::Float64, false),
        ("optimum_pct", DataType::Float64, false),
        ("moved_vs_optimum", DataType::Float64, true),
        ("max_mean_rows", DataType::Float64, false),
        ("partitions", DataType::UInt32, false),
        ("max_partitions_per_worker", DataType::UInt32, false),
        ("range_scan_partitions", DataType::Float64, false),
        ("range_scan_workers", DataType::Float64, false),
        ("point_read_partitions", DataType::Float64, false),
    ];
    let schema = Arc::new(Schema::new(
        fields
            .iter()
            .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
            .collect::<Vec<_>>(),
    ));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            steps.iter().map(|s| &s.strategy),
        )),
        Arc::new(UInt32Array::from_iter_values(steps.iter().map(|s| s.step))),
        Arc::new(StringArray::from_iter_values(
            steps.iter().map(|s| &s.event),
        )),
        Arc::new(UInt32Array::from_iter_values(
            steps.iter().map(|s| s.workers),
        )),
        Arc::new(UInt64Array::from_iter_values(
            steps.iter().map(|s| s.moved_rows),
        )),
        Arc::new(Float64Array::from_iter_values(
            steps.iter().map(|s| pct(s.moved_rows)),
        )),
        Arc::new(Float64Array::from_iter_values(
            steps.iter().map(|s| pct(s.optimum_rows)),
        )),
        Arc::new(Float64Array::from_iter(steps.iter().map(|s| {
            (s.optimum_rows > 0).then(|| round(s.moved_rows as f64 / s.optimum_rows as f64, 3))
        }))),
        Arc::new(Float64Array::from_iter_values(
            steps.iter().map(|s| round(s.max_mean_rows, 3)),
        )),
        Arc::new(UInt32Array::from_iter_values(
            steps.iter().map(|s| s.partitions),
        )),
        Arc::new(UInt32Array::from_iter_values(
            steps.iter().map(|s| s.max_partitions_per_worker),
        )),
        Arc::new(Float64Array::from_iter_values(
            steps.iter().map(|s| round(s.range_scan_partitions, 1)),
        )),
        Arc::new(Float64Array::from_iter_values(
            steps.iter().map(|s| round(s.range_scan_workers, 1)),
        )),
        Arc::new(Float64Array::from_iter_values(
            steps.iter().map(|s| s.point_read_partitions),
        )),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    Ok(QueryResult {
        schema,
        batches: vec![batch],
    })
}

#[cfg(test)]
mod tests {
    use super::parse_workers;

    #[test]
    fn worker_ranges_parse() {
        assert_eq!(parse_workers("4..12"), Ok((4, 12)));
        assert_eq!(parse_workers("5"), Ok((5, 5)));
        assert!(parse_workers("0..3").is_err());
        assert!(parse_workers("8..4").is_err());
        assert!(parse_workers("a..b").is_err());
    }
}
