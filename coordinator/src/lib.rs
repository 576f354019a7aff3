//! The Tessera coordinator: metastore and catalog, distributed planning on
//! datafusion-distributed with Tessera's pruning and routing, the write
//! router, and the Flight SQL server. `Cluster` runs it with embedded workers.

mod catalog;
mod cluster;
mod colocate;
mod distribution;
mod engine;
mod flight_sql;
mod index;
mod metastore;
mod options;
mod query_log;
mod stages;
mod table;
mod write;

pub use catalog::Catalog;
pub use cluster::{Cluster, ClusterConfig};
pub use engine::{Coordinator, Planned};
pub use metastore::{CatalogState, FileMetastore, Metastore};
pub use options::TesseraOptions;
pub use query_log::{QueryLog, QueryRecord};
