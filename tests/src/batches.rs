//! What the concurrency tests check reads against: each batch written is
//! a known number of rows with a known sum of keys, so a read grouped by
//! batch shows whether it saw a batch whole, in part or twice.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;

/// The seed of a concurrency test: `TESSERA_SEED`, or the clock. Printed,
/// so a failing run can be repeated.
pub fn seed() -> u64 {
    let seed = std::env::var("TESSERA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("seed = {seed} (TESSERA_SEED={seed} repeats this run)");
    seed
}

/// The (batch, count, sum of keys) rows of a query grouped by batch.
pub fn groups(batches: &[RecordBatch]) -> BTreeMap<u64, (i64, i64)> {
    let mut out = BTreeMap::new();
    for batch in batches {
        let ids = batch.column(0).as_primitive::<Int64Type>();
        let counts = batch.column(1).as_primitive::<Int64Type>();
        let sums = batch.column(2).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            let sum = if sums.is_null(i) { 0 } else { sums.value(i) };
            out.insert(ids.value(i) as u64, (counts.value(i), sum));
        }
    }
    out
}

/// What is wrong with a read (`what`) that saw `seen`: a batch never
/// `started`, one not as `shape` says it was written (half visible or
/// doubled), or one acknowledged `before` the read began and missing.
pub fn whole_batches(
    what: &str,
    seen: &BTreeMap<u64, (i64, i64)>,
    started: &BTreeSet<u64>,
    before: &BTreeSet<u64>,
    shape: impl Fn(u64) -> (i64, i64),
) -> Vec<String> {
    let mut wrong = vec![];
    for (b, got) in seen {
        if !started.contains(b) {
            wrong.push(format!("{what}: batch {b} was never written"));
        } else if *got != shape(*b) {
            wrong.push(format!(
                "{what}: batch {b} is half visible or doubled: (rows, key sum) {got:?}, \
                 written {:?}",
                shape(*b)
            ));
        }
    }
    for b in before {
        if !seen.contains_key(b) {
            wrong.push(format!(
                "{what}: batch {b}, acknowledged before the read began, is missing"
            ));
        }
    }
    wrong
}
