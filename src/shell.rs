//! `tessera shell`: an interactive SQL prompt. Statements end where the
//! SQL lexer finds a `;` (not one inside a string or a comment) and may
//! span lines; each goes into the history file as it runs. Results are
//! aligned tables of at most `.maxrows` rows cut to the terminal's width,
//! or records, CSV, JSON or Markdown; `\` and `.` commands list tables,
//! describe them, switch the display, read scripts and write results to
//! files (see `\help`).

mod display;
mod helper;
mod progress;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Config, Editor};
use tessera_sql::split_statements;

use crate::client::{Client, QueryResult, QueryStream};
use crate::output::{Format, write_result, write_stream};
use display::{Display, Mode};
use helper::{Names, ShellHelper};
use progress::{
    StatementBar, Watch, building, compacting, copies_in_sync, follow_rebalance, with_progress,
};

const HELP: &str = "\
Statements end with ';' and may span lines.
  SHOW TABLES;                      tables and their partitioning
  DESCRIBE t;                       columns and partition scheme of t
  SHOW PARTITIONS t;                partitions of t: range, copies and their states, rows, bytes
  ALTER TABLE t SET REPLICAS 2;     copies of each partition (caught up before it returns)
  ALTER TABLE t SPLIT PARTITION 3;  one partition becomes two (MERGE PARTITIONS 3, 4: the reverse)
  ALTER TABLE t SET REBALANCE DYNAMIC; or FIXED, PROPORTIONAL: how its partitions change
  EXPLAIN REBALANCE [t];            the splits, merges and moves that would even the workers out
  REBALANCE APPLY [t];              run them in the background (SHOW REBALANCE, REBALANCE CANCEL)
  EXPLAIN SELECT ...;               distributed plan with partitions kept
  CREATE TABLE t (...) PARTITION BY HASH (k) PARTITIONS 8;
  CREATE TABLE t (...) PARTITION BY RANGE (ts) SPLIT AT (v1, v2);
  CREATE INDEX i ON t (c) LOCAL | GLOBAL [SYNC | ASYNC] [PARTITIONS n];
  SHOW INDEXES [ON t];              kind, entries, state, ASYNC lag
  COMPACT TABLE t;                  merge small files now (tessera.compactions lists merges)
Commands:
  \\dt  .tables                      tables
  \\d t  .schema t                   columns of t
  \\di [t]                          indexes (of t)
  \\dw                              workers
  \\x  .mode line                    one record per block (\\x again: back to the table)
  .mode table|line|csv|json|markdown how results are shown
  .maxrows N                        rows shown at most (first and last; 0: all) [40]
  .maxwidth N                       width tables are cut to (0: no limit) [the terminal's]
  \\timing  .timer on|off             row counts and times after each statement
  \\i FILE  .read FILE               run the statements of FILE
  \\o [FILE]  .output [FILE]         results into FILE (none: back to the screen)
  \\help  this text    \\q  quit";

/// Where an interactive session's results go and how they look.
struct Session {
    display: Display,
    /// `\o FILE`: results go there instead of the screen.
    output: Option<std::fs::File>,
}

impl Session {
    fn show(&mut self, result: &QueryResult) -> Result<(), String> {
        match &mut self.output {
            Some(file) => self.display.show(file, result),
            None => self.display.show(&mut std::io::stdout().lock(), result),
        }
    }

    /// Shows a result as its rows arrive; the rows there were.
    async fn show_stream(&mut self, result: QueryStream) -> Result<usize, String> {
        match &mut self.output {
            Some(file) => self.display.show_stream(file, result).await,
            None => {
                self.display
                    .show_stream(&mut std::io::stdout(), result)
                    .await
            }
        }
    }
}

/// Runs each statement of `sql`, printing results; stops at the first
/// error. Without a session (`tessera shell -c`), results are plain
/// aligned tables.
pub async fn run_statements(client: &mut Client, sql: &str, timing: bool) -> Result<(), String> {
    run_in(client, sql, timing, None).await
}

async fn run_in(
    client: &mut Client,
    sql: &str,
    timing: bool,
    mut session: Option<&mut Session>,
) -> Result<(), String> {
    let statements = split_statements(sql).map_err(|e| e.to_string())?;
    for s in statements {
        let start = Instant::now();
        let whole = match tessera_sql::parse_statement(&s.sql) {
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
                show_whole(session.as_deref_mut(), &plan)?;
                follow_rebalance(client).await?;
                client.query("SHOW REBALANCE").await?
            }
            _ => {
                // Shown as the rows arrive: a session keeps only what it
                // shows; `-c` prints every row, as a table needs them all.
                let bar = StatementBar::start(client);
                let mut result = client.query_stream(&s.sql).await?;
                if let Some(bar) = &bar {
                    // Rows printed as they arrive take the bar's place.
                    let progressive = session
                        .as_deref()
                        .is_some_and(|s| s.output.is_none() && s.display.prints_as_rows_arrive());
                    bar.stop_with(&mut result, progressive);
                }
                let rows = match session.as_deref_mut() {
                    Some(session) => session.show_stream(result).await?,
                    None => write_stream(&mut std::io::stdout(), result, Format::Table).await?,
                };
                report_timing(timing, rows, start);
                continue;
            }
        };
        let rows = show_whole(session.as_deref_mut(), &whole)?;
        report_timing(timing, rows, start);
    }
    Ok(())
}

/// Shows a result held whole: in the session's layout, or (`-c`) as a
/// table; the rows it had.
fn show_whole(session: Option<&mut Session>, result: &QueryResult) -> Result<usize, String> {
    match session {
        Some(session) => session.show(result)?,
        None => write_result(&mut std::io::stdout().lock(), result, Format::Table)?,
    }
    Ok(result.batches.iter().map(|b| b.num_rows()).sum())
}

/// `\timing`: the statement's rows and time.
fn report_timing(timing: bool, rows: usize, start: Instant) {
    if timing {
        let noun = if rows == 1 { "row" } else { "rows" };
        println!("{rows} {noun} in {:.3} s", start.elapsed().as_secs_f64());
    }
}

/// What a `\` or `.` command line asks for.
enum Command {
    Quit,
    Help,
    /// Run this SQL.
    Sql(String),
    Timing(Option<bool>),
    Expanded(Option<bool>),
    Mode(Mode),
    MaxRows(usize),
    MaxWidth(u16),
    Read(String),
    Output(Option<String>),
}

/// `on`, `off`, or nothing (toggle).
fn switch(arg: &str) -> Result<Option<bool>, String> {
    match arg.to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "on" | "true" | "1" => Ok(Some(true)),
        "off" | "false" | "0" => Ok(Some(false)),
        other => Err(format!("'{other}': say on or off")),
    }
}

/// Reads a command line (`\dt`, `.mode csv`, ...).
fn command(line: &str) -> Result<Command, String> {
    let line = line.trim().trim_end_matches(';').trim();
    let (name, arg) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let arg = arg.trim();
    let number = |what: &str| {
        arg.parse::<usize>()
            .map_err(|_| format!("{name} takes a number of {what}: {name} 40"))
    };
    Ok(match name {
        "\\q" | "quit" | "exit" | ".quit" | ".exit" => Command::Quit,
        "\\help" | "\\h" | "\\?" | "help" | ".help" => Command::Help,
        "\\dt" | ".tables" => Command::Sql("SHOW TABLES".into()),
        "\\d" | ".schema" if arg.is_empty() => Command::Sql("SHOW TABLES".into()),
        "\\d" | ".schema" => Command::Sql(format!("DESCRIBE {arg}")),
        "\\di" | ".indexes" if arg.is_empty() => Command::Sql("SHOW INDEXES".into()),
        "\\di" | ".indexes" => Command::Sql(format!("SHOW INDEXES ON {arg}")),
        "\\dw" | ".workers" => Command::Sql("SHOW WORKERS".into()),
        "\\timing" | ".timer" => Command::Timing(switch(arg)?),
        "\\x" => Command::Expanded(switch(arg)?),
        ".mode" => Command::Mode(Mode::parse(arg).ok_or_else(|| {
            format!("'{arg}' is not a mode: .mode table, line, csv, json or markdown")
        })?),
        ".maxrows" => Command::MaxRows(number("rows")?),
        ".maxwidth" => Command::MaxWidth(
            u16::try_from(number("characters")?).map_err(|_| "at most 65535".to_string())?,
        ),
        "\\i" | ".read" if !arg.is_empty() => Command::Read(arg.to_string()),
        "\\o" | ".output" => Command::Output((!arg.is_empty()).then(|| arg.to_string())),
        _ => return Err(format!("unknown command '{name}'; \\help lists them")),
    })
}

/// Asks the server for its tables' and columns' names (for Tab).
async fn refresh_names(client: &mut Client, names: &Mutex<Names>) {
    let Ok(result) = client
        .query(
            "SELECT table_name, column_name FROM information_schema.columns \
             WHERE table_schema = 'public'",
        )
        .await
    else {
        return;
    };
    use arrow::array::AsArray;
    let mut tables = vec![];
    let mut columns = vec![];
    for b in &result.batches {
        let (Some(t), Some(c)) = (
            b.column(0).as_string_opt::<i32>(),
            b.column(1).as_string_opt::<i32>(),
        ) else {
            continue;
        };
        for i in 0..b.num_rows() {
            tables.push(t.value(i).to_string());
            columns.push(c.value(i).to_string());
        }
    }
    for v in [&mut tables, &mut columns] {
        v.sort();
        v.dedup();
    }
    if let Ok(mut n) = names.lock() {
        *n = Names { tables, columns };
    }
}

fn history_path() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".tessera_history"))
}

pub async fn interactive(mut client: Client, addr: &str) -> Result<(), String> {
    let names = Arc::new(Mutex::new(Names::default()));
    let config = Config::builder()
        .auto_add_history(false)
        .completion_type(rustyline::CompletionType::List)
        .build();
    let mut editor: Editor<ShellHelper, DefaultHistory> =
        Editor::with_config(config).map_err(|e| e.to_string())?;
    editor.set_helper(Some(ShellHelper::new(Arc::clone(&names))));
    let history = history_path();
    if let Some(p) = &history {
        let _ = editor.load_history(p);
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut session = Session {
        display: Display {
            color: tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            ..Display::default()
        },
        output: None,
    };
    // Ctrl-C while a statement runs (the terminal is not in the line
    // editor's raw mode then) cancels it. Registered once, now: a Ctrl-C
    // that came before a statement's wait began must not end the shell.
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("cannot catch Ctrl-C: {e}"))?;
    refresh_names(&mut client, &names).await;
    println!("Connected to Tessera at {addr}. Type \\help for help, \\q to quit.");
    loop {
        // A Ctrl-C that came while the last statement's results were being
        // shown is not for the next one (at the prompt the line editor
        // reads Ctrl-C itself; one pressed after Enter is for the
        // statement it ends).
        while futures::FutureExt::now_or_never(interrupts.recv()).is_some() {}
        let input = match editor.readline("tessera> ") {
            Ok(input) => input,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.to_string()),
        };
        let text = input.trim();
        if text.is_empty() {
            continue;
        }
        // Each statement goes into the history file as it runs (passwords
        // of user statements left out).
        let _ = editor.add_history_entry(tessera_sql::redact(text));
        if let Some(p) = &history {
            let _ = editor.append_history(p);
        }
        let is_command = text.starts_with('\\')
            || text.starts_with('.')
            || matches!(text, "quit" | "exit" | "help");
        let sql = if is_command {
            match command(text) {
                Ok(Command::Quit) => break,
                Ok(Command::Help) => {
                    println!("{HELP}");
                    continue;
                }
                Ok(Command::Sql(sql)) => sql,
                Ok(Command::Read(path)) => match std::fs::read_to_string(&path) {
                    Ok(script) => script,
                    Err(e) => {
                        report(&session, &format!("cannot read {path}: {e}"));
                        continue;
                    }
                },
                Ok(other) => {
                    if let Err(e) = set(&mut session, other) {
                        report(&session, &e);
                    }
                    continue;
                }
                Err(e) => {
                    report(&session, &e);
                    continue;
                }
            }
        } else {
            text.to_string()
        };
        let changes_names = {
            let upper = sql.trim_start().to_ascii_uppercase();
            ["CREATE", "DROP", "ALTER"]
                .iter()
                .any(|w| upper.starts_with(w))
        };
        let timing = session.display.timing;
        // Ctrl-C while a statement runs drops its result stream: the
        // server cancels the query's tasks on every worker, and the shell
        // stays open.
        tokio::select! {
            result = run_in(&mut client, &sql, timing, Some(&mut session)) => {
                if let Err(e) = result {
                    report(&session, &e);
                    if let Some(caret) = caret(&sql, &e) {
                        eprintln!("{caret}");
                    }
                }
            }
            _ = interrupts.recv() => {
                eprintln!("Cancelled.");
            }
        }
        if changes_names {
            refresh_names(&mut client, &names).await;
        }
    }
    Ok(())
}

/// Applies a display command.
fn set(session: &mut Session, command: Command) -> Result<(), String> {
    let display = &mut session.display;
    match command {
        Command::Timing(on) => {
            display.timing = on.unwrap_or(!display.timing);
            println!("Timing is {}.", if display.timing { "on" } else { "off" });
        }
        Command::Expanded(on) => {
            let line = on.unwrap_or(display.mode != Mode::Line);
            display.mode = if line { Mode::Line } else { Mode::Table };
            println!("Expanded display is {}.", if line { "on" } else { "off" });
        }
        Command::Mode(mode) => display.mode = mode,
        Command::MaxRows(n) => display.max_rows = n,
        Command::MaxWidth(w) => display.max_width = Some(w),
        Command::Output(None) => session.output = None,
        Command::Output(Some(path)) => {
            let file =
                std::fs::File::create(&path).map_err(|e| format!("cannot write {path}: {e}"))?;
            session.output = Some(file);
        }
        Command::Quit | Command::Help | Command::Sql(_) | Command::Read(_) => {}
    }
    Ok(())
}

/// Where in `sql` an error's `Line: n, Column: m` points, as psql shows
/// it: the line, and a caret under the column.
fn caret(sql: &str, error: &str) -> Option<String> {
    let at = error.rfind("Line: ")?;
    let (line, rest) = error[at + 6..].split_once(", Column: ")?;
    let line: usize = line.trim().parse().ok()?;
    let column: usize = rest
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    let text = sql.lines().nth(line.checked_sub(1)?)?;
    let prefix = format!("LINE {line}: ");
    let pad = prefix.chars().count() + text.chars().take(column.saturating_sub(1)).count();
    Some(format!("{prefix}{text}\n{}^", " ".repeat(pad)))
}

/// Prints an error (in red on a terminal that takes colours).
fn report(session: &Session, error: &str) {
    let mut err = std::io::stderr().lock();
    let _ = if session.display.color {
        writeln!(err, "\x1b[1;31mError:\x1b[0m {error}")
    } else {
        writeln!(err, "Error: {error}")
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_caret_under_the_column() {
        let error = "sql parser error: Expected: an SQL statement, found: SELEC at Line: 2, \
                     Column: 3";
        assert_eq!(
            super::caret("-- x\n  SELEC 1;", error).unwrap(),
            "LINE 2:   SELEC 1;\n          ^"
        );
        assert!(super::caret("SELECT 1", "no position").is_none());
    }
}
