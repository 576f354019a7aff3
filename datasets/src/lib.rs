//! Data generators for Tessera: the demo schema of `tessera serve --demo`
//! and TPC-H, with a loader into a running cluster.

mod demo;
mod load;
mod tpch;

pub use demo::{DemoTable, Rng, demo_tables};
pub use load::{flight_error_text, ingest, load_tpch};
pub use tpch::{Batches, TpchTable, tpch_query};
