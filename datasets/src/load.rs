//! Loading TPC-H into a running cluster over Flight SQL: `CREATE TABLE`
//! with Tessera's partitioning, then bulk ingestion (`CommandStatementIngest`)
//! in chunks, each chunk one atomic write.

use arrow::array::RecordBatch;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption,
};
use tonic::transport::Channel;

use crate::TpchTable;

/// Rows per ingest call (one transaction each). Every write adds a file to
/// each partition it touches, and scans pay per file: 2M rows make 3 files
/// per lineitem partition at SF 1 instead of 12.
const CHUNK_ROWS: usize = 2_000_000;

/// The text of a Flight error as the server sent it.
pub fn flight_error_text(e: FlightError) -> String {
    match e {
        // Made here from a failed connection (it has a source), not an
        // answer of the server's that something behind it is down.
        FlightError::Tonic(s)
            if s.code() == tonic::Code::Unavailable && std::error::Error::source(&*s).is_some() =>
        {
            format!("cannot reach the server: {}", s.message())
        }
        FlightError::Tonic(s) => s.message().to_string(),
        FlightError::ExternalError(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// Appends `batches` to the existing table `table` in one write; returns
/// the number of rows the server stored.
pub async fn ingest(
    client: &mut FlightSqlServiceClient<Channel>,
    table: &str,
    batches: Vec<RecordBatch>,
) -> Result<u64, String> {
    let command = CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: TableNotExistOption::Fail as i32,
            if_exists: TableExistsOption::Append as i32,
        }),
        table: table.to_string(),
        ..Default::default()
    };
    let stream = futures::stream::iter(batches.into_iter().map(Ok));
    let rows = client
        .execute_ingest(command, stream)
        .await
        .map_err(flight_error_text)?;
    Ok(rows.max(0) as u64)
}

/// Creates the 8 TPC-H tables (`partitions` hash partitions each, nation
/// and region one) and loads scale factor `sf` into them. `progress` is
/// called with the table and the rows stored so far. Fails if a table exists.
pub async fn load_tpch(
    client: &mut FlightSqlServiceClient<Channel>,
    sf: f64,
    partitions: u32,
    mut progress: impl FnMut(TpchTable, u64),
) -> Result<(), String> {
    for table in TpchTable::ALL {
        client
            .execute(table.ddl(partitions), None)
            .await
            .map_err(|e| {
                format!(
                    "cannot create {}: {}; to load again, DROP the TPC-H tables first",
                    table.name(),
                    flight_error_text(e)
                )
            })?;
    }
    for table in TpchTable::ALL {
        let mut done = 0;
        let mut chunk: Vec<RecordBatch> = vec![];
        let mut chunk_rows = 0;
        for batch in table.generate(sf) {
            let batch = batch.map_err(|e| format!("generating {}: {e}", table.name()))?;
            chunk_rows += batch.num_rows();
            chunk.push(batch);
            if chunk_rows >= CHUNK_ROWS {
                done += ingest(client, table.name(), std::mem::take(&mut chunk)).await?;
                chunk_rows = 0;
                progress(table, done);
            }
        }
        if !chunk.is_empty() {
            done += ingest(client, table.name(), chunk).await?;
        }
        progress(table, done);
    }
    Ok(())
}
