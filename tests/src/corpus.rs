//! Runs a public sqllogictest corpus (for example SQLite's `select1.test`
//! ... `select5.test`, `index/`, `random/`) record by record, on two
//! engines: a real `tessera serve` process whose tables are all
//! hash-partitioned (every `CREATE TABLE` gets `PARTITION BY HASH (<first
//! column>) PARTITIONS 4`), and single-process DataFusion on the same
//! statements. Every record DataFusion passes must pass on Tessera too;
//! failures are grouped by cause.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::prelude::SessionContext;
use sqllogictest::{
    AsyncDB, DBOutput, DefaultColumnType, MakeConnection, Record, RecordOutput, Runner,
};
use tonic::transport::Channel;

use crate::cluster::run_query;
use crate::slt::{SqlError, output};

/// Partitions given to every table of the corpus on Tessera.
pub const PARTITIONS: u32 = 4;

/// What one engine made of one file's records (by position in the file).
#[derive(Debug, Default)]
pub struct Tally {
    pub passed: BTreeSet<usize>,
    pub skipped: usize,
    pub failed: BTreeMap<usize, String>,
}

/// Single-process DataFusion, one session per file.
pub struct DataFusionDb {
    ctx: SessionContext,
}

#[async_trait::async_trait]
impl AsyncDB for DataFusionDb {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let df = self
            .ctx
            .sql(sql)
            .await
            .map_err(|e| SqlError(e.to_string()))?;
        let batches = df.collect().await.map_err(|e| SqlError(e.to_string()))?;
        output(sql, &batches)
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "datafusion"
    }
}

/// A `tessera serve` process; tables made through it are hash-partitioned.
pub struct TesseraDb {
    client: FlightSqlServiceClient<Channel>,
}

/// `CREATE TABLE name (first ...)` → the same with `PARTITION BY HASH
/// (first) PARTITIONS n` appended; other statements as they are.
pub fn partitioned(sql: &str) -> String {
    let trimmed = sql.trim().trim_end_matches(';');
    let upper = trimmed.to_ascii_uppercase();
    if !upper.starts_with("CREATE TABLE") || upper.contains(" AS ") || upper.contains("PARTITION") {
        return sql.to_string();
    }
    let Some(open) = trimmed.find('(') else {
        return sql.to_string();
    };
    let first = trimmed[open + 1..]
        .split(|c: char| c.is_whitespace() || c == ',' || c == ')')
        .find(|w| !w.is_empty());
    match first {
        Some(column) => format!("{trimmed} PARTITION BY HASH ({column}) PARTITIONS {PARTITIONS}"),
        None => sql.to_string(),
    }
}

#[async_trait::async_trait]
impl AsyncDB for TesseraDb {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let sql = partitioned(sql);
        let batches = run_query(&mut self.client, &sql).await.map_err(SqlError)?;
        output(&sql, &batches)
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "tessera"
    }
}

/// A server process, killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `binary serve --insecure --workers 3` on a free loopback port.
    pub fn start(binary: &Path) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("serve.log")).map_err(|e| e.to_string())?;
        let mut child = Command::new(binary)
            .args([
                "serve",
                "--insecure",
                "--workers",
                "3",
                "--listen",
                &addr,
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(&addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("tessera serve exited: {status}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("tessera serve did not listen within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            child,
            url: format!("http://{addr}"),
            _dir: dir,
        })
    }
}

/// A failure's cause, short and without the values that vary.
fn cause(error: &str) -> String {
    let first = error.lines().next().unwrap_or("").trim();
    if first.starts_with("query result mismatch") {
        return "wrong result".into();
    }
    if first.contains("expected to fail") || first.contains("expected error") {
        return "no error where one was expected".into();
    }
    let text = first
        .split("[SQL]")
        .next()
        .unwrap_or(first)
        .replace("statement failed: ", "")
        .replace("query failed: ", "");
    let mut out = String::new();
    let mut in_quote = false;
    for c in text.chars() {
        match c {
            '\'' | '"' => {
                in_quote = !in_quote;
                if in_quote {
                    out.push('…');
                }
            }
            _ if in_quote => {}
            '0'..='9' => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            c => out.push(c),
        }
    }
    out.chars().take(110).collect()
}

/// The SQLite corpus writes comments after conditions (`onlyif mysql #
/// DIV for integer division`), which this parser does not take.
fn without_condition_comments(text: &str) -> String {
    text.lines()
        .map(|line| {
            let condition = line.starts_with("onlyif ") || line.starts_with("skipif ");
            match line.find(" #") {
                Some(at) if condition => &line[..at],
                _ => line,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs every record of `path` on a fresh connection from `make`.
pub async fn run_file<D, M>(path: &Path, make: M) -> Result<Tally, String>
where
    D: AsyncDB<ColumnType = DefaultColumnType>,
    M: MakeConnection<Conn = D>,
{
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let records = sqllogictest::parse_with_name::<DefaultColumnType>(
        &without_condition_comments(&text),
        path.display().to_string(),
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut runner = Runner::new(make);
    runner.add_label("postgresql");
    // The SQLite corpus's results were recorded with results of more than
    // 8 values hashed (its harness's default).
    runner.with_hash_threshold(8);
    let mut tally = Tally::default();
    for (i, record) in records.into_iter().enumerate() {
        let counted = matches!(record, Record::Statement { .. } | Record::Query { .. });
        let result = runner.run_async(record).await;
        if !counted {
            continue;
        }
        match result {
            Ok(RecordOutput::Nothing) => tally.skipped += 1,
            Ok(_) => {
                tally.passed.insert(i);
            }
            Err(e) => {
                let text = e.to_string();
                if std::env::var("TESSERA_CORPUS_SHOW")
                    .is_ok_and(|n| tally.failed.len() < n.parse().unwrap_or(0))
                {
                    println!("{}: {text}", path.display());
                }
                tally.failed.insert(i, cause(&text));
            }
        }
    }
    Ok(tally)
}

/// The two engines' tallies of one file.
pub struct FileResult {
    pub path: PathBuf,
    pub datafusion: Tally,
    pub tessera: Tally,
}

impl FileResult {
    /// Records DataFusion passes and Tessera fails, with Tessera's cause.
    pub fn regressions(&self) -> Vec<(usize, &str)> {
        self.datafusion
            .passed
            .iter()
            .filter_map(|i| self.tessera.failed.get(i).map(|c| (*i, c.as_str())))
            .collect()
    }
}

/// Runs `path` on DataFusion and on a fresh `tessera serve` from `binary`.
pub async fn compare_file(path: &Path, binary: &Path) -> Result<FileResult, String> {
    let datafusion = run_file(path, || async {
        Ok::<_, SqlError>(DataFusionDb {
            ctx: SessionContext::new(),
        })
    })
    .await?;
    let server = Server::start(binary)?;
    let url = server.url.clone();
    let tessera = run_file(path, move || {
        let url = url.clone();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(url)
                .map_err(|e| SqlError(e.to_string()))?
                .connect()
                .await
                .map_err(|e| SqlError(e.to_string()))?;
            Ok::<_, SqlError>(TesseraDb {
                client: FlightSqlServiceClient::new(channel),
            })
        }
    })
    .await?;
    drop(server);
    Ok(FileResult {
        path: path.to_path_buf(),
        datafusion,
        tessera,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_get_a_hash_clause() {
        assert_eq!(
            partitioned("CREATE TABLE t1(a INTEGER, b INTEGER)"),
            "CREATE TABLE t1(a INTEGER, b INTEGER) PARTITION BY HASH (a) PARTITIONS 4"
        );
        assert_eq!(
            partitioned("CREATE TABLE tab0(pk INTEGER PRIMARY KEY, col0 INTEGER)"),
            "CREATE TABLE tab0(pk INTEGER PRIMARY KEY, col0 INTEGER) PARTITION BY HASH (pk) \
             PARTITIONS 4"
        );
        assert_eq!(partitioned("SELECT 1"), "SELECT 1");
        assert_eq!(
            cause("query failed: DataFusion error: column 'x1' not found [SQL] SELECT"),
            "DataFusion error: column … not found "
        );
    }
}
