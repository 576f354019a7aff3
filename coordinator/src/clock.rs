//! The clock transaction ids and timestamps are read from.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the epoch: the clock transaction ids are read from.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
