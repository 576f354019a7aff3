//! Property: for random keys of every key type, the partition a row is
//! written to equals the one partition pruning keeps for `k = key`, in a
//! scheme's initial layout and after partitions split (one of them at the
//! key itself, for range schemes).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray,
    StringViewArray, TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::prelude::{col, lit};
use proptest::prelude::*;
use tessera_sql::{
    KeyRange, KeyValue, PartitionLayout, PartitionScheme, Partitioner, SplitAt, prune_partitions,
};

fn check(array: ArrayRef, literal: ScalarValue, scheme_for: impl Fn(&DataType) -> PartitionScheme) {
    // `k = NULL` is never true; a NULL key is found with `k IS NULL`.
    let predicate = if literal.is_null() {
        col("k").is_null()
    } else {
        col("k").eq(lit(literal.clone()))
    };
    let data_type = array.data_type().clone();
    let schema = Arc::new(Schema::new(vec![Field::new("k", data_type.clone(), true)]));
    let scheme = scheme_for(&data_type);
    let batch = RecordBatch::try_new(schema.clone(), vec![array]).unwrap();
    let layouts = [None, Some(split_layout(&scheme, &literal, &data_type))];
    for layout in layouts {
        let written = Partitioner::try_new(&scheme, &schema)
            .unwrap()
            .with_layout(layout.clone())
            .assign(&batch)
            .unwrap();
        let kept = prune_partitions(
            &scheme,
            layout.as_ref(),
            &schema,
            std::slice::from_ref(&predicate),
        );
        assert_eq!(kept, written, "{scheme:?} {layout:?}");
    }
}

/// `scheme`'s initial layout with partitions split: hash slices at their
/// middles (twice in a row for the first), a range scheme's partition of
/// `key` at `key` itself when it lies inside the slice.
fn split_layout(scheme: &PartitionScheme, key: &ScalarValue, t: &DataType) -> PartitionLayout {
    let mut layout = PartitionLayout::initial(scheme);
    match scheme {
        PartitionScheme::Hash { .. } => {
            let at_middle = |layout: &mut PartitionLayout, id: u32| {
                let Some(KeyRange::Hash { start, end }) = layout.range_of(id).cloned() else {
                    unreachable!()
                };
                let end = end.unwrap_or(u64::MAX);
                layout
                    .split(id, SplitAt::Hash(start + (end - start) / 2))
                    .unwrap()
            };
            let (lower, _) = at_middle(&mut layout, 0);
            at_middle(&mut layout, lower);
            at_middle(&mut layout, 6);
        }
        PartitionScheme::Range { .. } => {
            if let Some(v) = KeyValue::from_scalar(key, t).unwrap() {
                let id = layout.partition_of_value(&v);
                // Fails when the key is the slice's lower bound already.
                let _ = layout.split(id, SplitAt::Value(v));
            }
        }
        PartitionScheme::Single => {}
    }
    layout.check().unwrap();
    layout
}

fn hash(_: &DataType) -> PartitionScheme {
    PartitionScheme::Hash {
        columns: vec!["k".into()],
        partitions: 13,
        cluster_by: vec![],
    }
}

fn range_of(bounds: Vec<ScalarValue>) -> impl Fn(&DataType) -> PartitionScheme {
    move |t: &DataType| PartitionScheme::Range {
        column: "k".into(),
        bounds: bounds
            .iter()
            .map(|b| KeyValue::from_scalar(b, t).unwrap().unwrap())
            .collect(),
    }
}

proptest! {
    #[test]
    fn int64(v: i64) {
        check(Arc::new(Int64Array::from(vec![v])), ScalarValue::Int64(Some(v)), hash);
        let r = range_of(vec![ScalarValue::Int64(Some(-10)), ScalarValue::Int64(Some(0)), ScalarValue::Int64(Some(1 << 40))]);
        check(Arc::new(Int64Array::from(vec![v])), ScalarValue::Int64(Some(v)), r);
    }

    #[test]
    fn int32_with_wider_literal(v: i32) {
        // The planner may hand a literal of another integer width.
        check(Arc::new(Int32Array::from(vec![v])), ScalarValue::Int64(Some(i64::from(v))), hash);
    }

    #[test]
    fn uint64(v: u64) {
        check(Arc::new(UInt64Array::from(vec![v])), ScalarValue::UInt64(Some(v)), hash);
    }

    #[test]
    fn strings(s in ".{0,40}") {
        check(Arc::new(StringArray::from(vec![s.clone()])), ScalarValue::Utf8(Some(s.clone())), hash);
        check(Arc::new(StringViewArray::from(vec![s.clone()])), ScalarValue::Utf8View(Some(s.clone())), hash);
        let r = range_of(vec![ScalarValue::Utf8(Some("g".into())), ScalarValue::Utf8(Some("p".into()))]);
        check(Arc::new(StringArray::from(vec![s.clone()])), ScalarValue::Utf8(Some(s)), r);
    }

    #[test]
    fn dates(d in -100_000i32..100_000) {
        check(Arc::new(Date32Array::from(vec![d])), ScalarValue::Date32(Some(d)), hash);
        let r = range_of(vec![ScalarValue::Date32(Some(0)), ScalarValue::Date32(Some(19723))]);
        check(Arc::new(Date32Array::from(vec![d])), ScalarValue::Date32(Some(d)), r);
    }

    #[test]
    fn timestamps(t: i64) {
        check(
            Arc::new(TimestampMicrosecondArray::from(vec![t])),
            ScalarValue::TimestampMicrosecond(Some(t), None),
            hash,
        );
    }

    #[test]
    fn nullable_keys(v: Option<i64>, s in proptest::option::of(".{0,10}")) {
        let r = range_of(vec![ScalarValue::Int64(Some(-10)), ScalarValue::Int64(Some(0))]);
        check(Arc::new(Int64Array::from(vec![v])), ScalarValue::Int64(v), hash);
        check(Arc::new(Int64Array::from(vec![v])), ScalarValue::Int64(v), r);
        check(Arc::new(StringArray::from(vec![s.clone()])), ScalarValue::Utf8(s), hash);
    }

    #[test]
    fn booleans(b: bool) {
        check(Arc::new(BooleanArray::from(vec![b])), ScalarValue::Boolean(Some(b)), hash);
    }
}

#[test]
fn timestamp_type_is_a_key() {
    assert!(tessera_sql::is_key_type(&DataType::Timestamp(
        TimeUnit::Nanosecond,
        None
    )));
}
