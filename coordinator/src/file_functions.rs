//! `read_csv('path')`, `read_parquet('path')` and `read_json('path')`: a
//! file on the coordinator's disk (or a directory or glob of them) as a
//! table in a query, as DuckDB's functions of those names: `SELECT * FROM
//! read_csv('/imports/x.csv')`, or `INSERT INTO t SELECT ... FROM
//! read_parquet(...)`. Like `CREATE EXTERNAL TABLE`, the path must be under
//! an `--import-dir`, and only admins may read files (a reader's statement
//! naming one is refused). The scan runs on the coordinator, which holds
//! the file; CSV files have a header row and `,` between fields.

use std::any::Any;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Result, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use tessera_worker::ErrorKind;

use crate::files::{FileDirs, NO_FILES};

/// The file formats the functions read.
#[derive(Debug, Clone, Copy)]
pub enum FileKind {
    Csv,
    Parquet,
    Json,
}

impl FileKind {
    pub const ALL: [FileKind; 3] = [FileKind::Csv, FileKind::Parquet, FileKind::Json];

    pub fn function(self) -> &'static str {
        match self {
            FileKind::Csv => "read_csv",
            FileKind::Parquet => "read_parquet",
            FileKind::Json => "read_json",
        }
    }

    fn format(self) -> Arc<dyn FileFormat> {
        match self {
            FileKind::Csv => Arc::new(CsvFormat::default().with_has_header(true)),
            FileKind::Parquet => Arc::new(ParquetFormat::default()),
            FileKind::Json => Arc::new(JsonFormat::default()),
        }
    }
}

/// One of the functions: its format, and where clients may read files
/// (set once the server knows; nowhere until then).
#[derive(Debug)]
pub struct ReadFileFunction {
    kind: FileKind,
    dirs: Arc<OnceLock<FileDirs>>,
}

impl ReadFileFunction {
    pub fn new(kind: FileKind, dirs: Arc<OnceLock<FileDirs>>) -> Self {
        Self { kind, dirs }
    }
}

impl TableFunctionImpl for ReadFileFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let function = self.kind.function();
        let path = match args.exprs() {
            [Expr::Literal(ScalarValue::Utf8(Some(p)), _)]
            | [Expr::Literal(ScalarValue::Utf8View(Some(p)), _)]
            | [Expr::Literal(ScalarValue::LargeUtf8(Some(p)), _)] => p.clone(),
            _ => {
                return Err(ErrorKind::InvalidArgument.error(format!(
                    "{function} takes one argument, the file's path as a string: \
                     SELECT * FROM {function}('/data/file')"
                )));
            }
        };
        self.dirs.get().unwrap_or(&NO_FILES).check_import(&path)?;
        let url = ListingTableUrl::parse(&path)?;
        let options = ListingOptions::new(self.kind.format()).with_file_extension("");
        let schema = infer_schema(&options, &url)
            .map_err(|e| ErrorKind::InvalidArgument.error(format!("{function}('{path}'): {e}")))?;
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(schema);
        Ok(Arc::new(ReadFile {
            function,
            inner: ListingTable::try_new(config)?,
        }))
    }
}

/// The schema of the files at `url`, read from them. Table functions are
/// called while a statement is planned, which cannot wait on the runtime
/// it runs on: the reading runs on a thread of its own.
fn infer_schema(options: &ListingOptions, url: &ListingTableUrl) -> Result<SchemaRef> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let state = SessionContext::new().state();
            runtime.block_on(options.infer_schema(&state, url))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(datafusion::common::DataFusionError::Internal(
                "reading the file's schema panicked".into(),
            ))
        })
    })
}

/// The table a file function returns: the files as a listing table, and a
/// type of its own, so the access check can tell that a statement reads
/// files (see [`reads_files`]).
#[derive(Debug)]
pub struct ReadFile {
    function: &'static str,
    inner: ListingTable,
}

impl ReadFile {
    pub fn function(&self) -> &'static str {
        self.function
    }
}

#[async_trait]
impl TableProvider for ReadFile {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    fn get_table_definition(&self) -> Option<&str> {
        None
    }

    fn get_logical_plan(&self) -> Option<Cow<'_, datafusion::logical_expr::LogicalPlan>> {
        None
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
}

/// The file function a plan reads through, if any.
pub fn reads_files(plan: &datafusion::logical_expr::LogicalPlan) -> Option<&'static str> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::LogicalPlan;
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = datafusion::datasource::source_as_provider(&scan.source)
            && let Some(file) = (provider.as_ref() as &dyn Any).downcast_ref::<ReadFile>()
        {
            found = Some(file.function());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}
