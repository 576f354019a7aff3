//! The Tessera coordinator: metastore and catalog, distributed planning on
//! datafusion-distributed with Tessera's pruning and routing, the write
//! router, and the Flight SQL server. `Cluster` runs it with embedded workers.

mod ansi;
mod auth;
mod catalog;
mod catalog_state;
mod catch_up;
mod clock;
mod cluster;
mod colocate;
mod compact;
mod compaction_log;
mod copies;
mod distribution;
mod engine;
mod failpoint;
mod file_functions;
mod files;
mod flight_auth;
mod flight_common;
mod flight_ingest;
mod flight_members;
mod flight_meta;
mod flight_prepared;
mod flight_sessions;
mod flight_sql;
mod follow;
mod index;
mod membership;
mod metastore;
mod options;
mod panic_guard;
pub mod progress;
mod query_log;
mod query_map;
mod rebalance;
mod reshape;
mod retry;
mod schema;
mod server;
mod snapshot;
mod stages;
mod system_schema;
mod table;
mod write;
mod write_stream;
mod yield_points;

pub use auth::DEFAULT_TOKEN_TTL;
pub use catalog::{Catalog, SnapshotPin};
pub use catalog_state::{AdminState, CatalogState, IndexStats, MemberRecord, import_catalog_json};
pub use cluster::{Cluster, ClusterConfig};
pub use engine::{Coordinator, Planned, in_session};
pub use files::FileDirs;
pub use flight_auth::Access;
pub use follow::{Follower, TAKEOVER_GRACE};
pub use membership::{DEFAULT_LEASE, MemberView, WorkerState};
pub use metastore::{
    Compare, EtcdMetastore, FileMetastore, Metastore, Op, Versioned, WatchEvent, conformance,
    reserve, update_key,
};
pub use options::TesseraOptions;
pub use query_log::{QueryLog, QueryRecord};
pub use server::{CoordinatorServer, open_file_metastore};
pub use write::WriteFanout;

/// Scheduler ticks between two checks for network and timer events.
/// Tokio's default is 61; a stage's poll can take up to a few hundred
/// milliseconds (see `tessera_worker::YieldingSliceExec`), and under load a
/// cancelled query is only noticed at such a check.
const EVENT_INTERVAL: u32 = 8;

/// Stack of every runtime thread. Planning and running a statement recurse
/// as deep as its expressions nest (bounded by
/// `tessera_sql::MAX_EXPRESSION_DEPTH`); DataFusion's frames are large, and
/// 2 MiB (tokio's default) overflows at a few hundred levels. Untouched
/// stack pages cost no memory.
const THREAD_STACK_BYTES: usize = 64 << 20;

/// The runtime Tessera's processes run on.
pub fn runtime_builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .thread_stack_size(THREAD_STACK_BYTES);
    builder
}
