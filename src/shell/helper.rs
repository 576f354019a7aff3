//! The shell's line editor helper: a statement is whole when the SQL lexer
//! says so (a `;` inside a string or a comment does not end it), and Tab
//! completes keywords, table and column names, and file paths in quotes.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Helper};

/// Words Tab completes besides names.
const KEYWORDS: &[&str] = &[
    "ALTER",
    "ANALYZE",
    "AND",
    "APPLY",
    "AS",
    "ASC",
    "ASYNC",
    "BETWEEN",
    "BY",
    "CANCEL",
    "CASE",
    "CAST",
    "CLUSTER",
    "COMPACT",
    "COPY",
    "COUNT",
    "CREATE",
    "DELETE",
    "DESC",
    "DESCRIBE",
    "DISTINCT",
    "DRAIN",
    "DROP",
    "DYNAMIC",
    "ELSE",
    "END",
    "EXISTS",
    "EXPLAIN",
    "EXTERNAL",
    "FALSE",
    "FIXED",
    "FROM",
    "FULL",
    "GLOBAL",
    "GROUP",
    "HASH",
    "HAVING",
    "IN",
    "INDEX",
    "INDEXES",
    "INNER",
    "INSERT",
    "INTO",
    "IS",
    "JOIN",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LOCAL",
    "MERGE",
    "NOT",
    "NULL",
    "OFFSET",
    "ON",
    "OR",
    "ORDER",
    "OUTER",
    "PARTITION",
    "PARTITIONS",
    "PER",
    "PROPORTIONAL",
    "QUORUM",
    "RANGE",
    "REBALANCE",
    "REPLICAS",
    "RIGHT",
    "SELECT",
    "SET",
    "SHOW",
    "SIZE",
    "SPLIT",
    "SYNC",
    "TABLE",
    "TABLES",
    "THEN",
    "TRUE",
    "UNION",
    "UPDATE",
    "VALUES",
    "WHEN",
    "WHERE",
    "WITH",
    "WORKER",
    "WORKERS",
    "WRITE",
];

/// Table and column names the server had when last asked.
#[derive(Debug, Default)]
pub struct Names {
    pub tables: Vec<String>,
    pub columns: Vec<String>,
}

pub struct ShellHelper {
    pub names: Arc<Mutex<Names>>,
    files: FilenameCompleter,
}

impl ShellHelper {
    pub fn new(names: Arc<Mutex<Names>>) -> Self {
        Self {
            names,
            files: FilenameCompleter::new(),
        }
    }
}

/// Whether the shell runs `input` now: a whole statement, a `\` or `.`
/// command, or a word that leaves the shell.
pub fn is_whole(input: &str) -> bool {
    let t = input.trim();
    t.is_empty()
        || t.starts_with('\\')
        || (t.starts_with('.') && !t.contains('\n'))
        || matches!(t, "quit" | "exit" | "help")
        || tessera_sql::ends_statement(t)
}

impl Validator for ShellHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if is_whole(ctx.input()) {
            ValidationResult::Valid(None)
        } else {
            ValidationResult::Incomplete
        })
    }
}

/// Whether `pos` in `line` is inside a single-quoted string.
fn in_string(line: &str, pos: usize) -> bool {
    line[..pos].chars().filter(|c| *c == '\'').count() % 2 == 1
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        if in_string(line, pos) {
            return self.files.complete(line, pos, ctx);
        }
        let start = line[..pos]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let word = &line[start..pos];
        if word.is_empty() {
            return Ok((pos, vec![]));
        }
        let lower = word.to_ascii_lowercase();
        let mut out: Vec<Pair> = vec![];
        let mut add = |candidate: &str, shown: String| {
            if !out.iter().any(|p| p.replacement == shown) {
                out.push(Pair {
                    display: candidate.to_string(),
                    replacement: shown,
                });
            }
        };
        // After FROM, JOIN, INTO, TABLE, ... only a table can come.
        let before = line[..start]
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .rfind(|w| !w.is_empty())
            .unwrap_or("")
            .to_ascii_uppercase();
        let table_only = matches!(
            before.as_str(),
            "FROM" | "JOIN" | "INTO" | "TABLE" | "UPDATE" | "DESCRIBE" | "PARTITIONS" | "ON"
        );
        if let Ok(names) = self.names.lock() {
            let columns = if table_only {
                &[][..]
            } else {
                &names.columns[..]
            };
            for n in names.tables.iter().chain(columns) {
                if n.to_ascii_lowercase().starts_with(&lower) {
                    add(n, n.clone());
                }
            }
        }
        if table_only {
            return Ok((start, out));
        }
        // Keywords in the case the word is typed in.
        let upper = word.chars().next().is_some_and(char::is_uppercase);
        for k in KEYWORDS {
            if k.to_ascii_lowercase().starts_with(&lower) {
                let shown = if upper {
                    (*k).to_string()
                } else {
                    k.to_ascii_lowercase()
                };
                add(k, shown);
            }
        }
        Ok((start, out))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}

impl Highlighter for ShellHelper {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}

impl Helper for ShellHelper {}

#[cfg(test)]
mod tests {
    use rustyline::history::DefaultHistory;

    use super::*;

    #[test]
    fn statements_and_commands_are_whole() {
        assert!(is_whole("SELECT 1;"));
        assert!(is_whole("SELECT 1; -- note"));
        assert!(is_whole("\\dt"));
        assert!(is_whole(".mode csv"));
        assert!(is_whole("quit"));
        assert!(!is_whole("SELECT 'a;\nb"));
        assert!(!is_whole("SELECT 1"));
    }

    #[test]
    fn completes_names_then_keywords() {
        let names = Arc::new(Mutex::new(Names {
            tables: vec!["lineitem".into(), "orders".into()],
            columns: vec!["l_orderkey".into(), "o_orderkey".into()],
        }));
        let helper = ShellHelper::new(names);
        let history = DefaultHistory::new();
        let ctx = Context::new(&history);
        let line = "SELECT l_o FROM l";
        let (at, got) = helper.complete(line, 10, &ctx).unwrap();
        assert_eq!((at, got[0].replacement.as_str()), (7, "l_orderkey"));
        let (at, got) = helper.complete(line, line.len(), &ctx).unwrap();
        let got: Vec<&str> = got.iter().map(|p| p.replacement.as_str()).collect();
        assert_eq!((at, got), (16, vec!["lineitem"]));
        let (_, got) = helper.complete("sel", 3, &ctx).unwrap();
        assert_eq!(got[0].replacement, "select");
        let (_, got) = helper.complete("SEL", 3, &ctx).unwrap();
        assert_eq!(got[0].replacement, "SELECT");
    }
}
