//! Data generators for Tessera: the demo schema of `tessera serve --demo`.

mod demo;

pub use demo::{DemoTable, demo_tables};
