//! `tessera load tpch`: TPC-H into a running cluster or into Parquet files,
//! with a progress bar per table.

use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use tessera_datasets::{TpchTable, load_tpch};

use crate::client::Client;

fn bar(table: TpchTable, sf: f64) -> Result<ProgressBar, String> {
    let bar = ProgressBar::new(table.rows(sf));
    bar.set_style(
        ProgressStyle::with_template("{msg:<9} [{bar:30}] {pos:>9}/{len} rows {elapsed:>4}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    bar.set_message(table.name());
    Ok(bar)
}

fn check_sf(sf: f64) -> Result<(), String> {
    if sf.is_finite() && sf > 0.0 {
        Ok(())
    } else {
        Err(format!(
            "--sf must be a positive number (for example 0.1 or 1), not {sf}"
        ))
    }
}

/// Creates and loads the 8 tables into the cluster at `connect`.
pub async fn load(to: &crate::ConnectArgs, sf: f64, partitions: u32) -> Result<(), String> {
    check_sf(sf)?;
    if partitions == 0 {
        return Err("--partitions must be at least 1".into());
    }
    let mut client = Client::connect_as(to).await?;
    let started = Instant::now();
    let mut current: Option<(TpchTable, ProgressBar)> = None;
    let mut total = 0;
    let mut failure = None;
    load_tpch(client.flight(), sf, partitions, |table, rows| {
        if current.as_ref().map(|(t, _)| *t) != Some(table) {
            if let Some((_, b)) = current.take() {
                b.finish();
            }
            match bar(table, sf) {
                Ok(b) => current = Some((table, b)),
                Err(e) => failure = Some(e),
            }
        }
        if let Some((_, b)) = &current {
            // lineitem's length is an estimate: never show more than 100%.
            if rows > b.length().unwrap_or(0) {
                b.set_length(rows);
            }
            b.set_position(rows);
        }
        total = rows;
    })
    .await?;
    if let Some((_, b)) = current.take() {
        b.set_length(total);
        b.finish();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    eprintln!(
        "loaded TPC-H SF {sf} ({partitions} partitions per table) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes `<dir>/<table>.parquet` for the 8 tables.
pub fn write_parquet(sf: f64, dir: &Path) -> Result<(), String> {
    check_sf(sf)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let started = Instant::now();
    for table in TpchTable::ALL {
        let b = bar(table, sf)?;
        let mut rows = 0;
        table.write_parquet(sf, dir, |n| {
            rows += n;
            if rows > b.length().unwrap_or(0) {
                b.set_length(rows);
            }
            b.set_position(rows);
        })?;
        b.set_length(rows);
        b.finish();
    }
    eprintln!(
        "wrote TPC-H SF {sf} to {} in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
