//! The `tessera` schema of system tables: `tessera.queries` (the query
//! log, as the caller may see it) and `tessera.compactions`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{MemTable, SchemaProvider, Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::query_log::{QueryLog, current_caller, queries_batch, queries_schema};

/// The `tessera` schema: system tables.
#[derive(Debug)]
pub struct SystemSchema {
    log: Arc<QueryLog>,
    compactor: Arc<crate::compact::Compactor>,
}

impl SystemSchema {
    pub fn new(log: Arc<QueryLog>, compactor: Arc<crate::compact::Compactor>) -> Self {
        Self { log, compactor }
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        vec!["queries".into(), "compactions".into()]
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(match name {
            "queries" => {
                let log = Arc::clone(&self.log);
                Some(Arc::new(SystemTable {
                    schema: queries_schema(),
                    // As the caller planning the query may see it.
                    rows: Box::new(move || queries_batch(&log.visible(&current_caller()))),
                }))
            }
            "compactions" => {
                let compactor = Arc::clone(&self.compactor);
                Some(Arc::new(SystemTable {
                    schema: crate::compaction_log::compactions_schema(),
                    rows: Box::new(move || {
                        crate::compaction_log::compactions_batch(&compactor.log.snapshot())
                    }),
                }))
            }
            _ => None,
        })
    }

    fn table_exist(&self, name: &str) -> bool {
        name == "queries" || name == "compactions"
    }
}

/// A table of the `tessera` schema: a snapshot of `rows` when the query
/// is planned.
struct SystemTable {
    schema: SchemaRef,
    rows: Box<dyn Fn() -> Result<RecordBatch> + Send + Sync>,
}

impl std::fmt::Debug for SystemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemTable")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mem = MemTable::try_new(self.schema(), vec![vec![(self.rows)()?]])?;
        mem.scan(state, projection, filters, limit).await
    }
}
