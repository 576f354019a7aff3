//! A query's snapshot: exactly the statements acknowledged before it began.
//!
//! Every file a statement writes is named by the statement's transaction
//! id, so a worker decides which files a query sees from the snapshot the
//! plan carries, with no coordination of its own:
//!
//! ```text
//!   txn ids ─────────────────────────────────────────────────►
//!        5   7   9  11  13          through = 13
//!        ✓   ✗   ✓   ✓   ✗          in_flight = [7, 13]: not yet decided
//!                    ▲
//!                    decided = [11]: acknowledged, perhaps not committed
//!                    on every worker yet; a worker that still holds its
//!                    staged file commits it before it reads (resolve on read)
//! ```

use serde::{Deserialize, Serialize};

/// What one query reads. Transaction ids above `through` did not exist when
/// it was taken; those in `in_flight` were not decided yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The largest transaction id handed out when the snapshot was taken.
    pub through: u64,
    /// Transactions begun and not decided then, sorted: not visible.
    pub in_flight: Vec<u64>,
    /// Transactions decided (acknowledged) but not yet confirmed committed
    /// on every worker, sorted: visible, and committed by a worker that
    /// still holds them staged before it reads.
    pub decided: Vec<u64>,
    /// What an earlier snapshot saw, left out: the rows written after it
    /// (a split catching up on the writes made while it copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Box<Snapshot>>,
}

impl Snapshot {
    /// Whether the rows written by transaction `txn` are visible.
    pub fn sees(&self, txn: u64) -> bool {
        txn <= self.through
            && self.in_flight.binary_search(&txn).is_err()
            && self.since.as_ref().is_none_or(|s| !s.sees(txn))
    }

    /// What this snapshot sees and `earlier` did not.
    pub fn since(mut self, earlier: Snapshot) -> Self {
        self.since = Some(Box::new(earlier));
        self
    }

    /// Every transaction below this one is visible.
    pub fn xmin(&self) -> u64 {
        self.in_flight
            .first()
            .copied()
            .unwrap_or(self.through.saturating_add(1))
    }
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "through txn {}, {} in flight excluded, {} decided resolved on read",
            self.through,
            self.in_flight.len(),
            self.decided.len()
        )?;
        match &self.since {
            Some(s) => write!(f, ", since ({s})"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_what_was_decided_before_it() {
        let s = Snapshot {
            through: 13,
            in_flight: vec![7, 13],
            decided: vec![11],
            since: None,
        };
        let seen: Vec<u64> = (1..=15).filter(|t| s.sees(*t)).collect();
        assert_eq!(seen, [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12]);
        assert_eq!(s.xmin(), 7);
        let quiet = Snapshot {
            through: 4,
            ..Default::default()
        };
        assert_eq!(quiet.xmin(), 5);
        // Since `quiet`: what `s` sees above 4, and 3 of nothing.
        let later = s.clone().since(quiet);
        let seen: Vec<u64> = (1..=15).filter(|t| later.sees(*t)).collect();
        assert_eq!(seen, [5, 6, 8, 9, 10, 11, 12]);
        let earlier = Snapshot {
            through: 9,
            in_flight: vec![7],
            ..Default::default()
        };
        let seen: Vec<u64> = (1..=15)
            .filter(|t| s.clone().since(earlier.clone()).sees(*t))
            .collect();
        assert_eq!(seen, [10, 11, 12], "7 is not decided at s either");
    }
}
