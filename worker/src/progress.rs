//! What the scans of each running query have read on this worker so far:
//! rows, and their bytes as Arrow holds them in memory, by query id. The coordinator sums them
//! over the workers for a query's progress (`tessera.progress`); a shell
//! draws them as its progress bar.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A query's scans are forgotten this long after they last read a row.
const KEEP: Duration = Duration::from_secs(600);
/// The forgotten are looked for at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Rows and bytes one query's scans read here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanCount {
    pub rows: u64,
    pub bytes: u64,
}

/// Per query id, what its scans read on this worker.
/// Only statements a client tagged to follow them are counted (see the
/// coordinator's `progress`), so the map stays small.
#[derive(Debug, Default)]
pub struct ScanProgress {
    queries: Mutex<Queries>,
}

#[derive(Debug, Default)]
struct Queries {
    counts: HashMap<String, (ScanCount, Instant)>,
    pruned: Option<Instant>,
}

impl ScanProgress {
    /// Counts a batch a scan of `query` read.
    pub fn add(&self, query: &str, rows: u64, bytes: u64) {
        let Ok(mut queries) = self.queries.lock() else {
            return;
        };
        let now = Instant::now();
        match queries.counts.get_mut(query) {
            Some((count, at)) => {
                count.rows += rows;
                count.bytes += bytes;
                *at = now;
            }
            None => {
                if queries
                    .pruned
                    .is_none_or(|t| now.duration_since(t) >= PRUNE_EVERY)
                {
                    queries
                        .counts
                        .retain(|_, (_, at)| now.duration_since(*at) < KEEP);
                    queries.pruned = Some(now);
                }
                queries
                    .counts
                    .insert(query.to_string(), (ScanCount { rows, bytes }, now));
            }
        }
    }

    /// What the scans of each of `queries` read here (zero if none ran).
    pub fn of(&self, queries: &[String]) -> Vec<ScanCount> {
        let Ok(known) = self.queries.lock() else {
            return vec![ScanCount::default(); queries.len()];
        };
        queries
            .iter()
            .map(|q| known.counts.get(q).map(|(c, _)| *c).unwrap_or_default())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_query() {
        let p = ScanProgress::default();
        p.add("a", 10, 100);
        p.add("b", 1, 1);
        p.add("a", 5, 50);
        let asked = ["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(
            p.of(&asked),
            [
                ScanCount {
                    rows: 15,
                    bytes: 150
                },
                ScanCount { rows: 1, bytes: 1 },
                ScanCount::default()
            ]
        );
    }
}
