//! Result formats: aligned tables for people; exact CSV, JSON and Arrow IPC
//! for programs.

use std::io::Write;

use arrow::util::display::FormatOptions;
use arrow::util::pretty::pretty_format_batches_with_options;
use clap::ValueEnum;

use crate::client::{QueryResult, QueryStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Arrow,
}

/// Writes one result in `format`. Statements without columns print nothing.
pub fn write_result(
    out: &mut dyn Write,
    result: &QueryResult,
    format: Format,
) -> Result<(), String> {
    if result.schema.fields().is_empty() {
        return Ok(());
    }
    let err = |e: arrow::error::ArrowError| e.to_string();
    match format {
        Format::Table => {
            let options = FormatOptions::default().with_null("NULL");
            let table = if result.batches.is_empty() {
                let empty = arrow::array::RecordBatch::new_empty(result.schema.clone());
                pretty_format_batches_with_options(&[empty], &options).map_err(err)?
            } else {
                pretty_format_batches_with_options(&result.batches, &options).map_err(err)?
            };
            writeln!(out, "{table}").map_err(|e| e.to_string())
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            if result.batches.is_empty() {
                w.write(&arrow::array::RecordBatch::new_empty(result.schema.clone()))
                    .map_err(err)?;
            }
            for b in &result.batches {
                w.write(b).map_err(err)?;
            }
            Ok(())
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(out);
            for b in &result.batches {
                w.write(b).map_err(err)?;
            }
            w.finish().map_err(err)
        }
        Format::Arrow => {
            let mut w =
                arrow::ipc::writer::StreamWriter::try_new(out, &result.schema).map_err(err)?;
            for b in &result.batches {
                w.write(b).map_err(err)?;
            }
            w.finish().map_err(err)
        }
    }
}

/// Writes a result in `format` as its rows arrive (CSV, JSON and Arrow IPC
/// need no more than a batch at a time; a table needs all its rows, and is
/// written once they are in). The rows written.
pub async fn write_stream(
    out: &mut dyn Write,
    result: QueryStream,
    format: Format,
) -> Result<usize, String> {
    use futures::TryStreamExt;
    let QueryStream {
        schema,
        mut batches,
    } = result;
    let err = |e: arrow::error::ArrowError| e.to_string();
    let mut rows = 0;
    if schema.fields().is_empty() || format == Format::Table {
        let batches: Vec<_> = batches.try_collect().await?;
        rows = batches.iter().map(|b| b.num_rows()).sum();
        write_result(out, &QueryResult { schema, batches }, format)?;
        return Ok(rows);
    }
    match format {
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            let mut any = false;
            while let Some(b) = batches.try_next().await? {
                w.write(&b).map_err(err)?;
                rows += b.num_rows();
                any = true;
            }
            if !any {
                // The header alone.
                w.write(&arrow::array::RecordBatch::new_empty(schema))
                    .map_err(err)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(out);
            while let Some(b) = batches.try_next().await? {
                w.write(&b).map_err(err)?;
                rows += b.num_rows();
            }
            w.finish().map_err(err)?;
        }
        Format::Arrow => {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(out, &schema).map_err(err)?;
            while let Some(b) = batches.try_next().await? {
                w.write(&b).map_err(err)?;
                rows += b.num_rows();
            }
            w.finish().map_err(err)?;
        }
        Format::Table => {}
    }
    Ok(rows)
}
