//! `tessera shell`: an interactive SQL prompt with history, multi-line
//! statements ending in `;`, aligned results, row counts and timings.

use std::time::Instant;

use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use tessera_sql::split_statements;

use crate::client::Client;
use crate::output::{Format, write_result};

const HELP: &str = "\
Statements end with ';' and may span lines.
  SHOW TABLES;                      tables and their partitioning
  DESCRIBE t;                       columns and partition scheme of t
  SHOW PARTITIONS t;                partitions of t: range, worker, rows, bytes
  EXPLAIN SELECT ...;               distributed plan with partitions kept
  CREATE TABLE t (...) PARTITION BY HASH (k) PARTITIONS 8;
  CREATE TABLE t (...) PARTITION BY RANGE (ts) SPLIT AT (v1, v2);
Commands: \\help  this text    \\q  quit";

/// Runs each statement of `sql`, printing results; stops at the first error.
pub async fn run_statements(client: &mut Client, sql: &str, timing: bool) -> Result<(), String> {
    let statements = split_statements(sql).map_err(|e| e.to_string())?;
    let stdout = std::io::stdout();
    for s in statements {
        let start = Instant::now();
        let result = client.query(&s.sql).await?;
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
                    let _ = editor.add_history_entry(buffer.trim());
                    if let Err(e) = run_statements(&mut client, &buffer, true).await {
                        eprintln!("Error: {e}");
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
