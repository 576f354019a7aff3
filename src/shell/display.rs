//! How the shell shows results: an aligned table of at most `.maxrows`
//! rows (the first and last ones, with the count of those left out) cut
//! to the terminal's width, one record per block (`\x`, `.mode line`),
//! CSV, JSON or Markdown; `EXPLAIN` as the plan's own text.

use std::io::Write;

use arrow::array::{Array, RecordBatch};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use comfy_table::{CellAlignment, ContentArrangement, Table, presets};

use std::collections::VecDeque;

use crate::client::{QueryResult, QueryStream};
use crate::output::{Format, write_result, write_stream};

/// How results are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Table,
    Line,
    Csv,
    Json,
    Markdown,
}

impl Mode {
    pub fn parse(name: &str) -> Option<Mode> {
        Some(match name.to_ascii_lowercase().as_str() {
            "table" | "box" | "duckbox" | "aligned" => Mode::Table,
            "line" | "expanded" => Mode::Line,
            "csv" => Mode::Csv,
            "json" | "jsonlines" | "ndjson" => Mode::Json,
            "markdown" => Mode::Markdown,
            _ => return None,
        })
    }
}

/// The shell's display settings.
#[derive(Debug, Clone)]
pub struct Display {
    pub mode: Mode,
    /// Rows shown at most (0: all).
    pub max_rows: usize,
    /// Width tables are cut to: `None` the terminal's, `Some(0)` no limit.
    pub max_width: Option<u16>,
    pub timing: bool,
    /// Colours (a terminal, and no `NO_COLOR`).
    pub color: bool,
}

impl Default for Display {
    fn default() -> Self {
        Self {
            mode: Mode::Table,
            max_rows: 40,
            max_width: None,
            timing: true,
            color: false,
        }
    }
}

impl Display {
    /// Whether results are printed row by row as they arrive (CSV, JSON),
    /// not once they are all in (the table modes keep the first and last).
    pub fn prints_as_rows_arrive(&self) -> bool {
        matches!(self.mode, Mode::Csv | Mode::Json)
    }

    /// Writes `result` to `out` as set.
    pub fn show(&self, out: &mut dyn Write, result: &QueryResult) -> Result<(), String> {
        let total = result.batches.iter().map(RecordBatch::num_rows).sum();
        self.show_kept(out, result, total)
    }

    /// Writes a result to `out` as its rows arrive: CSV and JSON row by
    /// row; a table or records keep only the rows they show (the first
    /// and last `max_rows`), whatever the result's size. The rows there
    /// were.
    pub async fn show_stream(
        &self,
        out: &mut dyn Write,
        result: QueryStream,
    ) -> Result<usize, String> {
        use futures::TryStreamExt;
        match self.mode {
            Mode::Csv => return write_stream(out, result, Format::Csv).await,
            Mode::Json => return write_stream(out, result, Format::Json).await,
            Mode::Line | Mode::Table | Mode::Markdown => {}
        }
        let QueryStream {
            schema,
            mut batches,
        } = result;
        let mut kept = Kept::default();
        while let Some(batch) = batches.try_next().await? {
            kept.push(batch, self.max_rows);
        }
        let total = kept.total;
        let result = QueryResult {
            schema,
            batches: kept.head.into_iter().chain(kept.tail).collect(),
        };
        self.show_kept(out, &result, total)?;
        Ok(total)
    }

    /// Writes `result`, which holds the first and last rows of `total`.
    fn show_kept(
        &self,
        out: &mut dyn Write,
        result: &QueryResult,
        total: usize,
    ) -> Result<(), String> {
        if result.schema.fields().is_empty() {
            return Ok(());
        }
        if let Some(plan) = explain_text(result) {
            return writeln!(out, "{plan}").map_err(|e| e.to_string());
        }
        match self.mode {
            Mode::Csv => write_result(out, result, Format::Csv),
            Mode::Json => write_result(out, result, Format::Json),
            Mode::Line => self.records(out, result, total),
            Mode::Table | Mode::Markdown => self.table(out, result, total),
        }
    }

    fn table(&self, out: &mut dyn Write, result: &QueryResult, total: usize) -> Result<(), String> {
        let (rows, total) = shown_rows(result, self.max_rows, total)?;
        let mut table = Table::new();
        if self.mode == Mode::Markdown {
            table.load_preset(presets::ASCII_MARKDOWN);
        } else {
            table.load_preset(presets::UTF8_FULL_CONDENSED);
        }
        match self.max_width {
            Some(0) => {
                table.set_content_arrangement(ContentArrangement::Disabled);
            }
            Some(w) => {
                table
                    .set_content_arrangement(ContentArrangement::Dynamic)
                    .set_width(w);
            }
            None => {
                table.set_content_arrangement(ContentArrangement::Dynamic);
            }
        }
        table.set_truncation_indicator("…");
        table.set_header(column_names(result));
        let numeric: Vec<bool> = result
            .schema
            .fields()
            .iter()
            .map(|f| f.data_type().is_numeric())
            .collect();
        let cols = result.schema.fields().len();
        let shown = rows.len();
        let head = rows_head(shown, total);
        for (i, row) in rows.into_iter().enumerate() {
            if i == head && shown < total {
                table.add_row(vec!["…"; cols]);
            }
            // One line a row: line breaks in values are shown as \n, and
            // long values are cut, not wrapped.
            table.add_row(
                row.into_iter()
                    .map(|v| v.replace('\n', "\\n"))
                    .collect::<Vec<_>>(),
            );
            if let Some(r) = table.row_mut(table.row_count() - 1) {
                r.max_height(1);
            }
        }
        for (i, is_number) in numeric.iter().enumerate() {
            if *is_number && let Some(c) = table.column_mut(i) {
                c.set_cell_alignment(CellAlignment::Right);
            }
        }
        writeln!(out, "{table}").map_err(|e| e.to_string())?;
        if shown < total {
            writeln!(
                out,
                "{total} rows ({shown} shown: the first and last {}; .maxrows N shows more, \
                 .maxrows 0 all)",
                shown / 2
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// One block per row, a `name | value` line per column (psql's `\x`).
    fn records(
        &self,
        out: &mut dyn Write,
        result: &QueryResult,
        total: usize,
    ) -> Result<(), String> {
        let (rows, total) = shown_rows(result, self.max_rows, total)?;
        let names = column_names(result);
        let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        let head = rows_head(rows.len(), total);
        let shown = rows.len();
        for (i, row) in rows.into_iter().enumerate() {
            let number = if i < head {
                i + 1
            } else {
                total - shown + i + 1
            };
            writeln!(out, "-[ RECORD {number} ]-").map_err(|e| e.to_string())?;
            for (name, value) in names.iter().zip(row) {
                writeln!(out, "{name:<width$} | {value}").map_err(|e| e.to_string())?;
            }
        }
        if shown < total {
            writeln!(out, "{total} rows ({shown} shown)").map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

fn column_names(result: &QueryResult) -> Vec<&str> {
    result
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect()
}

/// Where the rows after the first half start, when `shown` of `total`
/// are shown.
fn rows_head(shown: usize, total: usize) -> usize {
    if shown < total {
        shown.div_ceil(2)
    } else {
        shown
    }
}

/// The rows to show as text (all, or the first and last `max_rows / 2`)
/// and how many there are: `result` holds the first and last rows of
/// `total` (at least `max_rows` of each end when it does not hold all).
fn shown_rows(
    result: &QueryResult,
    max_rows: usize,
    total: usize,
) -> Result<(Vec<Vec<String>>, usize), String> {
    let held: usize = result.batches.iter().map(RecordBatch::num_rows).sum();
    let keep: Vec<usize> = if max_rows == 0 || held <= max_rows {
        (0..held).collect()
    } else {
        let head = max_rows.div_ceil(2);
        let tail = max_rows - head;
        (0..head).chain(held - tail..held).collect()
    };
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::with_capacity(keep.len());
    let mut wanted = keep.iter().peekable();
    let mut start = 0;
    for batch in &result.batches {
        let end = start + batch.num_rows();
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        while let Some(&&row) = wanted.peek() {
            if row >= end {
                break;
            }
            out.push(
                formatters
                    .iter()
                    .map(|f| f.value(row - start).to_string())
                    .collect(),
            );
            wanted.next();
        }
        start = end;
    }
    Ok((out, total))
}

/// The rows of a result a table shows, kept as they arrive: the first
/// `max_rows` and at least the last `max_rows` (all with `max_rows` 0).
#[derive(Default)]
struct Kept {
    head: Vec<RecordBatch>,
    head_rows: usize,
    tail: VecDeque<RecordBatch>,
    tail_rows: usize,
    total: usize,
}

impl Kept {
    fn push(&mut self, batch: RecordBatch, max_rows: usize) {
        let n = batch.num_rows();
        self.total += n;
        if max_rows == 0 {
            self.head.push(batch);
            return;
        }
        let mut rest = batch;
        if self.head_rows < max_rows {
            let take = (max_rows - self.head_rows).min(n);
            self.head.push(rest.slice(0, take));
            self.head_rows += take;
            if take == n {
                return;
            }
            rest = rest.slice(take, n - take);
        }
        self.tail_rows += rest.num_rows();
        self.tail.push_back(rest);
        // Batches no longer among the last `max_rows` go.
        while let Some(front) = self.tail.front() {
            if self.tail_rows - front.num_rows() < max_rows {
                break;
            }
            self.tail_rows -= front.num_rows();
            self.tail.pop_front();
        }
    }
}

/// An EXPLAIN's plans as their own text: each plan type as a heading,
/// then the plan's lines.
fn explain_text(result: &QueryResult) -> Option<String> {
    use arrow::array::AsArray;
    if column_names(result) != ["plan_type", "plan"] {
        return None;
    }
    let mut text = String::new();
    for b in &result.batches {
        let kinds = b.column(0).as_string_opt::<i32>()?;
        let plans = b.column(1).as_string_opt::<i32>()?;
        for i in 0..b.num_rows() {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(kinds.value(i));
            text.push_str(":\n");
            let plan = if plans.is_null(i) { "" } else { plans.value(i) };
            for line in plan.lines() {
                text.push_str("  ");
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    Some(text.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::compute::concat_batches;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn numbers(n: i64) -> QueryResult {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let half = n / 2;
        let batch = |lo: i64, hi: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(lo..hi)),
                    Arc::new(StringArray::from_iter(
                        (lo..hi).map(|i| (i % 3 != 0).then(|| format!("row {i}"))),
                    )),
                ],
            )
            .unwrap()
        };
        QueryResult {
            schema: schema.clone(),
            batches: vec![batch(0, half), batch(half, n)],
        }
    }

    fn shown(display: &Display, result: &QueryResult) -> String {
        let mut out = vec![];
        display.show(&mut out, result).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// A result read as a stream, in batches of `size` rows, shows as the
    /// whole of it does, holding only a few batches.
    #[test]
    fn a_streamed_result_shows_as_the_whole_one() {
        let whole = numbers(1000);
        for (max_rows, size) in [(4, 7), (40, 1), (40, 1000), (3, 2), (0, 9), (40, 13)] {
            for mode in [Mode::Table, Mode::Line] {
                let display = Display {
                    mode,
                    max_rows,
                    max_width: Some(0),
                    ..Display::default()
                };
                let all = concat_batches(&whole.schema, &whole.batches).unwrap();
                let mut kept = Kept::default();
                let mut at = 0;
                while at < all.num_rows() {
                    let n = size.min(all.num_rows() - at);
                    kept.push(all.slice(at, n), max_rows);
                    at += n;
                }
                assert_eq!(kept.total, 1000);
                if max_rows > 0 {
                    assert!(kept.tail_rows < max_rows + size, "{max_rows} {size}");
                }
                let held = QueryResult {
                    schema: whole.schema.clone(),
                    batches: kept.head.into_iter().chain(kept.tail).collect(),
                };
                let mut out = vec![];
                display.show_kept(&mut out, &held, kept.total).unwrap();
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    shown(&display, &whole),
                    "{max_rows} {size} {mode:?}"
                );
            }
        }
    }

    #[test]
    fn long_results_show_their_first_and_last_rows() {
        let display = Display {
            max_rows: 4,
            max_width: Some(0),
            ..Display::default()
        };
        let text = shown(&display, &numbers(100));
        for kept in ["row 1 ", "│  0 ┆", "row 98", "│ 99 ┆"] {
            assert!(text.contains(kept), "{kept}: {text}");
        }
        assert!(
            !text.contains("row 2 ") && !text.contains("row 97"),
            "{text}"
        );
        assert!(text.contains("…"), "{text}");
        assert!(text.contains("100 rows (4 shown"), "{text}");
        assert!(text.contains("NULL"), "{text}");
        let all = shown(
            &Display {
                max_rows: 0,
                ..display
            },
            &numbers(100),
        );
        assert!(all.contains("row 50") && !all.contains("shown"), "{all}");
    }

    #[test]
    fn wide_values_are_cut_to_the_width() {
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]));
        let long = "x".repeat(500);
        let result = QueryResult {
            schema: schema.clone(),
            batches: vec![
                RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec![long]))])
                    .unwrap(),
            ],
        };
        let display = Display {
            max_width: Some(60),
            ..Display::default()
        };
        let text = shown(&display, &result);
        assert!(text.lines().all(|l| l.chars().count() <= 60), "{text}");
        assert!(text.contains('…'), "{text}");
    }

    #[test]
    fn records_and_explain() {
        let display = Display {
            mode: Mode::Line,
            ..Display::default()
        };
        let text = shown(&display, &numbers(2));
        assert_eq!(
            text,
            "-[ RECORD 1 ]-\nn | 0\ns | NULL\n-[ RECORD 2 ]-\nn | 1\ns | row 1\n"
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("plan_type", DataType::Utf8, false),
            Field::new("plan", DataType::Utf8, false),
        ]));
        let plan = QueryResult {
            schema: schema.clone(),
            batches: vec![
                RecordBatch::try_new(
                    schema,
                    vec![
                        Arc::new(StringArray::from(vec!["physical_plan"])),
                        Arc::new(StringArray::from(vec!["Scan\n  Filter"])),
                    ],
                )
                .unwrap(),
            ],
        };
        assert_eq!(
            shown(&Display::default(), &plan),
            "physical_plan:\n  Scan\n    Filter\n"
        );
    }
}
