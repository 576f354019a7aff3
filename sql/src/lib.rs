//! Tessera's language and model: DDL on top of sqlparser, catalog types, the
//! stable partitioner and partition pruning. Pure logic, no I/O.

mod catalog;
mod ddl;
mod depth;
mod ident;
mod index;
mod key;
mod layout;
mod placeholders;
mod pruning;
mod replication;
mod scheme;
pub mod simulate;
pub mod size;
mod strategy;
mod text;

pub use catalog::{
    ColumnDef, MAX_PARTITIONS, PartitionMap, PartitionPlacement, Placements, TableDef,
};
pub use ddl::{
    CreateIndex, CreateTable, PartitionSpec, ScriptStatement, Statement, UserRole, WorkerAction,
    ends_statement, key_bound, parse_statement, redact, split_statements,
};
pub use depth::MAX_EXPRESSION_DEPTH;
pub use index::{FILE_COLUMN, IndexDef, IndexKind, IndexState, PART_COLUMN, ROW_COLUMN};
pub use key::{KeyValue, encode_array_value, is_key_type};
pub use layout::{KeyRange, PartitionLayout, SplitAt};
pub use placeholders::number_placeholders;
pub use pruning::prune_partitions;
pub use replication::{MAX_REPLICAS, Replication, WriteQuorum, place};
pub use scheme::{
    HASH_SEED, PartitionScheme, Partitioner, hash_partition, hash_range, range_partition,
};
pub use strategy::{DEFAULT_PER_WORKER, Strategy};
