//! `tessera shell`: an interactive SQL prompt with history, multi-line
//! statements ending in `;`, aligned results, row counts and timings.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use tessera_sql::split_statements;

use crate::client::{Client, QueryResult};
use crate::output::{Format, write_result};

const HELP: &str = "\
Statements end with ';' and may span lines.
  SHOW TABLES;                      tables and their partitioning
  DESCRIBE t;                       columns and partition scheme of t
  SHOW PARTITIONS t;                partitions of t: range, copies and their states, rows, bytes
  ALTER TABLE t SET REPLICAS 2;     copies of each partition (caught up before it returns)
  EXPLAIN REBALANCE [t];            the moves that would even the workers out (nothing moves)
  REBALANCE APPLY [t];              run them in the background (SHOW REBALANCE, REBALANCE CANCEL)
  EXPLAIN SELECT ...;               distributed plan with partitions kept
  CREATE TABLE t (...) PARTITION BY HASH (k) PARTITIONS 8;
  CREATE TABLE t (...) PARTITION BY RANGE (ts) SPLIT AT (v1, v2);
  CREATE INDEX i ON t (c) LOCAL | GLOBAL [SYNC | ASYNC] [PARTITIONS n];
  SHOW INDEXES [ON t];              kind, entries, state, ASYNC lag
  COMPACT TABLE t;                  merge small files now (tessera.compactions lists merges)
Commands: \\help  this text    \\q  quit";

/// Runs each statement of `sql`, printing results; stops at the first error.
pub async fn run_statements(client: &mut Client, sql: &str, timing: bool) -> Result<(), String> {
    let statements = split_statements(sql).map_err(|e| e.to_string())?;
    let stdout = std::io::stdout();
    for s in statements {
        let start = Instant::now();
        let result = match tessera_sql::parse_statement(&s.sql) {
            Ok(tessera_sql::Statement::CreateIndex(ci)) => {
                let watch = Watch {
                    label: format!("backfill {}", ci.name),
                    unit: "partitions",
                    poll: format!("SHOW INDEXES ON {}", ci.table),
                    progress: Box::new(move |b| building(b, &ci.name)),
                };
                with_progress(client, &s.sql, watch).await?
            }
            Ok(tessera_sql::Statement::Compact { table }) => {
                let watch = Watch {
                    label: format!("compact {table}"),
                    unit: "partitions",
                    poll: format!(
                        "SELECT partitions_done, partitions_total FROM tessera.compactions \
                         WHERE table_name = '{}' AND state = 'running' AND trigger = 'COMPACT TABLE'",
                        table.replace('\'', "''")
                    ),
                    progress: Box::new(compacting),
                };
                with_progress(client, &s.sql, watch).await?
            }
            Ok(tessera_sql::Statement::SetReplicas { table, .. }) => {
                let watch = Watch {
                    label: format!("copy {table}"),
                    unit: "copies in sync",
                    poll: format!("SHOW PARTITIONS {table}"),
                    progress: Box::new(copies_in_sync),
                };
                with_progress(client, &s.sql, watch).await?
            }
            Ok(tessera_sql::Statement::RebalanceApply { .. }) => {
                let plan = client.query(&s.sql).await?;
                write_result(&mut stdout.lock(), &plan, Format::Table)?;
                follow_rebalance(client).await?;
                client.query("SHOW REBALANCE").await?
            }
            _ => client.query(&s.sql).await?,
        };
        let mut out = stdout.lock();
        write_result(&mut out, &result, Format::Table)?;
        if timing {
            let rows: usize = result.batches.iter().map(|b| b.num_rows()).sum();
            let noun = if rows == 1 { "row" } else { "rows" };
            println!("{rows} {noun} in {:.3} s", start.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

/// Reads (done, total) partitions off the result of a progress query.
type ReadProgress = Box<dyn Fn(&[arrow::array::RecordBatch]) -> Option<(u32, u32)>>;

/// What a long statement's progress is read from: a query on a second
/// connection, and how to read its result.
struct Watch {
    label: String,
    /// What is counted.
    unit: &'static str,
    poll: String,
    progress: ReadProgress,
}

/// Runs a statement, showing its progress (partitions done) as `watch`
/// reads it every 200 ms on a second connection.
async fn with_progress(
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
fn building(batches: &[arrow::array::RecordBatch], index: &str) -> Option<(u32, u32)> {
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
fn compacting(batches: &[arrow::array::RecordBatch]) -> Option<(u32, u32)> {
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
async fn follow_rebalance(client: &mut Client) -> Result<(), String> {
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
fn copies_in_sync(batches: &[arrow::array::RecordBatch]) -> Option<(u32, u32)> {
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

fn history_path() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".tessera_history"))
}

pub async fn interactive(mut client: Client, addr: &str) -> Result<(), String> {
    let mut editor = DefaultEditor::new().map_err(|e| e.to_string())?;
    if let Some(p) = history_path() {
        let _ = editor.load_history(&p);
    }
    println!("Connected to Tessera at {addr}. Type \\help for help, \\q to quit.");
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "tessera> "
        } else {
            "     ...> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let trimmed = line.trim();
                if buffer.is_empty() {
                    match trimmed {
                        "\\q" | "quit" | "exit" => break,
                        "\\help" | "\\h" | "\\?" | "help" => {
                            println!("{HELP}");
                            continue;
                        }
                        "" => continue,
                        _ => {}
                    }
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if trimmed.ends_with(';') {
                    // Passwords of user statements stay out of the history file.
                    let _ = editor.add_history_entry(tessera_sql::redact(buffer.trim()));
                    // Ctrl-C while a statement runs drops its result
                    // stream: the server cancels the query's tasks on
                    // every worker, and the shell stays open.
                    tokio::select! {
                        result = run_statements(&mut client, &buffer, true) => {
                            if let Err(e) = result {
                                eprintln!("Error: {e}");
                            }
                        }
                        _ = tokio::signal::ctrl_c() => {
                            eprintln!("Cancelled.");
                        }
                    }
                    buffer.clear();
                }
            }
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    if let Some(p) = history_path() {
        let _ = editor.save_history(&p);
    }
    Ok(())
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
