//! The metastore: a small store of keys with revisions, the shape of etcd's
//! key-value API. Catalog, partition map, transaction decisions and counters
//! are separate keys; a write is a transaction of puts and deletes that
//! lands only if every compared key still has the revision it was read at
//! (compare-and-swap), and `watch` streams the changes under a prefix.
//!
//! ```text
//!   revision ──►  1        2          3              4
//!               put a    put b    put a, del b     put c
//!   key a: mod revision 3   key c: 4   key b: gone (deleted at 3)
//! ```
//!
//! The embedded implementation is [`FileMetastore`]: an append-only,
//! fsync'ed log with periodic snapshots, concurrent writes sharing fsyncs.
//! [`EtcdMetastore`] keeps the same keys in etcd, for coordinators on
//! several machines.
//! [`conformance`] is the suite every implementation passes.

mod conformance;
mod etcd;
mod file_log;

use std::collections::BTreeMap;

use async_trait::async_trait;
use datafusion::common::{DataFusionError, Result};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use conformance::conformance;
pub use etcd::{EtcdMetastore, LEADER_KEY};
pub use file_log::FileMetastore;

/// A value and the revision of the write that last changed its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: String,
    pub revision: u64,
}

/// One change of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put(String, String),
    Delete(String),
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put(k, _) | Op::Delete(k) => k,
        }
    }
}

/// A transaction's condition: `key` was last changed at `revision` (0: the
/// key does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub revision: u64,
}

/// A change seen by a watch: the key, its new value (`None`: deleted) and
/// the revision of the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub key: String,
    pub value: Option<String>,
    pub revision: u64,
}

/// Durable, consistent storage of keys. Reads see every write that returned
/// before them.
#[async_trait]
pub trait Metastore: Send + Sync + std::fmt::Debug {
    async fn get(&self, key: &str) -> Result<Option<Versioned>>;

    /// Every key starting with `prefix`, in key order.
    async fn range(&self, prefix: &str) -> Result<BTreeMap<String, Versioned>>;

    /// Applies `ops` atomically if every compare holds, durably when it
    /// returns: the new revision, or `None` (nothing written) if a compare
    /// failed.
    async fn commit(&self, compares: &[Compare], ops: &[Op]) -> Result<Option<u64>>;

    /// The changes under `prefix` from now on, in revision order.
    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>>;

    /// Whether other coordinators may share this store (and read at
    /// snapshots this one must respect after taking over the lead).
    fn shared(&self) -> bool {
        false
    }
}

/// Reads `key`, computes its next value with `change` (`None` deletes it)
/// and writes it if nobody changed the key meanwhile; runs `change` again
/// on the newer value until that holds. Returns what `change` returned.
pub async fn update_key<T>(
    store: &dyn Metastore,
    key: &str,
    mut change: impl FnMut(Option<&str>) -> Result<(Option<String>, T)>,
) -> Result<T> {
    loop {
        let current = store.get(key).await?;
        let (next, out) = change(current.as_ref().map(|v| v.value.as_str()))?;
        let compare = Compare {
            key: key.to_string(),
            revision: current.as_ref().map_or(0, |v| v.revision),
        };
        let op = match next {
            Some(value) => Op::Put(key.to_string(), value),
            None => Op::Delete(key.to_string()),
        };
        if store.commit(&[compare], &[op]).await?.is_some() {
            return Ok(out);
        }
    }
}

/// Reserves `count` values of the counter `key` (unique across everyone
/// sharing the store) and returns the first; the counter starts at `floor`
/// if it is lower.
pub async fn reserve(store: &dyn Metastore, key: &str, count: u64, floor: u64) -> Result<u64> {
    update_key(store, key, |current| {
        let next = match current {
            Some(v) => v.parse::<u64>().map_err(|e| {
                DataFusionError::Execution(format!(
                    "metastore counter {key} holds '{v}' ({e}); restore it from a backup"
                ))
            })?,
            None => 0,
        }
        .max(floor);
        let end = next.checked_add(count).ok_or_else(|| {
            DataFusionError::Execution(format!("metastore counter {key} is exhausted"))
        })?;
        Ok((Some(end.to_string()), next))
    })
    .await
}
