//! Partition schemes and the stable partitioner: which partition a row belongs to.
//!
//! ```text
//!  HASH (k) PARTITIONS 4          RANGE (ts) SPLIT AT (10, 20)
//!  xxh3_64(encode(k)) ∈ [0, 2^64)   ts ∈ (-inf, 10) [10, 20) [20, +inf)
//!  |--p0--|--p1--|--p2--|--p3--|       p0        p1       p2
//! ```
//!
//! The hash is xxh3-64 with seed 0 over the canonical encoding of `key.rs`;
//! the 64-bit space is cut into N contiguous, equal ranges. The partition of a
//! key depends only on the key and N: never on nodes, processes or versions.

use std::fmt;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::Schema;
use datafusion::common::Result;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::key::{KeyValue, encode_array_value};
use crate::layout::{KeyRange, PartitionLayout};

/// Seed of the partition hash. Part of the on-disk contract.
pub const HASH_SEED: u64 = 0;

/// How a table's rows are spread over partitions, chosen in its DDL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PartitionScheme {
    /// No `PARTITION BY`: the whole table is one partition.
    Single,
    /// `PARTITION BY HASH (columns) PARTITIONS n [CLUSTER BY (cluster_by)]`.
    /// With `cluster_by` this is the hybrid scheme: the hash picks the
    /// partition and rows are kept sorted by the clustering columns in it.
    Hash {
        columns: Vec<String>,
        partitions: u32,
        cluster_by: Vec<String>,
    },
    /// `PARTITION BY RANGE (column) SPLIT AT (bounds)`: `bounds.len() + 1`
    /// partitions, partition i holding `[bounds[i-1], bounds[i])`.
    Range {
        column: String,
        bounds: Vec<KeyValue>,
    },
}

impl PartitionScheme {
    pub fn partition_count(&self) -> u32 {
        match self {
            PartitionScheme::Single => 1,
            PartitionScheme::Hash { partitions, .. } => *partitions,
            PartitionScheme::Range { bounds, .. } => bounds.len() as u32 + 1,
        }
    }

    /// The key columns, in order.
    pub fn key_columns(&self) -> Vec<&str> {
        match self {
            PartitionScheme::Single => vec![],
            PartitionScheme::Hash { columns, .. } => columns.iter().map(String::as_str).collect(),
            PartitionScheme::Range { column, .. } => vec![column.as_str()],
        }
    }

    /// Columns rows are kept sorted by inside a partition.
    pub fn cluster_by(&self) -> &[String] {
        match self {
            PartitionScheme::Hash { cluster_by, .. } => cluster_by,
            _ => &[],
        }
    }

    /// The partition of a complete key (one value per key column) in
    /// `layout`, or the scheme's initial layout when it is `None`.
    pub fn partition_of_key(&self, layout: Option<&PartitionLayout>, key: &[KeyValue]) -> u32 {
        match self {
            PartitionScheme::Single => 0,
            PartitionScheme::Hash { partitions, .. } => {
                let mut buf = Vec::with_capacity(16);
                for v in key {
                    v.encode(&mut buf);
                }
                let hash = xxh3_64_with_seed(&buf, HASH_SEED);
                match layout {
                    Some(layout) => layout.partition_of_hash(hash),
                    None => hash_partition(hash, *partitions),
                }
            }
            PartitionScheme::Range { bounds, .. } => {
                let v = key.first().unwrap_or(&KeyValue::Null);
                match layout {
                    Some(layout) => layout.partition_of_value(v),
                    None => range_partition(bounds, v),
                }
            }
        }
    }

    /// The scheme as DDL, with range bounds shown in their column's type
    /// (`SPLIT AT ('2024-04-01')` rather than day numbers).
    pub fn display_with(&self, schema: &Schema) -> String {
        match self {
            PartitionScheme::Range { column, bounds } => {
                let shown: Vec<String> = bounds
                    .iter()
                    .map(|b| match (b, schema.field_with_name(column)) {
                        (KeyValue::Int(_), Ok(f)) if !f.data_type().is_integer() => {
                            format!("'{}'", b.to_scalar(f.data_type()))
                        }
                        _ => b.to_string(),
                    })
                    .collect();
                if shown.is_empty() {
                    format!("RANGE ({column})")
                } else {
                    format!("RANGE ({column}) SPLIT AT ({})", shown.join(", "))
                }
            }
            other => other.to_string(),
        }
    }

    /// Describes the slice of key space partition `p` holds, for `SHOW
    /// PARTITIONS`: `range` once it is not its initial one.
    pub fn describe_partition(&self, p: u32, range: Option<&KeyRange>, schema: &Schema) -> String {
        let initial;
        let range = match range {
            Some(r) => r,
            None => {
                initial = PartitionLayout::initial(self);
                match initial.range_of(p) {
                    Some(r) => r,
                    None => return "no slice of keys".to_string(),
                }
            }
        };
        match (self, range) {
            (_, KeyRange::All) => "all rows".to_string(),
            (_, KeyRange::Hash { start, end }) => match end {
                Some(end) => format!("hash [{start:#018x}, {end:#018x})"),
                None => format!("hash [{start:#018x}, 2^64)"),
            },
            (PartitionScheme::Range { column, .. }, KeyRange::Range { lo, hi }) => {
                let shown = |v: &KeyValue| match schema.field_with_name(column) {
                    Ok(f) => v.to_scalar(f.data_type()).to_string(),
                    Err(_) => v.to_string(),
                };
                let lo = match lo {
                    Some(b) => format!("[{}", shown(b)),
                    None => "(-inf".to_string(),
                };
                let hi = match hi {
                    Some(b) => format!("{})", shown(b)),
                    None => "+inf)".to_string(),
                };
                format!("{column} {lo}, {hi}")
            }
            (_, other) => format!("{other:?}"),
        }
    }
}

impl fmt::Display for PartitionScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionScheme::Single => write!(f, "SINGLE"),
            PartitionScheme::Hash {
                columns,
                partitions,
                cluster_by,
            } => {
                write!(f, "HASH ({}) PARTITIONS {partitions}", columns.join(", "))?;
                if !cluster_by.is_empty() {
                    write!(f, " CLUSTER BY ({})", cluster_by.join(", "))?;
                }
                Ok(())
            }
            PartitionScheme::Range { column, bounds } => {
                let b: Vec<String> = bounds.iter().map(ToString::to_string).collect();
                if b.is_empty() {
                    return write!(f, "RANGE ({column})");
                }
                write!(f, "RANGE ({column}) SPLIT AT ({})", b.join(", "))
            }
        }
    }
}

/// The partition of a 64-bit hash when the hash space is cut into `n` equal
/// contiguous ranges: `floor(hash * n / 2^64)`.
pub fn hash_partition(hash: u64, n: u32) -> u32 {
    ((u128::from(hash) * u128::from(n)) >> 64) as u32
}

/// The hash range `[start, end)` of partition `p` of `n`; `end` is `None` for
/// the last partition, whose range ends at 2^64.
pub fn hash_range(p: u32, n: u32) -> (u64, Option<u64>) {
    let start = |i: u32| (u128::from(i) << 64).div_ceil(u128::from(n));
    let end = if p + 1 >= n {
        None
    } else {
        Some(start(p + 1) as u64)
    };
    (start(p) as u64, end)
}

/// The partition of `value` among range bounds: the number of bounds `<= value`.
pub fn range_partition(bounds: &[KeyValue], value: &KeyValue) -> u32 {
    bounds.partition_point(|b| b <= value) as u32
}

/// Assigns each row of a batch to its partition (NULL keys included).
pub struct Partitioner {
    scheme: PartitionScheme,
    /// The table's layout once a partition split or merged; `None` is the
    /// scheme's initial one, looked up by the closed forms.
    layout: Option<PartitionLayout>,
    key_indices: Vec<usize>,
}

impl Partitioner {
    pub fn try_new(scheme: &PartitionScheme, schema: &Schema) -> Result<Self> {
        let key_indices = scheme
            .key_columns()
            .iter()
            .map(|c| schema.index_of(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            scheme: scheme.clone(),
            layout: None,
            key_indices,
        })
    }

    /// Assigns rows to the partitions of `layout` (see
    /// [`crate::Placements::layout`]) instead of the scheme's initial ones.
    pub fn with_layout(mut self, layout: Option<PartitionLayout>) -> Self {
        self.layout = layout;
        self
    }

    /// The partition of every row of `batch`, in row order.
    pub fn assign(&self, batch: &RecordBatch) -> Result<Vec<u32>> {
        let keys: Vec<&ArrayRef> = self.key_indices.iter().map(|i| batch.column(*i)).collect();
        let rows = batch.num_rows();
        match &self.scheme {
            PartitionScheme::Single => Ok(vec![0; rows]),
            PartitionScheme::Hash { partitions, .. } => {
                let mut buf = Vec::with_capacity(32);
                let mut out = Vec::with_capacity(rows);
                for row in 0..rows {
                    buf.clear();
                    for key in &keys {
                        encode_array_value(key.as_ref(), row, &mut buf)?;
                    }
                    let hash = xxh3_64_with_seed(&buf, HASH_SEED);
                    out.push(match &self.layout {
                        Some(layout) => layout.partition_of_hash(hash),
                        None => hash_partition(hash, *partitions),
                    });
                }
                Ok(out)
            }
            PartitionScheme::Range { bounds, .. } => {
                let mut out = Vec::with_capacity(rows);
                for row in 0..rows {
                    let v = KeyValue::from_array(keys[0], row)?.unwrap_or(KeyValue::Null);
                    out.push(match &self.layout {
                        Some(layout) => layout.partition_of_value(&v),
                        None => range_partition(bounds, &v),
                    });
                }
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_ranges_tile_the_space() {
        for n in [1u32, 2, 3, 7, 8, 13, 1000] {
            let mut expected_start = 0u64;
            for p in 0..n {
                let (start, end) = hash_range(p, n);
                assert_eq!(start, expected_start);
                assert_eq!(hash_partition(start, n), p);
                match end {
                    Some(end) => {
                        assert_eq!(hash_partition(end - 1, n), p);
                        expected_start = end;
                    }
                    None => assert_eq!(hash_partition(u64::MAX, n), p),
                }
            }
        }
    }

    #[test]
    fn range_bounds_are_half_open() {
        let b = vec![KeyValue::Int(10), KeyValue::Int(20)];
        assert_eq!(range_partition(&b, &KeyValue::Int(i64::MIN)), 0);
        assert_eq!(range_partition(&b, &KeyValue::Int(9)), 0);
        assert_eq!(range_partition(&b, &KeyValue::Int(10)), 1);
        assert_eq!(range_partition(&b, &KeyValue::Int(19)), 1);
        assert_eq!(range_partition(&b, &KeyValue::Int(20)), 2);
    }

    /// Pins the placement of fixed keys: if this test changes, every table
    /// written before the change would be read from the wrong partitions.
    #[test]
    fn golden_partitions() {
        let hash = |cols: usize| PartitionScheme::Hash {
            columns: (0..cols).map(|i| format!("c{i}")).collect(),
            partitions: 8,
            cluster_by: vec![],
        };
        let cases: Vec<(Vec<KeyValue>, u64)> = vec![
            (vec![KeyValue::Int(0)], GOLDEN[0]),
            (vec![KeyValue::Int(42)], GOLDEN[1]),
            (vec![KeyValue::Int(-1)], GOLDEN[2]),
            (vec![KeyValue::UInt(42)], GOLDEN[3]),
            (vec![KeyValue::Str("tessera".into())], GOLDEN[4]),
            (vec![KeyValue::Str(String::new())], GOLDEN[5]),
            (vec![KeyValue::Bool(true)], GOLDEN[6]),
            (vec![KeyValue::Int(7), KeyValue::Str("a".into())], GOLDEN[7]),
            (vec![KeyValue::Null], GOLDEN[8]),
            (vec![KeyValue::Int(7), KeyValue::Null], GOLDEN[9]),
            (vec![KeyValue::float(1.5)], GOLDEN[10]),
            (vec![KeyValue::float(-0.0)], GOLDEN[11]),
        ];
        for (i, (key, expected_hash)) in cases.into_iter().enumerate() {
            let mut buf = vec![];
            for v in &key {
                v.encode(&mut buf);
            }
            let h = xxh3_64_with_seed(&buf, HASH_SEED);
            assert_eq!(h, expected_hash, "hash of {key:?}");
            assert_eq!(
                hash(key.len()).partition_of_key(None, &key),
                GOLDEN_PARTITION_OF_8[i]
            );
        }
    }

    /// Every key type maps to the canonical encoding: widths, dates,
    /// timestamps and string layouts hash like the pinned values above.
    #[test]
    fn golden_partitions_of_typed_literals() {
        use datafusion::common::ScalarValue;
        let scheme = PartitionScheme::Hash {
            columns: vec!["k".into()],
            partitions: 8,
            cluster_by: vec![],
        };
        let partition = |v: ScalarValue| {
            let key = KeyValue::from_scalar(&v, &v.data_type()).unwrap().unwrap();
            scheme.partition_of_key(None, &[key])
        };
        assert_eq!(
            partition(ScalarValue::Int32(Some(42))),
            GOLDEN_PARTITION_OF_8[1]
        );
        assert_eq!(
            partition(ScalarValue::Int8(Some(42))),
            GOLDEN_PARTITION_OF_8[1]
        );
        assert_eq!(
            partition(ScalarValue::UInt8(Some(42))),
            GOLDEN_PARTITION_OF_8[3]
        );
        assert_eq!(
            partition(ScalarValue::Utf8View(Some("tessera".into()))),
            GOLDEN_PARTITION_OF_8[4]
        );
        assert_eq!(
            partition(ScalarValue::LargeUtf8(Some("tessera".into()))),
            GOLDEN_PARTITION_OF_8[4]
        );
        // 2024-01-01 as a date (days) and as a timestamp (microseconds).
        let date = partition(ScalarValue::Date32(Some(19723)));
        let ts = partition(ScalarValue::TimestampMicrosecond(
            Some(1_704_067_200_000_000),
            None,
        ));
        assert_eq!((date, ts), GOLDEN_DATE_TS);
    }

    const GOLDEN_DATE_TS: (u32, u32) = (2, 1);

    const GOLDEN: [u64; 12] = [
        3547760990396968576,
        4435642637180117100,
        6027492765397423756,
        11681803648414190572,
        3770182089090736197,
        7961179947215036646,
        4311688551350152479,
        13035669161978273023,
        14144645293874801883,
        14958343315218989211,
        8942725086946575897,
        12260652176833672929,
    ];
    const GOLDEN_PARTITION_OF_8: [u32; 12] = [1, 1, 2, 5, 1, 3, 1, 5, 6, 6, 3, 5];
}
