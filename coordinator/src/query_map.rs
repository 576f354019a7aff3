//! The partition map a query plans against. It is taken with the query's
//! snapshot and carried in its config, so every scan of the query and the
//! rule that pairs co-located joins read one map epoch: a partition moved
//! meanwhile (a rebalance switching a copy) is read from where the map said
//! when the query began, never from the old place in one scan and the new
//! place in another.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::config::{ConfigEntry, ConfigExtension, ConfigOptions, ExtensionOptions};
use datafusion::common::{Result, plan_err};
use tessera_sql::PartitionPlacement;

use crate::catalog::Catalog;

/// Every partition map entry at one metastore revision.
#[derive(Debug, Clone, Default)]
pub struct QueryMap {
    revision: u64,
    tables: Arc<BTreeMap<String, Vec<PartitionPlacement>>>,
}

impl QueryMap {
    pub fn new(revision: u64, tables: BTreeMap<String, Vec<PartitionPlacement>>) -> Self {
        Self {
            revision,
            tables: Arc::new(tables),
        }
    }

    /// The metastore revision the map is at.
    pub fn revision(&self) -> u64 {
        self.revision
    }
}

impl ExtensionOptions for QueryMap {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    /// Shares the map: it is never changed, only replaced.
    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, _value: &str) -> Result<()> {
        plan_err!(
            "'{}.{key}' cannot be set: it is the partition map a query reads",
            Self::PREFIX
        )
    }

    /// Nothing to list (`SHOW ALL`) or to pass on to workers.
    fn entries(&self) -> Vec<ConfigEntry> {
        vec![]
    }
}

impl ConfigExtension for QueryMap {
    const PREFIX: &'static str = "tessera_query_map";
}

/// The placement of `map_key`'s partitions for the query planned with
/// `config`: from its map, or the catalog's current one when the map has
/// no such entry or there is none (a statement planned outside a query's
/// path).
pub fn placements(
    config: &ConfigOptions,
    catalog: &Catalog,
    map_key: &str,
) -> Result<Vec<PartitionPlacement>> {
    let taken = config
        .extensions
        .get::<QueryMap>()
        .and_then(|m| m.tables.get(map_key));
    match taken {
        Some(p) => Ok(p.clone()),
        None => catalog.placements(map_key),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use crate::metastore::FileMetastore;

    /// The map a query beginning now plans against (taken with its
    /// snapshot).
    async fn taken(catalog: &Catalog) -> QueryMap {
        let (_, _, map) = catalog.take_snapshot().await.unwrap();
        QueryMap::new(map.revision, map.tables)
    }

    fn on(worker: &str) -> Vec<PartitionPlacement> {
        vec![PartitionPlacement {
            id: 0,
            replicas: vec![worker.to_string()],
            out_of_sync: vec![],
            range: None,
        }]
    }

    /// A partition switched to another worker after a query took its map
    /// is still read from where the map said for that query; a query
    /// planned after the switch reads the new place.
    #[tokio::test]
    async fn a_query_keeps_the_map_it_began_with() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileMetastore::open(dir.path()).unwrap();
        let catalog = Catalog::open(Box::new(store), BTreeMap::new(), Duration::from_secs(5))
            .await
            .unwrap();
        let place = |w: &'static str| {
            let catalog = catalog.clone();
            async move {
                catalog
                    .update(|s| {
                        s.map.tables.insert("t".into(), on(w));
                        Ok(())
                    })
                    .await
                    .unwrap()
            }
        };
        place("worker-0").await;
        let mut began = ConfigOptions::new();
        let map = taken(&catalog).await;
        let at = map.revision();
        began.extensions.insert(map);
        place("worker-1").await;
        assert!(catalog.revision() > at);
        assert_eq!(placements(&began, &catalog, "t").unwrap(), on("worker-0"));
        let mut later = ConfigOptions::new();
        later.extensions.insert(taken(&catalog).await);
        assert_eq!(placements(&later, &catalog, "t").unwrap(), on("worker-1"));
        assert_eq!(
            placements(&ConfigOptions::new(), &catalog, "t").unwrap(),
            on("worker-1")
        );
        // Nobody sets it by hand.
        assert!(began.set("tessera_query_map.tables", "x").is_err());
    }
}
