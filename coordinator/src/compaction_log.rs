//! The record of compactions that `SELECT * FROM tessera.compactions`
//! shows: the running ones and the last finished ones that merged
//! something, with their progress.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::Result;

/// What one part of a table (its rows, or one index) got from a compaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Compacted {
    /// The table, or the index.
    pub name: String,
    pub kind: String,
    pub partitions: u32,
    /// Partitions merged, the files they had merged, and their rows.
    pub partitions_merged: u32,
    pub files_merged: u64,
    pub rows: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// How many finished compactions `tessera.compactions` keeps.
const KEEP: usize = 100;

/// One compaction of a table, as `tessera.compactions` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactionRecord {
    pub id: u64,
    pub table: String,
    /// `COMPACT TABLE` or `background`.
    pub trigger: &'static str,
    /// `None` while it runs; then `Ok` or why it failed.
    pub outcome: Option<std::result::Result<(), String>>,
    /// Partitions looked at (of the rows and of each index), of all.
    pub partitions_done: u32,
    pub partitions_total: u32,
    pub partitions_merged: u32,
    pub files_merged: u64,
    pub started_micros: u64,
    pub finished_micros: Option<u64>,
}

impl CompactionRecord {
    fn state(&self) -> String {
        match &self.outcome {
            None => "running".into(),
            Some(Ok(())) => "done".into(),
            Some(Err(e)) => format!("failed: {e}"),
        }
    }
}

/// The compactions of this coordinator's run: running ones, and the last
/// [`KEEP`] finished ones that merged something or were asked for.
#[derive(Debug, Default)]
pub struct CompactionLog {
    records: std::sync::Mutex<std::collections::VecDeque<CompactionRecord>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl CompactionLog {
    pub fn snapshot(&self) -> Vec<CompactionRecord> {
        self.records
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn begin(&self, table: &str, trigger: &'static str) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut r) = self.records.lock() {
            r.push_back(CompactionRecord {
                id,
                table: table.to_string(),
                trigger,
                outcome: None,
                partitions_done: 0,
                partitions_total: 0,
                partitions_merged: 0,
                files_merged: 0,
                started_micros: crate::clock::now_micros(),
                finished_micros: None,
            });
        }
        id
    }

    pub(crate) fn update(&self, id: u64, change: impl FnOnce(&mut CompactionRecord)) {
        if let Ok(mut r) = self.records.lock()
            && let Some(rec) = r.iter_mut().find(|r| r.id == id)
        {
            change(rec);
        }
    }

    /// Ends a compaction; a background one that merged nothing is not kept.
    pub(crate) fn finish(&self, id: u64, result: &Result<Vec<Compacted>>) {
        self.update(id, |rec| {
            rec.outcome = Some(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            rec.finished_micros = Some(crate::clock::now_micros());
        });
        if let Ok(mut r) = self.records.lock() {
            r.retain(|rec| {
                rec.id != id
                    || rec.trigger != BACKGROUND
                    || rec.files_merged > 0
                    || matches!(rec.outcome, Some(Err(_)))
            });
            let finished = r.iter().filter(|rec| rec.outcome.is_some()).count();
            if finished > KEEP
                && let Some(i) = r.iter().position(|rec| rec.outcome.is_some())
            {
                r.remove(i);
            }
        }
    }
}

pub const EXPLICIT_TRIGGER: &str = "COMPACT TABLE";
pub const BACKGROUND: &str = "background";

/// What `tessera.compactions` shows.
pub fn compactions_schema() -> SchemaRef {
    use datafusion::arrow::datatypes::TimeUnit;
    Arc::new(Schema::new(vec![
        Field::new("compaction_id", DataType::UInt64, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("trigger", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new(
            "started",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("elapsed_ms", DataType::Float64, false),
        Field::new("partitions_done", DataType::UInt32, false),
        Field::new("partitions_total", DataType::UInt32, false),
        Field::new("partitions_merged", DataType::UInt32, false),
        Field::new("files_merged", DataType::UInt64, false),
    ]))
}

pub fn compactions_batch(records: &[CompactionRecord]) -> Result<RecordBatch> {
    use datafusion::arrow::array::{Float64Array, TimestampMicrosecondArray};
    let now = crate::clock::now_micros();
    let u32s = |f: fn(&CompactionRecord) -> u32| -> ArrayRef {
        Arc::new(UInt32Array::from_iter_values(records.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(records.iter().map(|r| r.id))),
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| &r.table),
        )),
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.trigger),
        )),
        Arc::new(StringArray::from_iter_values(
            records.iter().map(CompactionRecord::state),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                records.iter().map(|r| r.started_micros as i64),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from_iter_values(records.iter().map(|r| {
            let end = r.finished_micros.unwrap_or(now);
            end.saturating_sub(r.started_micros) as f64 / 1000.0
        }))),
        u32s(|r| r.partitions_done),
        u32s(|r| r.partitions_total),
        u32s(|r| r.partitions_merged),
        Arc::new(UInt64Array::from_iter_values(
            records.iter().map(|r| r.files_merged),
        )),
    ];
    Ok(RecordBatch::try_new(compactions_schema(), columns)?)
}
