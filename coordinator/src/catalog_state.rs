//! The coordinator's persisted state and how it maps to metastore keys: one
//! key per table, index, partition map entry, decided transaction, counter
//! and statistics entry, so a change writes only the keys it changes.
//!
//! ```text
//!   table/<name>          TableDef               map/<table>       partition placements
//!   index/<name>          IndexDef               map_epoch         the map's epoch
//!   external/<name>       CREATE EXTERNAL TABLE  decided/<txn>     writes to commit
//!   stats/<table>         rows, bytes per partition    layout_epoch  bumped by splits
//!   stats_delta/<txn>     what a decided write adds to stats/, until folded in
//!   index_stats/<name>    entry and apply counters
//!   member/<worker id>    MemberRecord: its URL, operator state
//!   user/<name>           UserRecord: password hash, role
//!   counter/tables_created, counter/indexes_created, counter/txn_block,
//!   counter/worker_ids
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::common::{DataFusionError, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tessera_sql::{IndexDef, PartitionMap, TableDef};
use tessera_worker::{SizeEstimate, StagedWrite};

use crate::metastore::{Metastore, Op, Versioned};

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
    /// Rows and stored bytes per table and partition, counted at each
    /// decided write: the planner's size estimates.
    #[serde(default)]
    pub stats: BTreeMap<String, BTreeMap<u32, SizeEstimate>>,
    /// What each write decided under its table's gate adds to `stats`, by
    /// transaction, until it is folded in once the write is finished:
    /// concurrent writes to one table then write no common key, so their
    /// decisions share a metastore write instead of taking turns. Read
    /// `stats` through [`CatalogState::partition_stats`] and
    /// [`CatalogState::table_stats`], which add these.
    #[serde(default)]
    pub stats_deltas: BTreeMap<u64, StatsDelta>,
    /// Secondary indexes by name.
    #[serde(default)]
    pub indexes: BTreeMap<String, IndexDef>,
    /// Indexes created so far: gives each its id.
    #[serde(default)]
    pub indexes_created: u64,
    /// Entry counts and, for ASYNC indexes, how far the outbox is applied.
    #[serde(default)]
    pub index_stats: BTreeMap<String, IndexStats>,
    /// Workers that joined, by id.
    #[serde(default)]
    pub members: BTreeMap<String, MemberRecord>,
    /// Users who may sign in, by name.
    #[serde(default)]
    pub users: BTreeMap<String, UserRecord>,
}

/// Rows, bytes and decisions a write adds, by map key.
pub type StatsDelta = BTreeMap<String, PartsDelta>;

/// What a write adds to the partitions of one map key, and the id of the
/// table that owned the key then: the counts are dropped, not folded, if
/// that table was dropped (or replaced by one of the same name) meanwhile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartsDelta {
    pub owner: u64,
    pub parts: BTreeMap<u32, SizeEstimate>,
}

fn add_to(total: &mut SizeEstimate, more: &SizeEstimate) {
    total.rows += more.rows;
    total.bytes += more.bytes;
    total.writes += more.writes;
}

/// A user: a salted password hash (argon2, PHC string), a role, and a
/// generation that every change of either bumps (tokens of an older one
/// are refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub password_hash: String,
    pub role: tessera_sql::UserRole,
    pub generation: u64,
    pub created_ms: u64,
}

/// A worker as the catalog remembers it: where it was last seen, and what
/// an operator set (draining, decommissioned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub url: String,
    #[serde(default)]
    pub admin: AdminState,
}

/// A worker's state as an operator sets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    #[default]
    Active,
    Draining,
    Decommissioned,
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

const TABLE: &str = "table/";

/// The key of table `name`'s definition.
pub fn table_key(name: &str) -> String {
    format!("{TABLE}{name}")
}
const MAP: &str = "map/";
const MAP_EPOCH: &str = "map_epoch";
const LAYOUT_EPOCH: &str = "layout_epoch";
const EXTERNAL: &str = "external/";
const DECIDED: &str = "decided/";
const STATS: &str = "stats/";
const STATS_DELTA: &str = "stats_delta/";
const INDEX: &str = "index/";
const INDEX_STATS: &str = "index_stats/";
const TABLES_CREATED: &str = "counter/tables_created";
const INDEXES_CREATED: &str = "counter/indexes_created";
const MEMBER: &str = "member/";
const USER: &str = "user/";
/// Ids of workers joining for the first time are numbered from here.
pub const WORKER_IDS: &str = "counter/worker_ids";
/// Transaction ids are handed out in blocks reserved here.
pub const TXN_BLOCK: &str = "counter/txn_block";

fn encode<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| DataFusionError::Internal(format!("catalog encoding: {e}")))
}

fn decode<T: DeserializeOwned>(key: &str, value: &str) -> Result<T> {
    serde_json::from_str(value).map_err(|e| {
        DataFusionError::Execution(format!(
            "metastore key {key} is corrupt ({e}); restore the coordinator's data dir from a \
             backup"
        ))
    })
}

fn decided_key(txn: u64) -> String {
    format!("{DECIDED}{txn:020}")
}

/// The transaction a `decided/` key logs.
pub fn decided_txn(key: &str) -> Option<u64> {
    key.strip_prefix(DECIDED)?.parse().ok()
}

/// Adds the changes of one map section: a put per new or changed entry, a
/// delete per removed one.
fn diff_map<K: Ord, V: PartialEq + Serialize>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    key: impl Fn(&K) -> String,
    ops: &mut Vec<Op>,
) -> Result<()> {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            ops.push(Op::Put(key(k), encode(v)?));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            ops.push(Op::Delete(key(k)));
        }
    }
    Ok(())
}

fn diff_value<V: PartialEq + Serialize>(
    old: &V,
    new: &V,
    key: &str,
    ops: &mut Vec<Op>,
) -> Result<()> {
    if old != new {
        ops.push(Op::Put(key.to_string(), encode(new)?));
    }
    Ok(())
}

impl CatalogState {
    /// What the write path counted of `map_key`'s `partition`: rows,
    /// bytes, and decisions made on it (all 0 if nothing was counted).
    pub fn partition_stats(&self, map_key: &str, partition: u32) -> SizeEstimate {
        let mut total = self
            .stats
            .get(map_key)
            .and_then(|s| s.get(&partition))
            .copied()
            .unwrap_or_default();
        for parts in self.deltas_of(map_key) {
            if let Some(more) = parts.get(&partition) {
                add_to(&mut total, more);
            }
        }
        total
    }

    /// The pending counts of `map_key` that still count: of writes to the
    /// table that owns it now.
    fn deltas_of<'a>(
        &'a self,
        map_key: &'a str,
    ) -> impl Iterator<Item = &'a BTreeMap<u32, SizeEstimate>> + 'a {
        let owner = owner_of(self, map_key).map(|t| t.id);
        self.stats_deltas
            .values()
            .filter_map(move |delta| delta.get(map_key))
            .filter(move |d| owner == Some(d.owner))
            .map(|d| &d.parts)
    }

    /// What the write path counted of each partition of `map_key`; `None`
    /// when it counts nothing of it (a table from before counting began).
    pub fn table_stats(&self, map_key: &str) -> Option<BTreeMap<u32, SizeEstimate>> {
        let mut total = self.stats.get(map_key).cloned();
        for more in self.deltas_of(map_key) {
            let total = total.get_or_insert_with(BTreeMap::new);
            for (p, m) in more {
                add_to(total.entry(*p).or_default(), m);
            }
        }
        total
    }

    /// Adds the pending counts of transactions `txns` to `stats` (see
    /// `stats_deltas`); those of a table dropped since are dropped.
    pub fn fold_stats_deltas(&mut self, txns: impl IntoIterator<Item = u64>) {
        for txn in txns {
            let Some(delta) = self.stats_deltas.remove(&txn) else {
                continue;
            };
            for (map_key, d) in delta {
                self.fold_parts(map_key, d);
            }
        }
    }

    /// Adds every pending count of `map_key` to `stats`.
    pub fn fold_stats_deltas_of(&mut self, map_key: &str) {
        let mut found = vec![];
        self.stats_deltas.retain(|_, delta| {
            found.extend(delta.remove(map_key));
            !delta.is_empty()
        });
        for d in found {
            self.fold_parts(map_key.to_string(), d);
        }
    }

    fn fold_parts(&mut self, map_key: String, d: PartsDelta) {
        if owner_of(self, &map_key).map(|t| t.id) != Some(d.owner) {
            return;
        }
        let stats = self.stats.entry(map_key).or_default();
        for (p, more) in d.parts {
            add_to(stats.entry(p).or_default(), &more);
        }
    }

    /// Forgets the counts of `map_key` (dropped), pending deltas included.
    pub fn remove_stats(&mut self, map_key: &str) -> Option<BTreeMap<u32, SizeEstimate>> {
        let total = self.table_stats(map_key);
        self.stats.remove(map_key);
        self.stats_deltas.retain(|_, delta| {
            delta.remove(map_key);
            !delta.is_empty()
        });
        total
    }

    /// The writes that turn `self` into `new`: only the keys that differ.
    pub fn diff(&self, new: &CatalogState) -> Result<Vec<Op>> {
        let mut ops = vec![];
        diff_map(&self.tables, &new.tables, |k| table_key(k), &mut ops)?;
        diff_map(
            &self.map.tables,
            &new.map.tables,
            |k| format!("{MAP}{k}"),
            &mut ops,
        )?;
        diff_value(&self.map.epoch, &new.map.epoch, MAP_EPOCH, &mut ops)?;
        diff_value(
            &self.map.layout_epoch,
            &new.map.layout_epoch,
            LAYOUT_EPOCH,
            &mut ops,
        )?;
        diff_map(
            &self.external_tables,
            &new.external_tables,
            |k| format!("{EXTERNAL}{k}"),
            &mut ops,
        )?;
        diff_map(&self.decided, &new.decided, |t| decided_key(*t), &mut ops)?;
        diff_value(
            &self.tables_created,
            &new.tables_created,
            TABLES_CREATED,
            &mut ops,
        )?;
        diff_map(&self.stats, &new.stats, |k| format!("{STATS}{k}"), &mut ops)?;
        diff_map(
            &self.stats_deltas,
            &new.stats_deltas,
            |t| format!("{STATS_DELTA}{t:020}"),
            &mut ops,
        )?;
        diff_map(
            &self.indexes,
            &new.indexes,
            |k| format!("{INDEX}{k}"),
            &mut ops,
        )?;
        diff_value(
            &self.indexes_created,
            &new.indexes_created,
            INDEXES_CREATED,
            &mut ops,
        )?;
        diff_map(
            &self.index_stats,
            &new.index_stats,
            |k| format!("{INDEX_STATS}{k}"),
            &mut ops,
        )?;
        diff_map(
            &self.members,
            &new.members,
            |k| format!("{MEMBER}{k}"),
            &mut ops,
        )?;
        diff_map(&self.users, &new.users, |k| format!("{USER}{k}"), &mut ops)?;
        Ok(ops)
    }

    /// Sets one key's value (`None`: removes it); keys of other owners (the
    /// transaction id counter) are left alone.
    pub fn apply(&mut self, key: &str, value: Option<&str>) -> Result<()> {
        fn set<K: Ord, V: DeserializeOwned>(
            map: &mut BTreeMap<K, V>,
            k: K,
            key: &str,
            value: Option<&str>,
        ) -> Result<()> {
            match value {
                Some(v) => {
                    map.insert(k, decode(key, v)?);
                }
                None => {
                    map.remove(&k);
                }
            }
            Ok(())
        }
        let counter =
            |value: Option<&str>| -> Result<u64> { value.map_or(Ok(0), |v| decode(key, v)) };
        if let Some(name) = key.strip_prefix(TABLE) {
            set(&mut self.tables, name.to_string(), key, value)
        } else if let Some(name) = key.strip_prefix(MAP) {
            set(&mut self.map.tables, name.to_string(), key, value)
        } else if key == MAP_EPOCH {
            self.map.epoch = counter(value)?;
            Ok(())
        } else if key == LAYOUT_EPOCH {
            self.map.layout_epoch = counter(value)?;
            Ok(())
        } else if let Some(name) = key.strip_prefix(EXTERNAL) {
            set(&mut self.external_tables, name.to_string(), key, value)
        } else if let Some(txn) = key.strip_prefix(DECIDED) {
            let txn = txn.parse::<u64>().map_err(|e| {
                DataFusionError::Execution(format!("metastore key {key} is malformed ({e})"))
            })?;
            set(&mut self.decided, txn, key, value)
        } else if key == TABLES_CREATED {
            self.tables_created = counter(value)?;
            Ok(())
        } else if let Some(name) = key.strip_prefix(STATS) {
            set(&mut self.stats, name.to_string(), key, value)
        } else if let Some(txn) = key.strip_prefix(STATS_DELTA) {
            let txn = txn.parse::<u64>().map_err(|e| {
                DataFusionError::Execution(format!("metastore key {key} is malformed ({e})"))
            })?;
            set(&mut self.stats_deltas, txn, key, value)
        } else if let Some(name) = key.strip_prefix(INDEX_STATS) {
            set(&mut self.index_stats, name.to_string(), key, value)
        } else if let Some(name) = key.strip_prefix(INDEX) {
            set(&mut self.indexes, name.to_string(), key, value)
        } else if key == INDEXES_CREATED {
            self.indexes_created = counter(value)?;
            Ok(())
        } else if let Some(id) = key.strip_prefix(MEMBER) {
            set(&mut self.members, id.to_string(), key, value)
        } else if let Some(name) = key.strip_prefix(USER) {
            set(&mut self.users, name.to_string(), key, value)
        } else {
            Ok(())
        }
    }

    /// The state the keys of a metastore hold.
    pub fn from_keys(entries: &BTreeMap<String, Versioned>) -> Result<Self> {
        let mut state = Self::default();
        for (key, v) in entries {
            state.apply(key, Some(&v.value))?;
        }
        Ok(state)
    }
}

/// Moves the whole-file catalog of earlier versions (`catalog.json` in
/// `dir`) into an empty metastore, once; the old file is kept renamed.
pub async fn import_catalog_json(dir: &Path, store: &dyn Metastore) -> Result<()> {
    let path = dir.join("catalog.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(DataFusionError::Execution(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    if !store.range("").await?.is_empty() {
        return Ok(());
    }
    let old: CatalogState = serde_json::from_slice(&bytes).map_err(|e| {
        DataFusionError::Execution(format!(
            "catalog {} is corrupt ({e}); restore it from a backup",
            path.display()
        ))
    })?;
    let ops = CatalogState::default().diff(&old)?;
    if store.commit(&[], &ops).await?.is_none() {
        return Err(DataFusionError::Execution(
            "could not import catalog.json into the metastore; retry".into(),
        ));
    }
    let done = dir.join("catalog.json.imported");
    std::fs::rename(&path, &done).map_err(|e| {
        DataFusionError::Execution(format!("cannot rename {}: {e}", path.display()))
    })?;
    tracing::info!(from = %path.display(), "imported the catalog into the metastore");
    Ok(())
}

/// The table `map_key` names, or whose GLOBAL index's partitions it names.
pub fn owner_of<'a>(state: &'a CatalogState, map_key: &str) -> Option<&'a TableDef> {
    if let Some(def) = state.tables.get(map_key) {
        return Some(def);
    }
    state
        .indexes
        .values()
        .find(|i| i.map_key() == map_key)
        .and_then(|i| state.tables.get(&i.table))
}

/// The error for a lock poisoned by an earlier panic.
pub(crate) fn poisoned() -> DataFusionError {
    DataFusionError::Internal("catalog lock poisoned by an earlier panic".into())
}

#[cfg(test)]
mod tests;
