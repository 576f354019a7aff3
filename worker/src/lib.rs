//! A Tessera worker: partition storage (Parquet files behind manifests), the
//! worker's Flight service, Tessera's partition scan and its codec, and the
//! client the coordinator uses to reach a worker.

mod checked;
mod checked_sum;
mod client;
mod guard;
pub mod index;
mod kind;
pub mod membership;
mod pacer;
mod progress;
mod scan;
pub mod secret;
mod service;
mod snapshot;
mod storage;
pub mod tls;
mod unavailable;
pub mod wire;
mod yielding;

pub use checked::{checked_udf, register_checked};
pub use checked_sum::checked_sum_udaf;
pub use client::{
    PeerChannels, WorkerClient, call_timeout, deadline_for_bytes, flight_error, set_call_timeout,
    shared_channel,
};
pub use guard::check_plan;
pub use kind::{ErrorKind, kind_of};
pub use progress::{ScanCount, ScanProgress};
pub use scan::{
    IndexRead, LocalStore, PartitionScanExec, ScanPart, ScanSpec, SizeEstimate, TesseraCodec,
};
pub use service::{WorkerHandle, nodelay_incoming, start_worker, start_worker_with, to_status};
pub use snapshot::Snapshot;
pub use storage::{
    Compaction, DataFile, Manifest, MergeRule, PartitionStats, StagedWrite, Storage, read_manifest,
    sort_by_columns,
};
pub use unavailable::{WorkerUnavailable, is_worker_failure};
pub use yielding::{YieldingSliceExec, running_loop_joins};
