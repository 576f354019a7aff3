//! `ALTER TABLE t SPLIT PARTITION id [AT v]` and `ALTER TABLE t MERGE
//! PARTITIONS a, b` (see [`crate::reshape`]): what they report.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray, UInt32Array, UInt64Array};
use datafusion::common::Result;

use super::ddl::ready;
use super::{Coordinator, Planned};
use crate::reshape::{Reshape, reshape_in_task};

impl Coordinator {
    pub(super) async fn reshape_partitions(&self, table: &str, how: Reshape) -> Result<Planned> {
        let started = Instant::now();
        let done = reshape_in_task(&self.catalog, table, None, how.clone()).await?;
        let seconds = started.elapsed().as_secs_f64();
        let n = done.children.len();
        let parents = done
            .parents
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let from: (&str, ArrayRef) = match how {
            Reshape::Split { partition, .. } => (
                "split_from",
                Arc::new(UInt32Array::from(vec![partition; n])),
            ),
            Reshape::Merge { .. } => ("merged_from", Arc::new(StringArray::from(vec![parents; n]))),
        };
        ready(vec![
            (
                "partition",
                Arc::new(UInt32Array::from_iter_values(
                    done.children.iter().map(|h| h.id),
                )) as ArrayRef,
            ),
            from,
            (
                "range",
                Arc::new(StringArray::from_iter_values(
                    done.children.iter().map(|h| h.range.clone()),
                )),
            ),
            (
                "rows",
                Arc::new(UInt64Array::from_iter_values(
                    done.children.iter().map(|h| h.rows),
                )),
            ),
            (
                "bytes",
                Arc::new(UInt64Array::from_iter_values(
                    done.children.iter().map(|h| h.bytes),
                )),
            ),
            (
                "caught_up_rows",
                Arc::new(UInt64Array::from_iter_values(
                    done.children.iter().map(|h| h.caught_up),
                )),
            ),
            ("seconds", Arc::new(Float64Array::from(vec![seconds; n]))),
            (
                "writes_paused",
                Arc::new(Float64Array::from(vec![
                    done.writes_paused.as_secs_f64();
                    n
                ])),
            ),
        ])
    }
}
