//! Flight SQL's metadata: GetSqlInfo (what JDBC's `DatabaseMetaData` and
//! ADBC's `get_info` read), GetXdbcTypeInfo, and the empty key listings
//! (Tessera has no primary or foreign keys).

use std::sync::Arc;

use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlOuterJoinsSupportLevel,
    SqlSupportedCaseSensitivity, SqlSupportedSubqueries, SqlSupportedTransaction,
    SqlSupportedUnions, SupportedSqlGrammar, XdbcDataType, XdbcDatetimeSubcode,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use futures::TryStreamExt;
use prost::Message;
use tonic::{Response, Status};

use crate::engine::{Coordinator, FunctionNames};
use crate::flight_common::{hydrated, status};

/// What DoGet answers with.
pub type DoGetStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

/// A bitmask with the bits of `values` set.
fn bits(values: &[i32]) -> i32 {
    values.iter().fold(0, |mask, v| mask | (1 << v))
}

/// What this server is and which SQL it speaks.
pub fn sql_info(functions: &FunctionNames) -> Result<SqlInfoData, FlightError> {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Tessera");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    // The Arrow IPC format version (Schema.fbs MetadataVersion V5).
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.5");
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, true);
    // Unquoted names are folded to lower case; quoted ones kept as written.
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityUnknown as i32,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    // ASC puts NULLs last, DESC first: NULL sorts as the highest value.
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    let keywords: Vec<String> = datafusion::sql::sqlparser::keywords::ALL_KEYWORDS
        .iter()
        .map(|k| k.to_string())
        .collect();
    b.append(SqlInfo::SqlKeywords, keywords);
    b.append(SqlInfo::SqlNumericFunctions, functions.numeric.clone());
    b.append(SqlInfo::SqlStringFunctions, functions.string.clone());
    b.append(SqlInfo::SqlSystemFunctions, functions.system.clone());
    b.append(SqlInfo::SqlDatetimeFunctions, functions.datetime.clone());
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(
        SqlInfo::SqlSupportedGrammar,
        bits(&[
            SupportedSqlGrammar::SqlMinimumGrammar as i32,
            SupportedSqlGrammar::SqlCoreGrammar as i32,
        ]),
    );
    b.append(SqlInfo::SqlSupportsIntegrityEnhancementFacility, false);
    b.append(
        SqlInfo::SqlOuterJoinsSupportLevel,
        SqlOuterJoinsSupportLevel::SqlFullOuterJoins as i32,
    );
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlProcedureTerm, "procedure");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSchemasSupportedActions, 0i32);
    b.append(SqlInfo::SqlCatalogsSupportedActions, 0i32);
    b.append(SqlInfo::SqlSupportedPositionedCommands, 0i32);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(
        SqlInfo::SqlSupportedSubqueries,
        bits(&[
            SqlSupportedSubqueries::SqlSubqueriesInComparisons as i32,
            SqlSupportedSubqueries::SqlSubqueriesInExists as i32,
            SqlSupportedSubqueries::SqlSubqueriesInIns as i32,
            SqlSupportedSubqueries::SqlSubqueriesInQuantifieds as i32,
        ]),
    );
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(
        SqlInfo::SqlSupportedUnions,
        bits(&[
            SqlSupportedUnions::SqlUnion as i32,
            SqlSupportedUnions::SqlUnionAll as i32,
        ]),
    );
    // Names are limited to 255 bytes; 0 is "no limit known".
    for limit in [
        SqlInfo::SqlMaxColumnNameLength,
        SqlInfo::SqlMaxTableNameLength,
        SqlInfo::SqlDbSchemaNameLength,
        SqlInfo::SqlMaxCatalogNameLength,
    ] {
        b.append(limit, 255i64);
    }
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlDefaultTransactionIsolation, 0i64);
    b.append(SqlInfo::SqlDataDefinitionCausesTransactionCommit, false);
    b.append(SqlInfo::SqlDataDefinitionsInTransactionsIgnored, true);
    b.append(SqlInfo::SqlBatchUpdatesSupported, true);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlNamedParametersSupported, false);
    b.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    b.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    b.build()
}

#[allow(clippy::too_many_arguments)]
fn type_info(
    name: &str,
    data_type: XdbcDataType,
    column_size: Option<i32>,
    quote: bool,
    searchable: Searchable,
    radix: Option<i32>,
    scale: Option<(i32, i32)>,
    subcode: Option<XdbcDatetimeSubcode>,
) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.to_string(),
        data_type,
        column_size,
        literal_prefix: quote.then(|| "'".to_string()),
        literal_suffix: quote.then(|| "'".to_string()),
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: matches!(data_type, XdbcDataType::XdbcVarchar),
        searchable,
        unsigned_attribute: radix.map(|_| false),
        fixed_prec_scale: matches!(data_type, XdbcDataType::XdbcDecimal),
        auto_increment: radix.map(|_| false),
        local_type_name: Some(name.to_string()),
        minimum_scale: scale.map(|s| s.0),
        maximum_scale: scale.map(|s| s.1),
        sql_data_type: data_type,
        datetime_subcode: subcode,
        num_prec_radix: radix,
        interval_precision: None,
    }
}

/// The SQL types a table column can have.
pub fn xdbc_types() -> Result<XdbcTypeInfoData, FlightError> {
    use Searchable::{Basic, Full};
    use XdbcDataType as T;
    let mut b = XdbcTypeInfoDataBuilder::new();
    let subcode = |s| Some(s);
    for info in [
        type_info(
            "BOOLEAN",
            T::XdbcBit,
            Some(1),
            false,
            Basic,
            None,
            None,
            None,
        ),
        type_info(
            "TINYINT",
            T::XdbcTinyint,
            Some(3),
            false,
            Basic,
            Some(10),
            None,
            None,
        ),
        type_info(
            "SMALLINT",
            T::XdbcSmallint,
            Some(5),
            false,
            Basic,
            Some(10),
            None,
            None,
        ),
        type_info(
            "INTEGER",
            T::XdbcInteger,
            Some(10),
            false,
            Basic,
            Some(10),
            None,
            None,
        ),
        type_info(
            "BIGINT",
            T::XdbcBigint,
            Some(19),
            false,
            Basic,
            Some(10),
            None,
            None,
        ),
        type_info(
            "REAL",
            T::XdbcReal,
            Some(7),
            false,
            Basic,
            Some(2),
            None,
            None,
        ),
        type_info(
            "DOUBLE",
            T::XdbcDouble,
            Some(15),
            false,
            Basic,
            Some(2),
            None,
            None,
        ),
        type_info(
            "DECIMAL",
            T::XdbcDecimal,
            Some(38),
            false,
            Basic,
            Some(10),
            Some((0, 38)),
            None,
        ),
        type_info(
            "VARCHAR",
            T::XdbcVarchar,
            None,
            true,
            Full,
            None,
            None,
            None,
        ),
        type_info(
            "VARBINARY",
            T::XdbcVarbinary,
            None,
            true,
            Basic,
            None,
            None,
            None,
        ),
        type_info(
            "DATE",
            T::XdbcDate,
            Some(10),
            true,
            Basic,
            None,
            None,
            // ODBC's SQL_CODE_DATE, which the protocol names YEAR.
            subcode(XdbcDatetimeSubcode::XdbcSubcodeYear),
        ),
        type_info(
            "TIME",
            T::XdbcTime,
            Some(18),
            true,
            Basic,
            None,
            None,
            subcode(XdbcDatetimeSubcode::XdbcSubcodeTime),
        ),
        type_info(
            "TIMESTAMP",
            T::XdbcTimestamp,
            Some(29),
            true,
            Basic,
            None,
            None,
            subcode(XdbcDatetimeSubcode::XdbcSubcodeTimestamp),
        ),
    ] {
        b.append(info);
    }
    b.build()
}

/// GetPrimaryKeys' result schema, from the Flight SQL specification.
pub fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// GetImportedKeys', GetExportedKeys' and GetCrossReference's result schema.
pub fn foreign_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

/// A schema as Flight SQL sends it in a prepared statement's description.
pub fn ipc_schema(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

/// A metadata command's FlightInfo: its schema, and a ticket carrying the
/// command back to DoGet.
pub fn command_info(
    command: arrow_flight::sql::Any,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(command.encode_to_vec())))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

pub fn flight_status(e: FlightError) -> Status {
    Status::internal(e.to_string())
}

/// One batch as a DoGet stream.
pub fn batch_stream(
    batch: Result<RecordBatch, FlightError>,
) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(flight_status)?;
    let data = FlightDataEncoderBuilder::new()
        .with_schema(batch.schema())
        .build(futures::stream::iter([Ok(batch)]))
        .map_err(flight_status);
    Ok(Response::new(Box::pin(data)))
}

/// GetCatalogs: every catalog, as a follower's catalog has caught up.
pub async fn catalogs(
    coordinator: &Coordinator,
    query: arrow_flight::sql::CommandGetCatalogs,
) -> Result<Response<DoGetStream>, Status> {
    coordinator.catch_up().await.map_err(status)?;
    let mut builder = query.into_builder();
    let mut last = None;
    for (catalog, _) in coordinator.schema_names() {
        if last.as_ref() != Some(&catalog) {
            builder.append(catalog.clone());
            last = Some(catalog);
        }
    }
    batch_stream(builder.build())
}

/// GetDbSchemas: every schema the command's filters keep.
pub async fn db_schemas(
    coordinator: &Coordinator,
    query: arrow_flight::sql::CommandGetDbSchemas,
) -> Result<Response<DoGetStream>, Status> {
    coordinator.catch_up().await.map_err(status)?;
    let mut builder = query.into_builder();
    for (catalog, schema) in coordinator.schema_names() {
        builder.append(catalog, schema);
    }
    batch_stream(builder.build())
}

/// GetTables: every table the command's filters keep, with its schema if asked.
pub async fn tables(
    coordinator: &Coordinator,
    query: arrow_flight::sql::CommandGetTables,
) -> Result<Response<DoGetStream>, Status> {
    coordinator.catch_up().await.map_err(status)?;
    let mut builder = query.into_builder();
    for t in coordinator.table_entries().await.map_err(status)? {
        builder
            .append(
                &t.catalog,
                &t.schema,
                &t.name,
                t.table_type,
                &hydrated(&t.arrow_schema),
            )
            .map_err(flight_status)?;
    }
    batch_stream(builder.build())
}
