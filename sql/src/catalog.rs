//! Catalog types: a table's definition and the versioned partition map that
//! says which worker holds each partition. Persisted by the coordinator's
//! metastore as JSON, so every type here is plain data.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Result, plan_err};
use serde::{Deserialize, Serialize};

use crate::ident::{check_name, first_duplicate};
use crate::key::is_key_type;
use crate::layout::{KeyRange, PartitionLayout};
use crate::replication::Replication;
use crate::scheme::PartitionScheme;
use crate::strategy::Strategy;

/// Most partitions one table may have.
pub const MAX_PARTITIONS: u32 = 4096;

/// A column as the catalog stores it. The type is Arrow's own text form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub data_type: String,
    pub nullable: bool,
}

/// A Tessera table: its columns and how it is partitioned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDef {
    pub name: String,
    /// Unique per table ever created: a table created again under an old
    /// name never meets files the old one may have left behind.
    #[serde(default)]
    pub id: u64,
    pub columns: Vec<ColumnDef>,
    pub scheme: PartitionScheme,
    /// The table's directory on workers, made of its id alone (any name
    /// works as a table name; none reaches a file path). Tables created
    /// before it was kept use `<name>.<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// Copies of each partition, and how many a write needs.
    #[serde(default)]
    pub replication: Replication,
    /// How its partitions change as workers come and go and it grows.
    #[serde(default, skip_serializing_if = "Strategy::is_fixed")]
    pub rebalance: Strategy,
}

impl TableDef {
    /// Validates `scheme` against `schema` and builds the definition.
    pub fn try_new(name: &str, id: u64, schema: &Schema, scheme: PartitionScheme) -> Result<Self> {
        check_name("table", name)?;
        for field in schema.fields() {
            check_name("column", field.name())?;
        }
        if let Some(dup) = first_duplicate(schema.fields().iter().map(|f| f.name().as_str())) {
            return plan_err!(
                "column '{dup}' is defined more than once in table '{name}'; give each column \
                 its own name"
            );
        }
        if let Some(dup) = first_duplicate(scheme.key_columns().iter().copied()) {
            return plan_err!("column '{dup}' is listed twice in PARTITION BY of '{name}'");
        }
        if let Some(dup) = first_duplicate(scheme.cluster_by().iter().map(String::as_str)) {
            return plan_err!("column '{dup}' is listed twice in CLUSTER BY of '{name}'");
        }
        if schema.fields().is_empty() {
            return plan_err!("table '{name}' needs at least one column");
        }
        let count = scheme.partition_count();
        if count == 0 || count > MAX_PARTITIONS {
            return plan_err!(
                "table '{name}': PARTITIONS must be between 1 and {MAX_PARTITIONS}, got {count}"
            );
        }
        for column in scheme.key_columns() {
            let Ok(field) = schema.field_with_name(column) else {
                return plan_err!(
                    "partition key column '{column}' is not a column of '{name}'; columns are: {}",
                    column_list(schema)
                );
            };
            if !is_key_type(field.data_type()) {
                return plan_err!(
                    "column '{column}' of type {} cannot be a partition key; use an integer, \
                     date, timestamp, string or boolean column",
                    field.data_type()
                );
            }
        }
        for column in scheme.cluster_by() {
            if schema.field_with_name(column).is_err() {
                return plan_err!(
                    "CLUSTER BY column '{column}' is not a column of '{name}'; columns are: {}",
                    column_list(schema)
                );
            }
        }
        if let PartitionScheme::Range { bounds, .. } = &scheme {
            for pair in bounds.windows(2) {
                if pair[0].partial_cmp(&pair[1]) != Some(std::cmp::Ordering::Less) {
                    return plan_err!(
                        "SPLIT AT bounds must be strictly increasing, but {} is followed by {}",
                        pair[0],
                        pair[1]
                    );
                }
            }
        }
        let columns = schema
            .fields()
            .iter()
            .map(|f| ColumnDef {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                // Key columns stay nullable in the schema so that a NULL key
                // reaches the partitioner, which refuses it with a clear message.
                nullable: f.is_nullable(),
            })
            .collect();
        Ok(Self {
            name: name.to_string(),
            id,
            columns,
            scheme,
            storage: Some(format!("t{id}")),
            replication: Replication::default(),
            rebalance: Strategy::Fixed,
        })
    }

    /// The name of the table's directory on workers: `t<id>`.
    pub fn storage_key(&self) -> String {
        match &self.storage {
            Some(key) => key.clone(),
            None => format!("{}.{}", self.name, self.id),
        }
    }

    pub fn schema(&self) -> Result<SchemaRef> {
        let fields = self
            .columns
            .iter()
            .map(|c| {
                let data_type: DataType = c.data_type.parse()?;
                Ok(Field::new(&c.name, data_type, c.nullable))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }
}

fn column_list(schema: &Schema) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    names.join(", ")
}

/// Where one partition lives: its replicas, leader first, by worker id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionPlacement {
    pub id: u32,
    pub replicas: Vec<String>,
    /// Replicas that missed a write (they failed to prepare or commit it):
    /// they serve no reads and take no writes until they have caught up.
    /// The others are the in-sync set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub out_of_sync: Vec<String>,
    /// The slice of keys the partition holds, once it is not the one its
    /// scheme gave partition `id` at creation (after a split or a merge);
    /// `None` is that initial slice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<KeyRange>,
}

impl PartitionPlacement {
    pub fn leader(&self) -> &str {
        self.replicas.first().map(String::as_str).unwrap_or("")
    }

    /// The replicas that hold every write acknowledged so far, leader first.
    pub fn in_sync(&self) -> impl Iterator<Item = &str> {
        self.replicas
            .iter()
            .filter(|r| !self.out_of_sync.contains(r))
            .map(String::as_str)
    }

    pub fn is_in_sync(&self, worker: &str) -> bool {
        self.replicas.iter().any(|r| r == worker) && !self.out_of_sync.iter().any(|r| r == worker)
    }
}

/// A table's placements (its partition map entry, in key order), looked
/// up by partition id: ids are positions until a partition splits or
/// merges, and stay the partitions' names after.
pub trait Placements {
    fn by_id(&self, id: u32) -> Option<&PartitionPlacement>;
    fn by_id_mut(&mut self, id: u32) -> Option<&mut PartitionPlacement>;
    /// The partitions' ids, in key order.
    fn ids(&self) -> Vec<u32>;
    /// The layout the placements describe under `scheme`; `None` while it
    /// is the scheme's initial one (partitions 0..n in key order, each
    /// with its initial slice), which the scheme's closed forms look up.
    fn layout(&self, scheme: &PartitionScheme) -> Result<Option<PartitionLayout>>;
}

impl Placements for [PartitionPlacement] {
    fn by_id(&self, id: u32) -> Option<&PartitionPlacement> {
        match self.get(id as usize) {
            Some(p) if p.id == id => Some(p),
            _ => self.iter().find(|p| p.id == id),
        }
    }

    fn by_id_mut(&mut self, id: u32) -> Option<&mut PartitionPlacement> {
        let at = match self.get(id as usize) {
            Some(p) if p.id == id => Some(id as usize),
            _ => self.iter().position(|p| p.id == id),
        };
        at.map(|i| &mut self[i])
    }

    fn ids(&self) -> Vec<u32> {
        self.iter().map(|p| p.id).collect()
    }

    fn layout(&self, scheme: &PartitionScheme) -> Result<Option<PartitionLayout>> {
        let initial = self
            .iter()
            .enumerate()
            .all(|(i, p)| p.range.is_none() && p.id as usize == i)
            && self.len() == scheme.partition_count() as usize;
        if initial {
            return Ok(None);
        }
        let first = PartitionLayout::initial(scheme);
        let parts = self
            .iter()
            .map(|p| match &p.range {
                Some(r) => Ok((r.clone(), p.id)),
                None => match first.range_of(p.id) {
                    Some(r) => Ok((r.clone(), p.id)),
                    None => plan_err!(
                        "partition {} has no slice of keys in the partition map; the map is \
                         damaged",
                        p.id
                    ),
                },
            })
            .collect::<Result<Vec<_>>>()?;
        PartitionLayout::from_parts(parts).map(Some)
    }
}

/// The partition map: per table, the placement of every partition, under an
/// epoch that every change bumps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionMap {
    pub epoch: u64,
    /// Bumped by every change of a table's partitions' slices of keys (a
    /// split): a query pairs its snapshot with a map of the same layouts.
    #[serde(default)]
    pub layout_epoch: u64,
    pub tables: BTreeMap<String, Vec<PartitionPlacement>>,
}

impl PartitionMap {
    /// Places the partitions of a new table, `replicas` copies each on
    /// distinct workers (see [`crate::place`]), leaders round the workers
    /// from `offset` so small tables do not all land on one worker.
    pub fn place_table(
        &mut self,
        table: &str,
        partitions: u32,
        replicas: u32,
        workers: &[String],
        offset: usize,
    ) -> Result<()> {
        let placed = crate::replication::place(partitions, replicas, workers, offset)?;
        let placements = placed
            .into_iter()
            .zip(0..)
            .map(|(replicas, id)| PartitionPlacement {
                id,
                replicas,
                out_of_sync: vec![],
                range: None,
            })
            .collect();
        self.tables.insert(table.to_string(), placements);
        self.epoch += 1;
        Ok(())
    }

    /// Takes `workers` out of the in-sync set of `table`'s `partition`.
    pub fn leave_in_sync(&mut self, table: &str, partition: u32, workers: &[String]) {
        let Some(placement) = self
            .tables
            .get_mut(table)
            .and_then(|p| p.by_id_mut(partition))
        else {
            return;
        };
        for w in workers {
            if placement.is_in_sync(w) {
                placement.out_of_sync.push(w.clone());
                self.epoch += 1;
            }
        }
    }

    pub fn drop_table(&mut self, table: &str) {
        if self.tables.remove(table).is_some() {
            self.epoch += 1;
        }
    }

    /// Moves `from`'s placements to the name `to` (whose own go).
    pub fn rename_table(&mut self, from: &str, to: &str) {
        if let Some(placements) = self.tables.remove(from) {
            self.tables.insert(to.to_string(), placements);
            self.epoch += 1;
        }
    }

    pub fn table(&self, table: &str) -> Option<&[PartitionPlacement]> {
        self.tables.get(table).map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyValue;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Utf8, true),
            Field::new("f", DataType::Float64, true),
        ])
    }

    #[test]
    fn rejects_bad_ddl() {
        let hash = |cols: &[&str], n| PartitionScheme::Hash {
            columns: cols.iter().map(|c| c.to_string()).collect(),
            partitions: n,
            cluster_by: vec![],
        };
        let err = |s| {
            TableDef::try_new("t", 1, &schema(), s)
                .unwrap_err()
                .to_string()
        };
        assert!(err(hash(&["k"], 0)).contains("PARTITIONS must be between 1"));
        assert!(err(hash(&["nope"], 4)).contains("'nope' is not a column of 't'"));
        assert!(err(hash(&["f"], 4)).contains("cannot be a partition key"));
        let range = PartitionScheme::Range {
            column: "k".into(),
            bounds: vec![KeyValue::Int(5), KeyValue::Int(5)],
        };
        assert!(err(range).contains("strictly increasing"));
        // Any name; the directory is made of the id alone.
        let odd = TableDef::try_new("../x", 1, &schema(), PartitionScheme::Single).unwrap();
        assert_eq!(odd.storage_key(), "t1");
        let legacy = TableDef {
            storage: None,
            ..odd
        };
        assert_eq!(legacy.storage_key(), "../x.1");
        let bad_name = TableDef::try_new("a\nb", 1, &schema(), PartitionScheme::Single);
        assert!(
            bad_name
                .unwrap_err()
                .to_string()
                .contains("control character")
        );
        let twice = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("a", DataType::Utf8, true),
        ]);
        let e = TableDef::try_new("d", 1, &twice, PartitionScheme::Single).unwrap_err();
        assert!(e.to_string().contains("defined more than once"), "{e}");
        let key_twice = PartitionScheme::Hash {
            columns: vec!["k".into(), "k".into()],
            partitions: 4,
            cluster_by: vec![],
        };
        assert!(err(key_twice).contains("listed twice in PARTITION BY"));
    }

    #[test]
    fn schema_round_trips() {
        let scheme = PartitionScheme::Hash {
            columns: vec!["k".into()],
            partitions: 4,
            cluster_by: vec![],
        };
        let def = TableDef::try_new("t", 1, &schema(), scheme).unwrap();
        let s = def.schema().unwrap();
        assert_eq!(s.field(0).data_type(), &DataType::Int64);
        assert_eq!(s.as_ref(), &schema());
    }

    #[test]
    fn placement_bumps_epoch() {
        let mut map = PartitionMap::default();
        let workers = vec!["w0".to_string(), "w1".to_string(), "w2".to_string()];
        map.place_table("t", 4, 1, &workers, 1).unwrap();
        assert_eq!(map.epoch, 1);
        let leaders: Vec<&str> = map.table("t").unwrap().iter().map(|p| p.leader()).collect();
        assert_eq!(leaders, ["w1", "w2", "w0", "w1"]);
        map.drop_table("t");
        assert_eq!(map.epoch, 2);
    }
}
