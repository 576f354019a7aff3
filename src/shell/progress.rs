//! Progress of long statements in the shell: a second connection polls
//! what the server reports while the statement runs.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::client::{Client, QueryResult, QueryStream};

/// Reads (done, total) partitions off the result of a progress query.
pub(super) type ReadProgress = Box<dyn Fn(&[arrow::array::RecordBatch]) -> Option<(u32, u32)>>;

/// What a long statement's progress is read from: a query on a second
/// connection, and how to read its result.
pub(super) struct Watch {
    pub label: String,
    /// What is counted.
    pub unit: &'static str,
    pub poll: String,
    pub progress: ReadProgress,
}

/// Runs a statement, showing its progress (partitions done) as `watch`
/// reads it every 200 ms on a second connection.
pub(super) async fn with_progress(
    client: &mut Client,
    sql: &str,
    watch: Watch,
) -> Result<QueryResult, String> {
    let mut watcher = client.reconnect().await.ok();
    let template = format!(
        "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {} {{elapsed}}",
        watch.unit
    );
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(watch.label);
    let show = watch.poll;
    let query = client.query(sql);
    tokio::pin!(query);
    loop {
        tokio::select! {
            result = &mut query => {
                bar.finish_and_clear();
                return result;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let Some(w) = watcher.as_mut() else { continue };
                let Ok(shown) = w.query(&show).await else { continue };
                if let Some((done, total)) = (watch.progress)(&shown.batches) {
                    bar.set_length(u64::from(total));
                    bar.set_position(u64::from(done));
                }
            }
        }
    }
}

/// `(done, total)` of an index's backfill in `SHOW INDEXES` output.
pub(super) fn building(batches: &[arrow::array::RecordBatch], index: &str) -> Option<(u32, u32)> {
    use arrow::array::{Array, AsArray};
    for b in batches {
        let names = b.column_by_name("index_name")?.as_string::<i32>();
        let states = b.column_by_name("state")?.as_string::<i32>();
        for i in 0..names.len() {
            if names.value(i) == index {
                let (done, total) = states.value(i).strip_prefix("building ")?.split_once('/')?;
                return Some((done.parse().ok()?, total.parse().ok()?));
            }
        }
    }
    None
}

/// `(done, total)` partitions of a running `COMPACT TABLE` in
/// `tessera.compactions`.
pub(super) fn compacting(batches: &[arrow::array::RecordBatch]) -> Option<(u32, u32)> {
    use arrow::array::AsArray;
    use arrow::datatypes::UInt32Type;
    let b = batches.iter().find(|b| b.num_rows() > 0)?;
    let done = b.column(0).as_primitive_opt::<UInt32Type>()?.value(0);
    let total = b.column(1).as_primitive_opt::<UInt32Type>()?.value(0);
    Some((done, total))
}

/// Shows a running rebalance's steps as they finish (`SHOW REBALANCE`
/// every 200 ms) until none is left to run; Ctrl-C stops watching, not
/// the rebalance.
pub(super) async fn follow_rebalance(client: &mut Client) -> Result<(), String> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("rebalance [{bar:30}] {pos}/{len} steps {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let shown = client.query("SHOW REBALANCE").await?;
        let Some((done, total, copied)) = rebalance_progress(&shown.batches) else {
            break;
        };
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(format!("{:.1} MB copied", copied as f64 / 1e6));
        if done == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
    Ok(())
}

/// `(finished, all, bytes copied)` steps in `SHOW REBALANCE` output.
fn rebalance_progress(batches: &[arrow::array::RecordBatch]) -> Option<(u64, u64, u64)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::UInt64Type;
    let (mut done, mut total, mut copied) = (0, 0, 0);
    for b in batches {
        let states = b.column_by_name("state")?.as_string_opt::<i32>()?;
        let bytes = b
            .column_by_name("bytes_copied")?
            .as_primitive_opt::<UInt64Type>()?;
        for i in 0..states.len() {
            total += 1;
            done += u64::from(!matches!(states.value(i), "pending" | "running"));
            copied += bytes.value(i);
        }
    }
    Some((done, total, copied))
}

/// `(in sync, all)` copies of a table's partitions in `SHOW PARTITIONS`
/// output (its `states` column: `worker state, ...`).
pub(super) fn copies_in_sync(batches: &[arrow::array::RecordBatch]) -> Option<(u32, u32)> {
    use arrow::array::{Array, AsArray};
    let (mut done, mut total) = (0, 0);
    for b in batches {
        let states = b.column_by_name("states")?.as_string_opt::<i32>()?;
        for i in 0..states.len() {
            for copy in states.value(i).split(", ") {
                total += 1;
                done += u32::from(copy.ends_with(" in_sync"));
            }
        }
    }
    Some((done, total))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{RecordBatch, StringArray};

    #[test]
    fn copies_in_sync_counts_each_copy() {
        let states = StringArray::from(vec![
            "w1 in_sync, w2 catching_up",
            "w2 in_sync, w3 in_sync",
            "w3 down, w1 in_sync",
        ]);
        let b = RecordBatch::try_from_iter([("states", Arc::new(states) as _)]).unwrap();
        assert_eq!(super::copies_in_sync(&[b]), Some((4, 6)));
    }
}

/// How long a statement runs before its progress bar shows (as duckdb).
const QUIET_FOR: Duration = Duration::from_secs(2);
/// How often the server is asked.
const POLL_EVERY: Duration = Duration::from_millis(300);

/// The progress bar of any statement running longer than [`QUIET_FOR`],
/// on stderr when it is a terminal: rows its scans read of those expected,
/// their size in memory, rows written, as the server reports them for the
/// statement's tag. Cleared by [`StatementBar::stop`] (before rows are
/// printed) or when any of its clones is dropped.
#[derive(Clone)]
pub(super) struct StatementBar {
    shown: std::sync::Arc<std::sync::Mutex<Shown>>,
    task: tokio::task::AbortHandle,
}

/// The bar, once shown, and whether it was stopped (a poll that was
/// under way then draws nothing).
#[derive(Default)]
struct Shown {
    bar: Option<ProgressBar>,
    stopped: bool,
}

impl StatementBar {
    /// Tags the next statement `client` runs and starts watching it.
    pub(super) fn start(client: &mut Client) -> Option<Self> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let tag = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        client.tag_statements(&tag);
        let asker = client.clone_shared();
        let shown = std::sync::Arc::new(std::sync::Mutex::new(Shown::default()));
        let task = tokio::spawn(watch_statement(asker, tag, std::sync::Arc::clone(&shown)));
        Some(Self {
            shown,
            task: task.abort_handle(),
        })
    }

    /// Stops the bar when `result` ends, and at its first rows too if
    /// they are printed as they arrive (`progressive`).
    pub(super) fn stop_with(&self, result: &mut QueryStream, progressive: bool) {
        use futures::StreamExt;
        // (A clone dropped stops the bar: each lives as long as the stream.)
        let last = self.clone();
        let batches = std::mem::replace(&mut result.batches, futures::stream::empty().boxed());
        let end = futures::stream::poll_fn(move |_| {
            last.stop();
            std::task::Poll::Ready(None)
        });
        result.batches = if progressive {
            let first = self.clone();
            batches.inspect(move |_| first.stop()).chain(end).boxed()
        } else {
            batches.chain(end).boxed()
        };
    }

    /// Clears the bar, if shown, and stops watching.
    pub(super) fn stop(&self) {
        self.task.abort();
        if let Ok(mut shown) = self.shown.lock() {
            shown.stopped = true;
            if let Some(bar) = shown.bar.take() {
                bar.finish_and_clear();
            }
        }
    }
}

impl Drop for StatementBar {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn watch_statement(
    client: Client,
    tag: String,
    shown: std::sync::Arc<std::sync::Mutex<Shown>>,
) {
    tokio::time::sleep(QUIET_FOR).await;
    loop {
        if let Ok(report) = client.progress(&tag).await
            && report.running
            && let Ok(mut shown) = shown.lock()
            && !shown.stopped
        {
            let bar = shown.bar.get_or_insert_with(|| {
                ProgressBar::new(0).with_finish(indicatif::ProgressFinish::AndClear)
            });
            draw(bar, &report);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Shows `report` on `bar`: a bar when the rows to read are known, a
/// spinner otherwise.
fn draw(bar: &ProgressBar, report: &tessera_coordinator::progress::ProgressReport) {
    use indicatif::{HumanBytes, HumanCount};
    let style = |template: &str| {
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
    };
    let seconds = format!("{:.1} s", report.elapsed_ms as f64 / 1000.0);
    if report.rows_expected == 0 && report.rows_scanned == 0 && report.rows_written == 0 {
        // Nothing it reads or writes is counted (a table function).
        bar.set_style(style("{spinner} {msg}"));
        bar.set_message(format!("running, {seconds}"));
        bar.tick();
        return;
    }
    let mut message = HumanCount(report.rows_scanned).to_string();
    if report.rows_expected > 0 {
        bar.set_style(style("[{bar:30}] {percent:>3}% {msg}"));
        bar.set_length(report.rows_expected.max(report.rows_scanned));
        bar.set_position(report.rows_scanned);
        message.push_str(&format!(" of ~{}", HumanCount(report.rows_expected)));
    } else {
        bar.set_style(style("{spinner} {msg}"));
        bar.tick();
    }
    message.push_str(&format!(
        " rows scanned ({})",
        HumanBytes(report.bytes_scanned)
    ));
    if report.rows_written > 0 {
        message.push_str(&format!(
            ", {} rows to write",
            HumanCount(report.rows_written)
        ));
    }
    message.push_str(&format!(", {seconds}"));
    bar.set_message(message);
}
