//! Comparing query results from two engines: row for row, by value, with
//! floats equal within a relative tolerance.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// The one BIGINT a query like `SELECT count(*) ...` returns.
pub fn single_i64(batches: &[RecordBatch]) -> i64 {
    assert_eq!(
        batches.iter().map(|b| b.num_rows()).sum::<usize>(),
        1,
        "{batches:?}"
    );
    let b = batches.iter().find(|b| b.num_rows() == 1).expect("one row");
    b.column(0).as_primitive::<Int64Type>().value(0)
}

/// The text of an `EXPLAIN` result: its plan column, line by line.
pub fn plan_text(batches: &[RecordBatch]) -> String {
    let mut out = String::new();
    for b in batches {
        let plans = b.column(1).as_string::<i32>();
        for i in 0..plans.len() {
            out.push_str(plans.value(i));
            out.push('\n');
        }
    }
    out
}

/// One cell: floats keep their value, everything else its display text.
#[derive(Debug, Clone)]
pub enum Cell {
    Null,
    Float(f64),
    Text(String),
}

/// The rows of `batches` as cells.
pub fn rows(batches: &[RecordBatch]) -> Vec<Vec<Cell>> {
    let mut out = vec![];
    let options = FormatOptions::default();
    for b in batches {
        let formatters: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter"))
            .collect();
        for row in 0..b.num_rows() {
            let cells = b
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(col, f)| {
                    if col.is_null(row) {
                        return Cell::Null;
                    }
                    match col.data_type() {
                        DataType::Float64 => {
                            Cell::Float(col.as_primitive::<Float64Type>().value(row))
                        }
                        DataType::Float32 => {
                            Cell::Float(col.as_primitive::<Float32Type>().value(row) as f64)
                        }
                        _ => Cell::Text(f.value(row).to_string()),
                    }
                })
                .collect();
            out.push(cells);
        }
    }
    out
}

fn cell_eq(a: &Cell, b: &Cell, tolerance: f64) -> bool {
    match (a, b) {
        (Cell::Null, Cell::Null) => true,
        (Cell::Text(x), Cell::Text(y)) => x == y,
        (Cell::Float(x), Cell::Float(y)) => {
            x == y || (x - y).abs() <= tolerance * x.abs().max(y.abs())
        }
        _ => false,
    }
}

/// `Ok` if both results have the same rows in the same order (floats within
/// `tolerance`, relative); else a description of the first difference.
pub fn compare_rows(
    actual: &[RecordBatch],
    expected: &[RecordBatch],
    tolerance: f64,
) -> Result<(), String> {
    let a = rows(actual);
    let e = rows(expected);
    if a.len() != e.len() {
        return Err(format!("{} rows, expected {}", a.len(), e.len()));
    }
    for (i, (ra, re)) in a.iter().zip(&e).enumerate() {
        if ra.len() != re.len() || !ra.iter().zip(re).all(|(x, y)| cell_eq(x, y, tolerance)) {
            return Err(format!("row {i} is {ra:?}, expected {re:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(f: Vec<f64>, s: Vec<&str>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("f", DataType::Float64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(f)),
                Arc::new(StringArray::from(s)),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn floats_within_tolerance_match() {
        let a = batch(vec![1.0, 2.000_000_000_1], vec!["x", "y"]);
        let b = batch(vec![1.0, 2.0], vec!["x", "y"]);
        assert!(compare_rows(std::slice::from_ref(&a), std::slice::from_ref(&b), 1e-9).is_ok());
        assert!(compare_rows(&[a], &[b], 1e-12).is_err());
    }

    #[test]
    fn order_and_text_matter() {
        let a = batch(vec![1.0, 2.0], vec!["x", "y"]);
        let b = batch(vec![2.0, 1.0], vec!["y", "x"]);
        assert!(compare_rows(std::slice::from_ref(&a), &[b], 1e-9).is_err());
        let c = batch(vec![1.0, 2.0], vec!["x", "z"]);
        assert!(compare_rows(std::slice::from_ref(&a), &[c], 1e-9).is_err());
        assert!(compare_rows(std::slice::from_ref(&a), &[a.slice(0, 1)], 1e-9).is_err());
    }
}
