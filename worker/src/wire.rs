//! Messages between the coordinator and a worker's Flight service. Commands
//! and action bodies are JSON; rows travel as Arrow IPC in Flight data.
//!
//! | call                 | body                        | answer                 |
//! |----------------------|-----------------------------|------------------------|
//! | DoPut `prepare`      | [`PrepareRequest`] + rows   | [`DataFile`]           |
//! | DoAction `commit`    | [`CommitRequest`]           | nothing                |
//! | DoAction `abort`     | [`TxnRequest`]              | nothing                |
//! | DoAction `staged`    | nothing                     | `Vec<StagedWrite>`     |
//! | DoAction `stats`     | [`StatsRequest`]            | `Vec<PartitionStats>`  |
//! | DoAction `drop_table`| [`TableRequest`]            | nothing                |
//! | DoGet                | a partition scan (protobuf) | rows                   |

use datafusion::common::{DataFusionError, Result};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::storage::StagedWrite;

pub const ACTION_COMMIT: &str = "commit";
pub const ACTION_ABORT: &str = "abort";
pub const ACTION_STAGED: &str = "staged";
pub const ACTION_STATS: &str = "stats";
pub const ACTION_DROP_TABLE: &str = "drop_table";

/// The largest gRPC message either side accepts.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Prepares one partition's share of a write (the DoPut command).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareRequest {
    pub txn: u64,
    pub table: String,
    pub partition: u32,
    /// Columns to sort the rows by (the hybrid scheme's `CLUSTER BY`).
    pub sort_by: Vec<String>,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableRequest {
    pub table: String,
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
