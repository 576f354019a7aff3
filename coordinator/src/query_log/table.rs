//! The rows of `tessera.queries`.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
    UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::Result;

use super::QueryRecord;

pub(crate) fn queries_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("query_id", DataType::Utf8, false),
        Field::new(
            "started",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("user_name", DataType::Utf8, true),
        Field::new("client", DataType::Utf8, true),
        Field::new("sql", DataType::Utf8, false),
        Field::new("run", DataType::UInt32, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("elapsed_ms", DataType::Float64, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("partitions_touched", DataType::UInt64, false),
        Field::new("stages", DataType::UInt64, false),
        Field::new("tasks", DataType::UInt64, false),
        Field::new("bytes_shuffled", DataType::UInt64, false),
        Field::new("bytes_gathered", DataType::UInt64, false),
    ]))
}

pub(crate) fn queries_batch(records: &[QueryRecord]) -> Result<RecordBatch> {
    let u = |f: fn(&QueryRecord) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(records.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.query_id.as_str()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(records.iter().map(|r| r.started_micros))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter(
            records.iter().map(|r| r.user.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            records.iter().map(|r| r.client.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.sql.as_str()),
        )),
        Arc::new(UInt32Array::from_iter_values(records.iter().map(|r| r.run))),
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.status.as_str()),
        )),
        Arc::new(Float64Array::from_iter_values(
            records.iter().map(|r| r.elapsed_ms),
        )),
        u(|r| r.rows),
        u(|r| r.partitions_touched),
        u(|r| r.stages),
        u(|r| r.tasks),
        u(|r| r.bytes_shuffled),
        u(|r| r.bytes_gathered),
    ];
    Ok(RecordBatch::try_new(queries_schema(), columns)?)
}
