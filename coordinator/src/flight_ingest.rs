//! Bulk ingestion (ADBC `adbc_ingest`, `tessera load`): Flight SQL's
//! `CommandStatementIngest` in the modes ADBC defines. The rows are one
//! atomic write, sent on to the workers as they arrive (see
//! [`crate::write_stream`]; a table with CLUSTER BY or indexes takes them
//! through the buffered write path). A replaced table keeps its rows until
//! the new ones are all written (to a staging table that then takes its
//! place in one catalog write): a failed replace changes nothing.
//!
//! | mode          | table missing        | table there          |
//! |---------------|----------------------|----------------------|
//! | create        | created, rows added  | refused              |
//! | append        | refused              | rows added           |
//! | replace       | created, rows added  | replaced (schema, rows) |
//! | create_append | created, rows added  | rows added           |
//!
//! A table ingest creates has the uploaded schema and the partitioning the
//! option `tessera.partition_by` gives (`HASH (k) PARTITIONS 8`), or the
//! replaced table's, or one partition.

use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{CommandStatementIngest, TableExistsOption, TableNotExistOption};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::common::Result;
use futures::{Stream, StreamExt, TryStreamExt};
use tessera_sql::PartitionScheme;
use tessera_worker::ErrorKind;
use tonic::Status;

use crate::catalog::STAGING_PREFIX;
use crate::engine::Coordinator;
use crate::flight_common::status;
use crate::panic_guard::guarded;
use crate::write_stream::write_stream;

/// The statement option naming a created table's partitioning.
pub const PARTITION_BY_OPTION: &str = "tessera.partition_by";

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQL type of an uploaded column.
fn sql_type(name: &str, t: &DataType) -> Result<String, Status> {
    Ok(match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INT UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTEA".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(TimeUnit::Second, None) => "TIMESTAMP(0)".into(),
        DataType::Timestamp(TimeUnit::Millisecond, None) => "TIMESTAMP(3)".into(),
        DataType::Timestamp(TimeUnit::Microsecond, None) => "TIMESTAMP(6)".into(),
        DataType::Timestamp(TimeUnit::Nanosecond, None) => "TIMESTAMP".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Dictionary(_, value) => return sql_type(name, value),
        other => {
            return Err(Status::invalid_argument(format!(
                "column '{name}' is {other}, which a table cannot hold; cast it (to VARCHAR, \
                 BIGINT, DOUBLE, TIMESTAMP...) before ingesting"
            )));
        }
    })
}

/// CREATE TABLE for the uploaded `schema`, partitioned by `partition_by`.
fn create_sql(table: &str, schema: &Schema, partition_by: Option<&str>) -> Result<String, Status> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            Ok(format!(
                "{} {}",
                quoted(f.name()),
                sql_type(f.name(), f.data_type())?
            ))
        })
        .collect::<Result<Vec<_>, Status>>()?;
    let mut sql = format!("CREATE TABLE {} ({})", quoted(table), columns.join(", "));
    if let Some(p) = partition_by {
        sql.push_str(" PARTITION BY ");
        sql.push_str(p);
    }
    Ok(sql)
}

/// A replaced table's partitioning, if its columns are still there.
fn kept_scheme(scheme: &PartitionScheme, schema: &Schema) -> Option<String> {
    let columns: Vec<&str> = match scheme {
        PartitionScheme::Single => return None,
        PartitionScheme::Hash {
            columns,
            cluster_by,
            ..
        } => columns
            .iter()
            .chain(cluster_by)
            .map(String::as_str)
            .collect(),
        PartitionScheme::Range { column, .. } => vec![column.as_str()],
    };
    columns
        .iter()
        .all(|c| schema.field_with_name(c).is_ok())
        .then(|| scheme.to_string())
}

/// Ingests the stream's rows into `cmd.table` as `cmd`'s mode says.
pub async fn ingest(
    coordinator: &Arc<Coordinator>,
    cmd: CommandStatementIngest,
    data: PeekableFlightDataStream,
) -> Result<i64, Status> {
    let table = cmd.table.clone();
    if cmd.temporary {
        return Err(Status::invalid_argument(
            "temporary tables are not supported; ingest into a table (mode 'create' makes one)",
        ));
    }
    let options = cmd.table_definition_options.unwrap_or_default();
    let if_exists = TableExistsOption::try_from(options.if_exists).unwrap_or_default();
    let if_missing = TableNotExistOption::try_from(options.if_not_exist).unwrap_or_default();
    coordinator.catch_up().await.map_err(status)?;
    let existing = coordinator.catalog().table_def(&table).map_err(status)?;
    match (&existing, if_exists, if_missing) {
        (Some(_), TableExistsOption::Fail, _) => {
            return Err(Status::already_exists(format!(
                "table '{table}' already exists; ingest with mode 'append' to add rows, or \
                 'replace' to replace it"
            )));
        }
        (None, _, TableNotExistOption::Create) => {}
        (None, ..) => {
            return Err(Status::not_found(format!(
                "table '{table}' does not exist; ingest with mode 'create' (or \
                 'create_append'), or CREATE TABLE {table} (...) PARTITION BY ... first"
            )));
        }
        _ => {}
    }
    let mut decoded = FlightRecordBatchStream::new_from_flight_data(
        data.map_err(|s| FlightError::Tonic(Box::new(s))),
    );
    let first = decoded.try_next().await.map_err(bad_data)?;
    let schema = decoded
        .schema()
        .cloned()
        .or_else(|| first.as_ref().map(|b| b.schema()));
    let Some(schema) = schema else {
        return Err(Status::invalid_argument(
            "the ingest stream carries no schema; send at least the schema of the rows",
        ));
    };
    let partition_by = cmd.options.get(PARTITION_BY_OPTION).cloned();
    let replacing = existing.is_some() && if_exists == TableExistsOption::Replace;
    let rows = Box::pin(futures::stream::iter(first.map(Ok)).chain(
        decoded.map_err(|e| ErrorKind::InvalidArgument.error(bad_data(e).message().to_string())),
    ));
    if existing.is_some() && !replacing {
        return write_rows(coordinator, &table, rows).await;
    }
    let scheme = partition_by.or_else(|| {
        existing
            .as_ref()
            .and_then(|def| kept_scheme(&def.scheme, &schema))
    });
    // The rows go to a staging table that takes the name in one catalog
    // write once they are all in: a replaced table's rows stay until then,
    // and a failed upload never drops a table another client made or
    // wrote to meanwhile.
    let target = format!("{STAGING_PREFIX}{:016x}", rand::random::<u64>());
    let mut create = create_sql(&target, &schema, scheme.as_deref())?;
    if let Some(def) = existing.as_ref().filter(|d| d.replication.replicas > 1) {
        create.push_str(&format!(" {}", def.replication));
    }
    guarded(coordinator.create_staging_table(&create))
        .await
        .map_err(status)?;
    // Until then the staging table goes again on any failure, or if the
    // client goes away (this call then stops where it is): nothing changed.
    let mut made = MadeTable {
        coordinator: Arc::clone(coordinator),
        name: Some(target.clone()),
    };
    let written = write_rows(coordinator, &target, rows).await?;
    guarded(coordinator.replace_table(&table, &target, replacing))
        .await
        .map_err(status)?;
    made.name = None;
    Ok(written)
}

/// A table an ingest made, dropped again unless the ingest succeeded.
struct MadeTable {
    coordinator: Arc<Coordinator>,
    name: Option<String>,
}

impl Drop for MadeTable {
    fn drop(&mut self) {
        let (Some(name), Ok(runtime)) = (self.name.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let coordinator = Arc::clone(&self.coordinator);
        runtime.spawn(async move {
            let drop = format!("DROP TABLE IF EXISTS {}", quoted(&name));
            if let Err(e) = guarded(coordinator.run(&drop)).await {
                tracing::warn!(table = %name, error = %e, "cannot drop the table a failed ingest made");
            }
        });
    }
}

/// Writes `rows` into `table`, sent on to the workers as they come.
async fn write_rows(
    coordinator: &Coordinator,
    table: &str,
    mut rows: impl Stream<Item = Result<RecordBatch>> + Unpin,
) -> Result<i64, Status> {
    let def = coordinator
        .catalog()
        .table_def(table)
        .map_err(status)?
        .ok_or_else(|| Status::not_found(format!("table '{table}' was dropped meanwhile")))?;
    let (catalog, reports) = (coordinator.catalog(), coordinator.write_reports());
    let written = guarded(write_stream(catalog, reports, &def, &mut rows))
        .await
        .map_err(status)?;
    Ok(written as i64)
}

fn bad_data(e: FlightError) -> Status {
    Status::invalid_argument(format!("bad Arrow data in the ingest stream: {e}"))
}
