//! The catalog as DataFusion's default schema: Tessera's tables (each a
//! [`TesseraTable`] over the partition map) and the external tables.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::Result;

use crate::catalog::Catalog;
use crate::index::Applier;
use crate::table::TesseraTable;
use crate::write::Reports;
use crate::write::group::Groups;

/// The catalog as DataFusion's default schema.
#[derive(Debug)]
pub struct TesseraSchema {
    catalog: Arc<Catalog>,
    /// Small INSERTs waiting to share a transaction, per table.
    groups: Arc<Groups>,
    /// Told what writes did.
    reports: Arc<Reports>,
    /// The ASYNC applier (asked by `fresh` reads).
    applier: Arc<Applier>,
}

impl TesseraSchema {
    pub fn new(catalog: Arc<Catalog>, reports: Arc<Reports>, applier: Arc<Applier>) -> Self {
        Self {
            catalog,
            groups: Arc::default(),
            reports,
            applier,
        }
    }
}

#[async_trait]
impl SchemaProvider for TesseraSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .catalog
            .state()
            .map(|s| {
                s.tables
                    .keys()
                    .filter(|name| !crate::catalog::is_staging(name))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        names.extend(self.catalog.external_names().unwrap_or_default());
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(def) = self.catalog.table_def(name)? {
            let table = TesseraTable::try_new(
                Arc::clone(&self.catalog),
                Arc::clone(&self.reports),
                Arc::clone(&self.applier),
                def,
            )?;
            return Ok(Some(Arc::new(table.grouped(Arc::clone(&self.groups)))));
        }
        self.catalog.external(name)
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        if self.table_exist(&name) {
            return tessera_worker::already_exists_err!(
                "table '{name}' already exists; DROP TABLE {name} first"
            );
        }
        self.catalog.set_external(&name, Some(table))?;
        Ok(None)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let old = self.catalog.external(name)?;
        self.catalog.set_external(name, None)?;
        Ok(old)
    }

    fn table_exist(&self, name: &str) -> bool {
        matches!(self.catalog.table_def(name), Ok(Some(_)))
            || matches!(self.catalog.external(name), Ok(Some(_)))
    }
}
