//! Secondary indexes, chosen per index.
//!
//! | kind           | partitioned by                 | written                              | a lookup `col = v` reads          |
//! |----------------|--------------------------------|--------------------------------------|-----------------------------------|
//! | `LOCAL`        | the table's own partitions     | in the same transaction as the rows  | the index of every kept partition |
//! | `GLOBAL SYNC`  | stable hash of the term        | in the same transaction as the rows  | one index partition, then the data partitions it names |
//! | `GLOBAL ASYNC` | stable hash of the term        | from a durable outbox, after the ack | the same, as of the last apply    |
//!
//! An index is stored like a table: Parquet files in partition directories
//! on workers, written by the same two-phase commit. Its rows are entries:
//! the indexed columns, then where the row is. A row is located by its
//! data partition, the transaction that wrote it (which names its file) and
//! its position in that file. Rows whose (first) indexed column is NULL
//! have no entry: no lookup the index serves can match them.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Result, plan_err};
use serde::{Deserialize, Serialize};

use crate::catalog::TableDef;
use crate::ident::check_name;
use crate::key::is_index_type;
use crate::scheme::PartitionScheme;

/// The data partition an entry points into (global indexes and outboxes).
pub const PART_COLUMN: &str = "__part";
/// The transaction that wrote the row: its file is `<txn>.parquet`.
pub const FILE_COLUMN: &str = "__file";
/// The row's position in its file.
pub const ROW_COLUMN: &str = "__row";

/// How an index is partitioned and maintained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexKind {
    Local,
    GlobalSync,
    GlobalAsync,
}

impl IndexKind {
    pub fn is_global(self) -> bool {
        !matches!(self, IndexKind::Local)
    }
}

impl std::fmt::Display for IndexKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IndexKind::Local => "LOCAL",
            IndexKind::GlobalSync => "GLOBAL SYNC",
            IndexKind::GlobalAsync => "GLOBAL ASYNC",
        })
    }
}

/// Whether an index can serve reads yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexState {
    /// Rows written before the index existed are being added: `done` of
    /// `total` data partitions so far. Writes maintain it already.
    Building {
        done: u32,
        total: u32,
    },
    Ready,
}

impl std::fmt::Display for IndexState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexState::Building { done, total } => write!(f, "building {done}/{total}"),
            IndexState::Ready => f.write_str("ready"),
        }
    }
}

/// A secondary index as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexDef {
    pub name: String,
    pub table: String,
    /// Unique per index ever created, like a table's id.
    pub id: u64,
    pub columns: Vec<String>,
    pub kind: IndexKind,
    /// Index partitions: the table's count for LOCAL.
    pub partitions: u32,
    /// Writes with a larger transaction id maintain the index; rows of
    /// earlier ones are added by the backfill.
    pub since_txn: u64,
    pub state: IndexState,
}

impl IndexDef {
    /// Checks a new index against its table.
    pub fn try_new(
        name: &str,
        table: &TableDef,
        id: u64,
        columns: Vec<String>,
        kind: IndexKind,
        partitions: Option<u64>,
    ) -> Result<Self> {
        check_name("index", name)?;
        if let Some(dup) = crate::ident::first_duplicate(columns.iter().map(String::as_str)) {
            return plan_err!("column '{dup}' is listed twice in index '{name}'");
        }
        if columns.is_empty() {
            return plan_err!("CREATE INDEX {name} needs at least one column");
        }
        if kind.is_global() && columns.len() != 1 {
            return plan_err!(
                "a GLOBAL index covers one column (it is partitioned by that column's value); \
                 create one index per column, or a LOCAL index over several"
            );
        }
        let schema = table.schema()?;
        for c in &columns {
            let Ok(field) = schema.field_with_name(c) else {
                return plan_err!(
                    "'{c}' is not a column of '{}'; DESCRIBE {} lists its columns",
                    table.name,
                    table.name
                );
            };
            if !is_index_type(field.data_type()) {
                return plan_err!(
                    "column '{c}' of type {} cannot be indexed; index an integer, float, date, \
                     timestamp, string or boolean column",
                    field.data_type()
                );
            }
        }
        let partitions = match (kind, partitions) {
            (IndexKind::Local, Some(_)) => {
                return plan_err!(
                    "a LOCAL index has one part per table partition; PARTITIONS is for GLOBAL indexes"
                );
            }
            (IndexKind::Local, None) => table.scheme.partition_count(),
            (_, None) => table.scheme.partition_count(),
            (_, Some(n)) if n == 0 || n > u64::from(crate::MAX_PARTITIONS) => {
                return plan_err!(
                    "PARTITIONS must be between 1 and {}, got {n}",
                    crate::MAX_PARTITIONS
                );
            }
            (_, Some(n)) => n as u32,
        };
        Ok(Self {
            name: name.to_string(),
            table: table.name.clone(),
            id,
            columns,
            kind,
            partitions,
            since_txn: 0,
            state: IndexState::Building {
                done: 0,
                total: table.scheme.partition_count(),
            },
        })
    }

    /// The index's directory on workers.
    pub fn storage_key(&self, table: &TableDef) -> String {
        format!("{}.i{}", table.storage_key(), self.id)
    }

    /// The outbox's directory on workers (GLOBAL ASYNC): one part per data
    /// partition, beside it.
    pub fn outbox_key(&self, table: &TableDef) -> String {
        format!("{}.o{}", table.storage_key(), self.id)
    }

    /// The name of a global index's partitions in the partition map. A
    /// table named the same (`"t.i"`) is refused at CREATE TABLE and CREATE
    /// INDEX, whichever comes second.
    pub fn map_key(&self) -> String {
        format!("{}.{}", self.table, self.name)
    }

    /// The columns of an entry: the indexed ones, then the row's place
    /// (`__part` only for global indexes and outboxes).
    pub fn entry_schema(&self, table: &Schema) -> Result<SchemaRef> {
        let mut fields = vec![];
        for c in &self.columns {
            let f = table.field_with_name(c)?;
            fields.push(Field::new(c, f.data_type().clone(), true));
        }
        if self.kind.is_global() {
            fields.push(Field::new(PART_COLUMN, DataType::UInt32, false));
        }
        fields.push(Field::new(FILE_COLUMN, DataType::UInt64, false));
        fields.push(Field::new(ROW_COLUMN, DataType::UInt32, false));
        Ok(Arc::new(Schema::new(fields)))
    }

    /// How a global index's entries are spread: stable hash of the term.
    pub fn scheme(&self) -> PartitionScheme {
        PartitionScheme::Hash {
            columns: vec![self.columns[0].clone()],
            partitions: self.partitions,
            cluster_by: vec![],
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state == IndexState::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableDef {
        let schema = Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("color", DataType::Utf8, true),
            Field::new("f", DataType::Float64, true),
            Field::new("blob", DataType::Binary, true),
        ]);
        let scheme = PartitionScheme::Hash {
            columns: vec!["k".into()],
            partitions: 8,
            cluster_by: vec![],
        };
        TableDef::try_new("cars", 3, &schema, scheme).unwrap()
    }

    #[test]
    fn checks_columns_and_kinds() {
        let t = table();
        let err = |cols: &[&str], kind, parts| {
            IndexDef::try_new(
                "i",
                &t,
                1,
                cols.iter().map(|c| c.to_string()).collect(),
                kind,
                parts,
            )
            .unwrap_err()
            .to_string()
        };
        assert!(err(&["nope"], IndexKind::Local, None).contains("not a column"));
        assert!(err(&["blob"], IndexKind::Local, None).contains("cannot be indexed"));
        assert!(err(&["k", "color"], IndexKind::GlobalSync, None).contains("one column"));
        assert!(err(&["color"], IndexKind::Local, Some(4)).contains("PARTITIONS"));
        assert!(err(&["color"], IndexKind::GlobalAsync, Some(0)).contains("between"));
        let g = IndexDef::try_new(
            "i",
            &t,
            1,
            vec!["color".into()],
            IndexKind::GlobalAsync,
            None,
        )
        .unwrap();
        assert_eq!(g.partitions, 8);
        assert_eq!(g.storage_key(&t), "t3.i1");
        assert_eq!(g.outbox_key(&t), "t3.o1");
        let names: Vec<String> = g
            .entry_schema(&t.schema().unwrap())
            .unwrap()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["color", "__part", "__file", "__row"]);
    }
}
