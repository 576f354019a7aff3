//! TPC-H: the 8 tables generated in process (`tpchgen`, `tpchgen-arrow`),
//! Tessera's partitioning for each, and the 22 queries.
//!
//! | table    | partitioning                 |
//! |----------|------------------------------|
//! | lineitem | HASH (l_orderkey) PARTITIONS n |
//! | orders   | HASH (o_orderkey) PARTITIONS n |
//! | customer | HASH (c_custkey) PARTITIONS n  |
//! | part     | HASH (p_partkey) PARTITIONS n  |
//! | partsupp | HASH (ps_partkey) PARTITIONS n |
//! | supplier | HASH (s_suppkey) PARTITIONS n  |
//! | nation   | one partition                |
//! | region   | one partition                |
//!
//! `lineitem` and `orders` hash the same key into the same number of
//! partitions, so their join is co-located.
//!
//! The queries are the specification's, with its validation parameters.
//! Q15's view is a common table expression, and the queries whose `ORDER BY`
//! leaves ties (Q3, Q10, Q11, Q18) order by a key last. So every query returns
//! one row or orders all its rows: two engines must agree row for row.

use std::fs::File;
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

/// Rows per generated batch.
const BATCH_ROWS: usize = 65_536;

/// One TPC-H table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TpchTable {
    Nation,
    Region,
    Part,
    Supplier,
    PartSupp,
    Customer,
    Orders,
    LineItem,
}

/// A stream of generated batches of one table.
pub type Batches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

impl TpchTable {
    /// All eight, small ones first.
    pub const ALL: [TpchTable; 8] = [
        TpchTable::Nation,
        TpchTable::Region,
        TpchTable::Part,
        TpchTable::Supplier,
        TpchTable::PartSupp,
        TpchTable::Customer,
        TpchTable::Orders,
        TpchTable::LineItem,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TpchTable::Nation => "nation",
            TpchTable::Region => "region",
            TpchTable::Part => "part",
            TpchTable::Supplier => "supplier",
            TpchTable::PartSupp => "partsupp",
            TpchTable::Customer => "customer",
            TpchTable::Orders => "orders",
            TpchTable::LineItem => "lineitem",
        }
    }

    /// The hash key, or `None` for the one-partition tables.
    pub fn hash_key(self) -> Option<&'static str> {
        match self {
            TpchTable::Nation | TpchTable::Region => None,
            TpchTable::Part => Some("p_partkey"),
            TpchTable::Supplier => Some("s_suppkey"),
            TpchTable::PartSupp => Some("ps_partkey"),
            TpchTable::Customer => Some("c_custkey"),
            TpchTable::Orders => Some("o_orderkey"),
            TpchTable::LineItem => Some("l_orderkey"),
        }
    }

    pub fn schema(self) -> SchemaRef {
        match self {
            TpchTable::Nation => NationArrow::schema_ref(),
            TpchTable::Region => RegionArrow::schema_ref(),
            TpchTable::Part => PartArrow::schema_ref(),
            TpchTable::Supplier => SupplierArrow::schema_ref(),
            TpchTable::PartSupp => PartSuppArrow::schema_ref(),
            TpchTable::Customer => CustomerArrow::schema_ref(),
            TpchTable::Orders => OrderArrow::schema_ref(),
            TpchTable::LineItem => LineItemArrow::schema_ref(),
        }
    }

    /// The number of rows at scale factor `sf` (for lineitem an estimate:
    /// 4 lines per order on average).
    pub fn rows(self, sf: f64) -> u64 {
        let n = match self {
            TpchTable::Nation => 25,
            TpchTable::Region => 5,
            TpchTable::Part => PartGenerator::calculate_row_count(sf, 1, 1),
            TpchTable::Supplier => SupplierGenerator::calculate_row_count(sf, 1, 1),
            TpchTable::PartSupp => PartSuppGenerator::calculate_row_count(sf, 1, 1),
            TpchTable::Customer => CustomerGenerator::calculate_row_count(sf, 1, 1),
            TpchTable::Orders => OrderGenerator::calculate_row_count(sf, 1, 1),
            TpchTable::LineItem => OrderGenerator::calculate_row_count(sf, 1, 1) * 4,
        };
        n.max(0) as u64
    }

    /// Generates the table at scale factor `sf`, batch by batch.
    pub fn generate(self, sf: f64) -> Batches {
        match self {
            TpchTable::Nation => Box::new(
                NationArrow::new(NationGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS),
            ),
            TpchTable::Region => Box::new(
                RegionArrow::new(RegionGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS),
            ),
            TpchTable::Part => {
                Box::new(PartArrow::new(PartGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS))
            }
            TpchTable::Supplier => Box::new(
                SupplierArrow::new(SupplierGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS),
            ),
            TpchTable::PartSupp => Box::new(
                PartSuppArrow::new(PartSuppGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS),
            ),
            TpchTable::Customer => Box::new(
                CustomerArrow::new(CustomerGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS),
            ),
            TpchTable::Orders => {
                Box::new(OrderArrow::new(OrderGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS))
            }
            TpchTable::LineItem => Box::new(
                LineItemArrow::new(LineItemGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS),
            ),
        }
    }

    /// Tessera's `CREATE TABLE` for this table with `partitions` hash
    /// partitions (nation and region always have one).
    pub fn ddl(self, partitions: u32) -> String {
        let columns: Vec<String> = self
            .schema()
            .fields()
            .iter()
            .map(|f| format!("{} {} NOT NULL", f.name(), sql_type(f.data_type())))
            .collect();
        let partitioning = match self.hash_key() {
            Some(key) => format!(" PARTITION BY HASH ({key}) PARTITIONS {partitions}"),
            None => String::new(),
        };
        format!(
            "CREATE TABLE {} ({}){partitioning}",
            self.name(),
            columns.join(", ")
        )
    }

    /// Writes the table at scale factor `sf` as `<dir>/<name>.parquet`.
    pub fn write_parquet(
        self,
        sf: f64,
        dir: &Path,
        mut progress: impl FnMut(u64),
    ) -> Result<(), String> {
        let path = dir.join(format!("{}.parquet", self.name()));
        let file =
            File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, self.schema(), None)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        for batch in self.generate(sf) {
            let batch = batch.map_err(|e| e.to_string())?;
            writer
                .write(&batch)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            progress(batch.num_rows() as u64);
        }
        writer
            .close()
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(())
    }
}

/// The SQL type of a generated column.
fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Int64 => "BIGINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        _ => "VARCHAR".into(),
    }
}

const QUERIES: [&str; 22] = [
    include_str!("../tpch/queries/q01.sql"),
    include_str!("../tpch/queries/q02.sql"),
    include_str!("../tpch/queries/q03.sql"),
    include_str!("../tpch/queries/q04.sql"),
    include_str!("../tpch/queries/q05.sql"),
    include_str!("../tpch/queries/q06.sql"),
    include_str!("../tpch/queries/q07.sql"),
    include_str!("../tpch/queries/q08.sql"),
    include_str!("../tpch/queries/q09.sql"),
    include_str!("../tpch/queries/q10.sql"),
    include_str!("../tpch/queries/q11.sql"),
    include_str!("../tpch/queries/q12.sql"),
    include_str!("../tpch/queries/q13.sql"),
    include_str!("../tpch/queries/q14.sql"),
    include_str!("../tpch/queries/q15.sql"),
    include_str!("../tpch/queries/q16.sql"),
    include_str!("../tpch/queries/q17.sql"),
    include_str!("../tpch/queries/q18.sql"),
    include_str!("../tpch/queries/q19.sql"),
    include_str!("../tpch/queries/q20.sql"),
    include_str!("../tpch/queries/q21.sql"),
    include_str!("../tpch/queries/q22.sql"),
];

/// The text of TPC-H query `n` (1 to 22), without the trailing `;`.
pub fn tpch_query(n: usize) -> Option<&'static str> {
    let text = QUERIES.get(n.checked_sub(1)?)?;
    Some(text.trim_end().trim_end_matches(';'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_is_there() {
        for n in 1..=22 {
            let q = tpch_query(n).unwrap_or_default();
            assert!(q.contains(&format!("TPC-H Q{n}:")), "query {n}");
            assert!(!q.ends_with(';'));
        }
        assert!(tpch_query(0).is_none());
        assert!(tpch_query(23).is_none());
    }

    #[test]
    fn ddl_names_the_hash_key() {
        let ddl = TpchTable::LineItem.ddl(13);
        assert!(ddl.starts_with("CREATE TABLE lineitem (l_orderkey BIGINT NOT NULL"));
        assert!(ddl.ends_with("PARTITION BY HASH (l_orderkey) PARTITIONS 13"));
        assert!(!TpchTable::Nation.ddl(8).contains("PARTITION"));
    }

    #[test]
    fn generates_the_scale_factor() {
        let rows: usize = TpchTable::Orders
            .generate(0.01)
            .map(|b| b.map(|b| b.num_rows()).unwrap_or(0))
            .sum();
        assert_eq!(rows as u64, TpchTable::Orders.rows(0.01));
    }
}
