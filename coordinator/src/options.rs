//! Tessera's session options, set with `SET tessera.<name> = <value>` and
//! listed by `SHOW ALL` beside DataFusion's.
//!
//! | option                               | default | meaning                                   |
//! |--------------------------------------|---------|-------------------------------------------|
//! | `tessera.broadcast_threshold_bytes`  | 16 MiB  | a join side estimated at most this large is sent whole to every task (broadcast); larger sides are shuffled. 0 never broadcasts. |
//! | `tessera.index_read`                 | `eventual` | reads through a GLOBAL ASYNC index: `eventual` reads it as it is (it may miss the latest writes); `fresh` waits until it has applied every write that began before the query. |
//! | `tessera.index_apply`                | `running` | the background apply of GLOBAL ASYNC index outboxes: `paused` stops it (rows are still acknowledged and their entries kept in the outboxes), `running` resumes it. Not kept across restarts. |
//! | `tessera.compaction`                 | `running` | the background compactor: `paused` stops it (`COMPACT TABLE` still works), `running` resumes it. Not kept across restarts. |
//! | `tessera.rebalance_rate`             | `unlimited` | bytes per second a partition copy into one worker may take, shared by every copy into it (rebalance moves, added copies, catch-ups): `'64MB/s'`, `'64MiB/s'`, `'unlimited'`. For the coordinator, not kept across restarts. |
//! | `tessera.auto_rebalance`             | `off`   | `on` applies a rebalance plan by itself when a worker joins or drains (a worker that is merely down moves nothing). For the coordinator, not kept across restarts. |
//! | `tessera.ansi`                       | `true`  | ANSI SQL arithmetic: integer overflow, invalid casts and integer division by zero are errors; `false` wraps, gives NULL and NULL (see `ansi.rs`). |
//!
//! The estimate is the stored (Parquet) size of the partitions a scan
//! keeps, scaled by the share of columns it reads.

use datafusion::common::config::ConfigExtension;
use datafusion::common::extensions_options;
use datafusion::execution::SessionState;

extensions_options! {
    /// Tessera's options.
    pub struct TesseraOptions {
        /// Join sides estimated at most this many bytes are broadcast.
        pub broadcast_threshold_bytes: u64, default = 16 * 1024 * 1024
        /// Reads through a GLOBAL ASYNC index: 'eventual' reads it as it
        /// is; 'fresh' first waits until it has applied every write that
        /// began before the query.
        pub index_read: String, default = "eventual".to_string()
        /// The background apply of GLOBAL ASYNC outboxes: 'running' or
        /// 'paused' (entries wait in the outboxes).
        pub index_apply: String, default = "running".to_string()
        /// The background compactor: 'running' or 'paused'.
        pub compaction: String, default = "running".to_string()
        /// Bytes per second a partition copy into one worker may take
        /// ('64MB/s'), shared by every copy into it; 'unlimited' by default.
        pub rebalance_rate: String, default = "unlimited".to_string()
        /// 'on' applies a rebalance plan by itself when a worker joins or
        /// drains; 'off' (the default) waits for REBALANCE APPLY.
        pub auto_rebalance: String, default = "off".to_string()
        /// ANSI SQL arithmetic: integer overflow, invalid casts and integer
        /// division by zero are errors. 'false' makes them wrap, NULL and
        /// NULL.
        pub ansi: bool, default = true
        /// Runs of a read-only query at most when a worker fails under it
        /// (each on a fresh plan, over the copies left): 1 runs it once.
        pub query_runs: u32, default = 6
    }
}

impl ConfigExtension for TesseraOptions {
    const PREFIX: &'static str = "tessera";
}

/// Turns Tessera's options into the DataFusion settings that carry them
/// out: DataFusion collects (and datafusion-distributed then broadcasts) a
/// hash join's build side when its estimated size is *below* the threshold.
pub fn apply(state: &mut SessionState) {
    let options = state.config_mut().options_mut();
    let threshold = options
        .extensions
        .get::<TesseraOptions>()
        .cloned()
        .unwrap_or_default()
        .broadcast_threshold_bytes;
    let optimizer = &mut options.optimizer;
    if threshold == 0 {
        optimizer.hash_join_single_partition_threshold = 0;
        optimizer.hash_join_single_partition_threshold_rows = 0;
    } else {
        optimizer.hash_join_single_partition_threshold =
            usize::try_from(threshold.saturating_add(1)).unwrap_or(usize::MAX);
        // Every Tessera scan estimates its bytes; the row rule is only for
        // sources that cannot.
        optimizer.hash_join_single_partition_threshold_rows = 128 * 1024;
    }
}
