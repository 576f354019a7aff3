//! Test support for Tessera: `TestCluster` (a real coordinator and workers on
//! loopback ports over a temporary data dir) and a Flight SQL client that
//! runs sqllogictest files against it.

mod cluster;
mod slt;

pub use cluster::{TestCluster, TestClusterBuilder};
pub use slt::{FlightSqlDb, run_slt_file};
