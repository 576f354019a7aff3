//! The metastore: catalog, partition map and the write decision log, behind
//! one trait. The embedded default keeps them in one JSON file in the
//! coordinator's data directory, replaced atomically on every change.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::PathBuf;

use datafusion::common::{DataFusionError, Result};
use serde::{Deserialize, Serialize};
use tessera_sql::{IndexDef, PartitionMap, TableDef};
use tessera_worker::{SizeEstimate, StagedWrite};

/// Everything the coordinator must remember across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogState {
    pub tables: BTreeMap<String, TableDef>,
    pub map: PartitionMap,
    /// `CREATE EXTERNAL TABLE` statements, replayed on start.
    pub external_tables: BTreeMap<String, String>,
    /// Writes decided to commit whose commit has not been confirmed by every
    /// worker yet: on restart they are committed again (commit is idempotent).
    pub decided: BTreeMap<u64, BTreeMap<String, Vec<StagedWrite>>>,
    /// Tables created so far: spreads the first partition of each, and
    /// gives each table its id.
    pub tables_created: u64,
    /// The largest transaction id ever decided: new ids are larger, even if
    /// the clock went back across a restart.
    #[serde(default)]
    pub last_txn: u64,
    /// Rows and stored bytes per table and partition, counted at each
    /// decided write: the planner's size estimates.
    #[serde(default)]
    pub stats: BTreeMap<String, BTreeMap<u32, SizeEstimate>>,
    /// Secondary indexes by name.
    #[serde(default)]
    pub indexes: BTreeMap<String, IndexDef>,
    /// Indexes created so far: gives each its id.
    #[serde(default)]
    pub indexes_created: u64,
    /// Entry counts and, for ASYNC indexes, how far the outbox is applied.
    #[serde(default)]
    pub index_stats: BTreeMap<String, IndexStats>,
}

/// Counters of one index, updated in the same metastore write that decides
/// the transaction they count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct IndexStats {
    /// Entries in the index.
    pub entries: u64,
    /// ASYNC: entries written to outboxes, and applied from them so far.
    pub outbox_rows: u64,
    pub applied_rows: u64,
    /// ASYNC: every outbox entry of a transaction up to this id is applied.
    pub applied_through: u64,
    /// ASYNC: the transaction of the oldest entry not applied yet, 0 when
    /// none is. A transaction id is its start in microseconds since the
    /// epoch, so the lag in seconds holds across restarts.
    #[serde(default)]
    pub pending_since: u64,
}

/// Durable storage of the [`CatalogState`].
pub trait Metastore: Send + Sync + std::fmt::Debug {
    fn load(&self) -> Result<CatalogState>;
    /// Replaces the stored state; durable when it returns.
    fn save(&self, state: &CatalogState) -> Result<()>;
}

/// The embedded metastore: `<data dir>/catalog.json`.
#[derive(Debug)]
pub struct FileMetastore {
    path: PathBuf,
}

impl FileMetastore {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| {
            DataFusionError::Execution(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        Ok(Self {
            path: dir.join("catalog.json"),
        })
    }
}

impl Metastore for FileMetastore {
    fn load(&self) -> Result<CatalogState> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                DataFusionError::Execution(format!(
                    "catalog {} is corrupt ({e}); restore it from a backup",
                    self.path.display()
                ))
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(CatalogState::default()),
            Err(e) => Err(DataFusionError::Execution(format!(
                "cannot read catalog {}: {e}",
                self.path.display()
            ))),
        }
    }

    fn save(&self, state: &CatalogState) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| DataFusionError::Internal(format!("catalog encoding: {e}")))?;
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            DataFusionError::Execution(format!(
                "cannot save catalog {}: {e}; nothing was changed",
                self.path.display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let m = FileMetastore::open(dir.path()).unwrap();
        assert_eq!(m.load().unwrap(), CatalogState::default());
        let mut s = CatalogState::default();
        s.map.epoch = 3;
        s.external_tables
            .insert("e".into(), "CREATE EXTERNAL TABLE e ...".into());
        m.save(&s).unwrap();
        assert_eq!(m.load().unwrap(), s);
    }
}
