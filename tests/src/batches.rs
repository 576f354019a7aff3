//! What the concurrency tests check reads against: each batch written is
//! a known number of rows with a known sum of keys, so a read grouped by
//! batch shows whether it saw a batch whole, in part or twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

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

/// What the writers and readers of a concurrency test share: the batches
/// begun, those acknowledged per table, and what went wrong.
#[derive(Default)]
pub struct Ledger {
    started: Mutex<BTreeSet<u64>>,
    acked: Mutex<BTreeMap<String, BTreeSet<u64>>>,
    violations: Mutex<Vec<String>>,
}

impl Ledger {
    /// Batch `b` is about to be written.
    pub fn start(&self, b: u64) {
        lock(&self.started).insert(b);
    }

    /// Batch `b` was acknowledged by `table`.
    pub fn ack(&self, table: &str, b: u64) {
        lock(&self.acked)
            .entry(table.to_string())
            .or_default()
            .insert(b);
    }

    /// The batches `table` acknowledged so far.
    pub fn acked(&self, table: &str) -> BTreeSet<u64> {
        lock(&self.acked).get(table).cloned().unwrap_or_default()
    }

    pub fn violation(&self, what: String) {
        lock(&self.violations).push(what);
    }

    /// Notes what is wrong with a read (see [`whole_batches`]).
    pub fn check(
        &self,
        what: &str,
        seen: &BTreeMap<u64, (i64, i64)>,
        before: &BTreeSet<u64>,
        shape: impl Fn(u64) -> (i64, i64),
    ) {
        let started = lock(&self.started).clone();
        for wrong in whole_batches(what, seen, &started, before, shape) {
            self.violation(wrong);
        }
    }

    /// Notes what is wrong with a final scan of `table`: anything
    /// [`Ledger::check`] finds, and a batch count other than the
    /// acknowledged one.
    pub fn check_final(
        &self,
        table: &str,
        scan: &BTreeMap<u64, (i64, i64)>,
        shape: impl Fn(u64) -> (i64, i64),
    ) {
        let acked = self.acked(table);
        self.check(&format!("final scan of {table}"), scan, &acked, shape);
        if scan.len() != acked.len() {
            self.violation(format!(
                "{table}: {} batches, {} acknowledged",
                scan.len(),
                acked.len()
            ));
        }
    }

    /// Fails the test with the first violations, if there were any.
    pub fn assert_none(&self, seed: u64) {
        let violations = lock(&self.violations).clone();
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
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
