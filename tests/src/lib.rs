//! Test support for Tessera: `TestCluster` (a real coordinator and workers on
//! loopback ports over a temporary data dir), a Flight SQL client that
//! runs sqllogictest files against it, and reading and comparing results.

pub mod batches;
mod cluster;
mod compare;
pub mod corpus;
mod etcd;
mod slt;

pub use cluster::{TestCluster, TestClusterBuilder, query_url};
pub use compare::{Cell, compare_rows, plan_text, rows, single_i64};
pub use etcd::Etcd;
pub use slt::{FlightSqlDb, run_slt_file};
