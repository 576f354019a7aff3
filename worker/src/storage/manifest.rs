//! What a partition is made of: its data files and the manifest naming
//! them (with forwards past compactions), plus partition stats and staged
//! write records as the coordinator receives them.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::common::Result;
use serde::{Deserialize, Serialize};

use super::file_name;

/// One committed Parquet file of a partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFile {
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    /// The transaction whose visibility the file's rows have, when it is
    /// not the one in its name: a merged file holds rows of several
    /// transactions, every one visible to every snapshot still open when
    /// it was merged, and takes the newest of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visible_as: Option<u64>,
}

impl DataFile {
    pub fn new(name: String, rows: u64, bytes: u64) -> Self {
        Self {
            name,
            rows,
            bytes,
            visible_as: None,
        }
    }

    /// The transaction a snapshot must see for this file to be read.
    pub fn visible_txn(&self) -> u64 {
        self.visible_as
            .or_else(|| crate::index::file_txn(&self.name))
            .unwrap_or(0)
    }
}

/// The files that make up one partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: Vec<DataFile>,
    /// Files merged away by compaction, by transaction: which file holds
    /// their rows now, from which row on. Index entries keep naming the
    /// file a row was first written to; this forwards them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub moved: BTreeMap<u64, Moved>,
    /// Files merged away, deleted once no scan that began before the merge
    /// is still reading them (and at the next start).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
}

/// Where the rows of a merged-away file are: rows `offset..` of file `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub to: u64,
    pub offset: u32,
}

impl Manifest {
    /// Rewrites index locators (file by transaction → rows) to the files
    /// that hold those rows now.
    pub fn forward(&self, rows: crate::index::RowsByFile) -> Result<crate::index::RowsByFile> {
        let present: BTreeSet<u64> = self
            .files
            .iter()
            .filter_map(|f| crate::index::file_txn(&f.name))
            .collect();
        let mut out = crate::index::RowsByFile::new();
        let mut shifted = false;
        for (file, positions) in rows {
            if present.contains(&file) {
                out.entry(file).or_default().extend(positions);
            } else if let Some(m) = self.moved.get(&file) {
                shifted = true;
                out.entry(m.to)
                    .or_default()
                    .extend(positions.into_iter().map(|r| m.offset + r));
            } else {
                return crate::precondition_err!(
                    "an index names rows of file {} which this partition does not have; \
                     rebuild the index (DROP INDEX, then CREATE INDEX)",
                    file_name(file)
                );
            }
        }
        if shifted {
            for positions in out.values_mut() {
                positions.sort_unstable();
                positions.dedup();
            }
        }
        Ok(out)
    }

    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// Rows and bytes of one partition, as `SHOW PARTITIONS` reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionStats {
    pub partition: u32,
    pub rows: u64,
    pub bytes: u64,
}

/// A staged write found on disk: (txn, table, partition).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StagedWrite {
    pub txn: u64,
    pub table: String,
    pub partition: u32,
}
