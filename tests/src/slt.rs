//! sqllogictest through Flight SQL: each `.slt` file runs against a fresh
//! `TestCluster`. Two additions to the format:
//!
//! * `statement ok` with the text `RESTART CLUSTER` stops the cluster and
//!   starts it again on the same data dir (not SQL: the harness does it);
//! * an expected result whose lines all read `<contains> TEXT` passes when
//!   every TEXT occurs in the output, for plans whose other details vary.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::Mutex;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_flight::sql::client::FlightSqlServiceClient;
use sqllogictest::{DBOutput, DefaultColumnType};
use tonic::transport::Channel;

use crate::cluster::{TestCluster, run_query};

/// A sqllogictest connection: a Flight SQL client to the coordinator.
pub struct FlightSqlDb {
    client: FlightSqlServiceClient<Channel>,
    cluster: Arc<Mutex<Option<TestCluster>>>,
}

async fn connect(url: String) -> Result<FlightSqlServiceClient<Channel>, SqlError> {
    let channel = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| SqlError(e.to_string()))?
        .connect()
        .await
        .map_err(|e| SqlError(e.to_string()))?;
    Ok(FlightSqlServiceClient::new(channel))
}

fn contains_validator(
    normalizer: sqllogictest::Normalizer,
    actual: &[Vec<String>],
    expected: &[String],
) -> bool {
    let needles: Vec<&str> = expected
        .iter()
        .filter_map(|e| e.strip_prefix("<contains> "))
        .collect();
    if needles.is_empty() || needles.len() != expected.len() {
        return sqllogictest::default_validator(normalizer, actual, expected);
    }
    let text: String = actual.iter().flatten().map(|c| format!("{c}\n")).collect();
    needles.iter().all(|n| text.contains(n))
}

#[derive(Debug)]
pub struct SqlError(pub String);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SqlError {}

fn column_type(t: &DataType) -> DefaultColumnType {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => DefaultColumnType::Integer,
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
            DefaultColumnType::FloatingPoint
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

fn rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, SqlError> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = vec![];
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SqlError(e.to_string()))?;
        for r in 0..b.num_rows() {
            out.push(
                formatters
                    .iter()
                    .zip(b.columns())
                    .map(|(f, c)| {
                        let s = f.value(r).to_string();
                        if c.is_valid(r) && s.is_empty() {
                            "(empty)".to_string()
                        } else {
                            s
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// What a statement's batches are to sqllogictest: the row count of an
/// INSERT, nothing for other statements without rows, else the rows.
pub(crate) fn output(
    sql: &str,
    batches: &[RecordBatch],
) -> Result<DBOutput<DefaultColumnType>, SqlError> {
    let Some(first) = batches.first() else {
        return Ok(DBOutput::StatementComplete(0));
    };
    let schema = first.schema();
    if schema.fields().len() == 1
        && schema.field(0).name() == "count"
        && sql.trim_start().to_ascii_uppercase().starts_with("INSERT")
    {
        let n = batches
            .iter()
            .filter_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::UInt64Array>()
                    .map(|a| a.iter().flatten().sum::<u64>())
            })
            .sum();
        return Ok(DBOutput::StatementComplete(n));
    }
    if schema.fields().is_empty() {
        return Ok(DBOutput::StatementComplete(0));
    }
    let types = schema
        .fields()
        .iter()
        .map(|f| column_type(f.data_type()))
        .collect();
    Ok(DBOutput::Rows {
        types,
        rows: rows(batches)?,
    })
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for FlightSqlDb {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        if sql.trim().eq_ignore_ascii_case("RESTART CLUSTER") {
            let mut guard = self.cluster.lock().await;
            let Some(cluster) = guard.take() else {
                return Err(SqlError("no cluster to restart".into()));
            };
            let cluster = cluster.restart().await;
            self.client = connect(cluster.url()).await?;
            *guard = Some(cluster);
            return Ok(DBOutput::StatementComplete(0));
        }
        let batches = run_query(&mut self.client, sql).await.map_err(SqlError)?;
        output(sql, &batches)
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "tessera"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// Runs one `.slt` file against `cluster`, panicking with the runner's
/// report on the first mismatch, and stops the cluster.
pub async fn run_slt_file(cluster: TestCluster, path: &Path) {
    let shared = Arc::new(Mutex::new(Some(cluster)));
    let for_conn = Arc::clone(&shared);
    let mut runner = sqllogictest::Runner::new(move || {
        let cluster = Arc::clone(&for_conn);
        async move {
            let url = match cluster.lock().await.as_ref() {
                Some(c) => c.url(),
                None => return Err(SqlError("cluster is not running".into())),
            };
            Ok(FlightSqlDb {
                client: connect(url).await?,
                cluster,
            })
        }
    });
    runner.with_validator(contains_validator);
    let result = runner.run_file_async(path).await;
    if let Some(cluster) = shared.lock().await.take() {
        cluster.stop().await;
    }
    if let Err(e) = result {
        panic!("{}: {}", path.display(), e.display(true));
    }
}
