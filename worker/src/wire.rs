//! Messages between the coordinator and a worker's Flight service. Commands
//! and action bodies are JSON; rows travel as Arrow IPC in Flight data.
//!
//! | call                 | body                        | answer                 |
//! |----------------------|-----------------------------|------------------------|
//! | DoPut `prepare`      | [`PrepareRequest`] + pieces | `Vec<DataFile>`        |
//! | DoAction `commit`    | [`CommitRequest`]           | nothing                |
//! | DoAction `abort`     | [`TxnRequest`]              | nothing                |
//! | DoAction `staged`    | nothing                     | `Vec<StagedWrite>`     |
//! | DoAction `stats`     | [`StatsRequest`]            | `Vec<PartitionStats>`  |
//! | DoAction `drop_table`| [`TableRequest`]            | nothing                |
//! | DoAction `truncate`  | [`TruncateRequest`]         | nothing                |
//! | DoAction `compact`   | [`CompactRequest`]          | `Option<Compaction>`   |
//! | DoAction `manifest`  | [`PartitionRequest`]        | `Manifest`             |
//! | DoAction `read_file` | [`FileRequest`]             | the bytes (raw)        |
//! | DoAction `install`   | [`InstallRequest`]          | [`Installed`]          |
//! | DoAction `drop_partition` | [`PartitionRequest`]   | nothing                |
//! | DoAction `progress`  | [`ProgressRequest`]         | `Vec<ScanCount>`       |
//! | DoGet                | a partition scan (protobuf) | rows                   |
//! | DoGet                | [`ENTRIES_TICKET`] + [`EntriesRequest`] | index entries |

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::storage::StagedWrite;

pub const ACTION_COMMIT: &str = "commit";
pub const ACTION_ABORT: &str = "abort";
pub const ACTION_STAGED: &str = "staged";
pub const ACTION_STATS: &str = "stats";
pub const ACTION_DROP_TABLE: &str = "drop_table";
pub const ACTION_TRUNCATE: &str = "truncate";
pub const ACTION_COMPACT: &str = "compact";
pub const ACTION_MANIFEST: &str = "manifest";
pub const ACTION_READ_FILE: &str = "read_file";
pub const ACTION_INSTALL: &str = "install";
pub const ACTION_DROP_PARTITION: &str = "drop_partition";
/// The table directories a worker holds (their storage keys).
pub const ACTION_TABLES: &str = "tables";
/// The partition directories a worker holds, by table directory.
pub const ACTION_PARTITIONS: &str = "partitions";
/// What the scans of some running queries read on a worker so far.
pub const ACTION_PROGRESS: &str = "progress";

/// Queries, by id, whose scans' progress is asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgressRequest {
    pub queries: Vec<String>,
}

/// Starts a `DoGet` ticket asking for the index entries of a partition's
/// older rows (a backfill); other tickets are partition scans.
pub const ENTRIES_TICKET: &[u8] = b"tessera-index-entries:";

/// The index entries of one partition's rows written up to `max_txn`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntriesRequest {
    pub table: String,
    pub partition: u32,
    /// Indexed columns and their Arrow types (as Arrow prints them).
    pub columns: Vec<(String, String)>,
    /// Add `__part` (global indexes).
    pub with_part: bool,
    pub max_txn: u64,
}

impl EntriesRequest {
    /// The entry schema: the indexed columns, `__part`, `__file`, `__row`.
    pub fn schema(&self) -> Result<SchemaRef> {
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let mut fields = vec![];
        for (name, ty) in &self.columns {
            let ty: DataType = ty.parse()?;
            fields.push(Field::new(name, ty, true));
        }
        if self.with_part {
            fields.push(Field::new(
                tessera_sql::PART_COLUMN,
                DataType::UInt32,
                false,
            ));
        }
        fields.push(Field::new(
            tessera_sql::FILE_COLUMN,
            DataType::UInt64,
            false,
        ));
        fields.push(Field::new(tessera_sql::ROW_COLUMN, DataType::UInt32, false));
        Ok(Arc::new(Schema::new(fields)))
    }
}

/// The largest gRPC message either side accepts.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Prepares a worker's share of a write (the DoPut command): one or more
/// pieces, each the rows of one partition of one table (or index part).
/// Each piece's rows follow a schema message whose `app_metadata` is its
/// [`PieceHeader`], so a write and its LOCAL index entries travel in one
/// call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareRequest {
    pub txn: u64,
}

/// Where one piece of a prepare goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PieceHeader {
    pub table: String,
    pub partition: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitRequest {
    pub txn: u64,
    pub writes: Vec<StagedWrite>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TxnRequest {
    pub txn: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsRequest {
    pub table: String,
    pub partitions: Vec<u32>,
    /// The asking statement's snapshot's decided transactions, committed
    /// here first if they have not landed yet (resolve on read): the sizes
    /// then count every acknowledged write.
    #[serde(default)]
    pub decided: Vec<u64>,
}

/// Drop the files of transactions up to `max_txn` from some partitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TruncateRequest {
    pub table: String,
    pub partitions: Vec<u32>,
    pub max_txn: u64,
}

/// Merge the named files of one partition into a staged file of `txn`
/// (committed like a write).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompactRequest {
    pub txn: u64,
    pub table: String,
    pub partition: u32,
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableRequest {
    pub table: String,
}

/// One partition of a table (or index) key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionRequest {
    pub table: String,
    pub partition: u32,
}

/// A piece of a partition's file, from `offset` on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRequest {
    pub table: String,
    pub partition: u32,
    pub name: String,
    pub offset: u64,
}

/// Take `manifest` (the replica at `source`'s) as this partition's,
/// copying from `source` the files it lists that are not here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallRequest {
    pub table: String,
    pub partition: u32,
    pub source: String,
    pub manifest: crate::storage::Manifest,
    /// Bytes per second this copy may take at most, shared with every
    /// other copy into the worker (0: no limit).
    #[serde(default)]
    pub rate: u64,
}

/// What an install copied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Installed {
    pub files: u64,
    pub bytes: u64,
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| DataFusionError::Internal(format!("encoding: {e}")))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        DataFusionError::Execution(format!(
            "malformed message from a Tessera peer ({e}); are both ends the same Tessera version?"
        ))
    })
}
