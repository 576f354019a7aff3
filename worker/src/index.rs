//! Index entries: what a secondary index stores for a row, and how a set of
//! located rows becomes a Parquet row selection.
//!
//! An entry is the row's indexed columns followed by its place: the data
//! partition (global indexes), the transaction that wrote it (which names
//! its file, `<txn>.parquet`) and its position in that file. Rows whose
//! first indexed column is NULL get no entry.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::compute::kernels::boolean::is_not_null;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};

/// Where the matching rows of one data partition are: file (by txn) →
/// positions, ascending.
pub type RowsByFile = BTreeMap<u64, Vec<u32>>;

/// The entries of `batch`, whose rows are rows `first_row..` of the file
/// written by `txn`. `schema` is the index's entry schema: the indexed
/// columns, `__part` if `part` is given, `__file`, `__row`.
pub fn entries_of(
    batch: &RecordBatch,
    columns: &[String],
    part: Option<u32>,
    txn: u64,
    first_row: u32,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let mut out: Vec<ArrayRef> = vec![];
    for c in columns {
        let Some(col) = batch.column_by_name(c) else {
            return Err(DataFusionError::Execution(format!(
                "indexed column '{c}' is missing from the rows"
            )));
        };
        out.push(Arc::clone(col));
    }
    if let Some(p) = part {
        out.push(Arc::new(UInt32Array::from(vec![p; n])));
    }
    out.push(Arc::new(UInt64Array::from(vec![txn; n])));
    out.push(Arc::new(UInt32Array::from_iter_values(
        (0..n as u32).map(|i| first_row + i),
    )));
    let entries = RecordBatch::try_new(Arc::clone(schema), out)?;
    let keep: BooleanArray = is_not_null(entries.column(0).as_ref())?;
    if keep.true_count() == n {
        return Ok(entries);
    }
    Ok(filter_record_batch(&entries, &keep)?)
}

/// Reads `__file` and `__row` (and `__part` when `by_part`) out of entry
/// batches: partition → file → sorted, distinct positions.
pub fn locate(batches: &[RecordBatch]) -> Result<BTreeMap<u32, RowsByFile>> {
    let mut out: BTreeMap<u32, RowsByFile> = BTreeMap::new();
    for b in batches {
        let col = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| DataFusionError::Internal(format!("index entries without '{name}'")))
        };
        let files = col(tessera_sql::FILE_COLUMN)?;
        let rows = col(tessera_sql::ROW_COLUMN)?;
        let (Some(files), Some(rows)) = (
            files.as_any().downcast_ref::<UInt64Array>(),
            rows.as_any().downcast_ref::<UInt32Array>(),
        ) else {
            return Err(DataFusionError::Internal(
                "index entries of the wrong types".into(),
            ));
        };
        let parts = b
            .column_by_name(tessera_sql::PART_COLUMN)
            .and_then(|p| p.as_any().downcast_ref::<UInt32Array>().cloned());
        for i in 0..b.num_rows() {
            let part = parts.as_ref().map_or(0, |p| p.value(i));
            out.entry(part)
                .or_default()
                .entry(files.value(i))
                .or_default()
                .push(rows.value(i));
        }
    }
    for files in out.values_mut() {
        for rows in files.values_mut() {
            rows.sort_unstable();
            rows.dedup();
        }
    }
    Ok(out)
}

/// A selection of `rows` (sorted, distinct) out of a file of `total` rows.
pub fn selection_of(rows: &[u32], total: usize) -> RowSelection {
    let mut selectors = vec![];
    let mut at = 0usize;
    let mut i = 0;
    while i < rows.len() {
        let start = rows[i] as usize;
        if start >= total {
            break;
        }
        let mut end = start + 1;
        while i + 1 < rows.len() && rows[i + 1] as usize == end && end < total {
            end += 1;
            i += 1;
        }
        i += 1;
        if start > at {
            selectors.push(RowSelector::skip(start - at));
        }
        selectors.push(RowSelector::select(end - start));
        at = end;
    }
    if at < total {
        selectors.push(RowSelector::skip(total - at));
    }
    RowSelection::from(selectors)
}

/// The transaction that wrote a data file, from its name.
pub fn file_txn(name: &str) -> Option<u64> {
    name.strip_suffix(".parquet")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn selection_covers_the_file() {
        let s = selection_of(&[0, 1, 2, 5, 9], 10);
        let selected: usize = s.iter().filter(|r| !r.skip).map(|r| r.row_count).sum();
        let all: usize = s.iter().map(|r| r.row_count).sum();
        assert_eq!((selected, all), (5, 10));
        let none = selection_of(&[], 4);
        assert_eq!(none.iter().map(|r| r.row_count).sum::<usize>(), 4);
    }

    #[test]
    fn entries_skip_nulls_and_locate() {
        let schema = Arc::new(Schema::new(vec![Field::new("c", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from(vec![Some(1), None, Some(3)]))],
        )
        .unwrap();
        let entry_schema = Arc::new(Schema::new(vec![
            Field::new("c", DataType::Int64, true),
            Field::new("__part", DataType::UInt32, false),
            Field::new("__file", DataType::UInt64, false),
            Field::new("__row", DataType::UInt32, false),
        ]));
        let e = entries_of(&batch, &["c".into()], Some(4), 77, 10, &entry_schema).unwrap();
        assert_eq!(e.num_rows(), 2);
        let located = locate(&[e]).unwrap();
        assert_eq!(located[&4][&77], vec![10, 12]);
    }
}
