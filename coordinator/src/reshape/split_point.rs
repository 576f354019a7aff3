//! Where a partition splits: the middle of its hash slice, or a key of
//! its range (given, or the median of its rows).

use datafusion::arrow::array::RecordBatch;
use datafusion::common::Result;
use datafusion::sql::sqlparser::ast;
use tessera_sql::{
    KeyRange, KeyValue, PartitionLayout, PartitionScheme, SplitAt, TableDef, key_bound,
};
use tessera_worker::ErrorKind;

/// Where partition `id` splits: the middle of a hash slice; for a range
/// slice, `at`, or else the median key of its rows.
pub(super) fn split_point(
    def: &TableDef,
    layout: &PartitionLayout,
    id: u32,
    at: Option<&ast::Expr>,
    rows: &[RecordBatch],
) -> Result<SplitAt> {
    let name = &def.name;
    match (&def.scheme, layout.range_of(id)) {
        (PartitionScheme::Hash { .. }, Some(KeyRange::Hash { start, end })) => {
            if at.is_some() {
                return Err(ErrorKind::InvalidArgument.error(format!(
                    "'{name}' is hash-partitioned: its partitions split at the middle of their \
                     hash slice, so SPLIT PARTITION takes no AT (AT is for RANGE tables)"
                )));
            }
            let end = end.map_or(1u128 << 64, u128::from);
            let middle = (u128::from(*start) + end) / 2;
            if middle <= u128::from(*start) {
                return Err(ErrorKind::InvalidArgument.error(format!(
                    "partition {id} of '{name}' holds a single hash and cannot split further"
                )));
            }
            Ok(SplitAt::Hash(middle as u64))
        }
        (PartitionScheme::Range { column, .. }, Some(KeyRange::Range { .. })) => {
            let schema = def.schema()?;
            let data_type = schema.field_with_name(column)?.data_type().clone();
            if let Some(at) = at {
                return Ok(SplitAt::Value(key_bound(at, column, &data_type)?));
            }
            let mut keys = vec![];
            for batch in rows {
                let values = batch.column(schema.index_of(column)?);
                for row in 0..batch.num_rows() {
                    keys.push(KeyValue::from_array(values, row)?.unwrap_or(KeyValue::Null));
                }
            }
            median_key(keys).map(SplitAt::Value).ok_or_else(|| {
                ErrorKind::InvalidArgument.error(format!(
                    "partition {id} of '{name}' holds fewer than two distinct keys, so it has no \
                     median to split at; give one: SPLIT PARTITION {id} AT value"
                ))
            })
        }
        (_, range) => Err(ErrorKind::Internal.error(format!(
            "partition {id} of '{name}' has the slice {range:?}, which its scheme cannot split"
        ))),
    }
}

/// The key that splits `keys` most evenly with both halves non-empty: the
/// median, or the first key above the smallest when the median is it.
fn median_key(mut keys: Vec<KeyValue>) -> Option<KeyValue> {
    keys.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let first = keys.first()?.clone();
    let median = keys.get(keys.len() / 2)?;
    if *median != first {
        return Some(median.clone());
    }
    keys.into_iter().find(|k| *k != first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_leaves_both_halves_rows() {
        let ints = |v: &[i64]| v.iter().map(|i| KeyValue::Int(*i)).collect::<Vec<_>>();
        assert_eq!(median_key(ints(&[5, 1, 3, 2, 4])), Some(KeyValue::Int(3)));
        assert_eq!(median_key(ints(&[1, 1, 1, 1, 2])), Some(KeyValue::Int(2)));
        assert_eq!(median_key(ints(&[7, 7, 7])), None);
        assert_eq!(median_key(vec![]), None);
        let with_null = vec![KeyValue::Null, KeyValue::Null, KeyValue::Int(1)];
        assert_eq!(median_key(with_null), Some(KeyValue::Int(1)));
    }
}
