//! What clients' metadata calls list (Flight SQL GetCatalogs, GetDbSchemas,
//! GetTables, GetSqlInfo): the catalogs, schemas, tables and functions
//! DataFusion's catalog holds here.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::SchemaProvider;
use datafusion::catalog::information_schema::InformationSchemaProvider;
use datafusion::common::Result;
use datafusion::datasource::TableType;

use super::Coordinator;

const INFORMATION_SCHEMA: &str = "information_schema";

/// Schemas whose tables are the system's own.
const SYSTEM_SCHEMAS: [&str; 2] = [INFORMATION_SCHEMA, "tessera"];

/// The table types GetTables reports.
pub const TABLE_TYPES: [&str; 3] = ["TABLE", "VIEW", "SYSTEM TABLE"];

/// One table as GetTables lists it.
#[derive(Debug, Clone)]
pub struct TableEntry {
    pub catalog: String,
    pub schema: String,
    pub name: String,
    pub table_type: &'static str,
    pub arrow_schema: SchemaRef,
}

/// Functions by the kind JDBC's `DatabaseMetaData` asks for.
#[derive(Debug, Clone, Default)]
pub struct FunctionNames {
    pub numeric: Vec<String>,
    pub string: Vec<String>,
    pub datetime: Vec<String>,
    pub system: Vec<String>,
}

impl Coordinator {
    /// Brings a follower's catalog up to the leader's (a no-op on the
    /// leader), so that metadata calls list what a query would see.
    pub async fn catch_up(&self) -> Result<()> {
        if self.catalog.follower().is_some() {
            self.catalog.current_snapshot().await?;
            self.sync_external_tables().await;
        }
        Ok(())
    }

    /// Every (catalog, schema), in order.
    pub fn schema_names(&self) -> Vec<(String, String)> {
        let mut out = vec![];
        let mut catalogs = self.ctx().catalog_names();
        catalogs.sort();
        for catalog in catalogs {
            let Some(c) = self.ctx().catalog(&catalog) else {
                continue;
            };
            let mut schemas = c.schema_names();
            if !schemas.iter().any(|s| s == INFORMATION_SCHEMA) {
                schemas.push(INFORMATION_SCHEMA.to_string());
            }
            schemas.sort();
            out.extend(schemas.into_iter().map(|s| (catalog.clone(), s)));
        }
        out
    }

    /// Every table, view and system table, in order.
    pub async fn table_entries(&self) -> Result<Vec<TableEntry>> {
        let mut out = vec![];
        for (catalog, schema) in self.schema_names() {
            let found = if schema == INFORMATION_SCHEMA {
                // Made up by the session for each catalog, not held in it.
                let list = Arc::clone(self.ctx().state().catalog_list());
                Some(Arc::new(InformationSchemaProvider::new(list)) as Arc<dyn SchemaProvider>)
            } else {
                self.ctx().catalog(&catalog).and_then(|c| c.schema(&schema))
            };
            let Some(s) = found else {
                continue;
            };
            let mut names = s.table_names();
            names.sort();
            for name in names {
                // Rows of a bulk load in flight, not a table of anyone's.
                if name.starts_with("__load_") {
                    continue;
                }
                let Some(table) = s.table(&name).await? else {
                    continue;
                };
                let table_type = if SYSTEM_SCHEMAS.contains(&schema.as_str()) {
                    "SYSTEM TABLE"
                } else {
                    match table.table_type() {
                        TableType::View => "VIEW",
                        TableType::Base | TableType::Temporary => "TABLE",
                    }
                };
                out.push(TableEntry {
                    catalog: catalog.clone(),
                    schema: schema.clone(),
                    name,
                    table_type,
                    arrow_schema: table.schema(),
                });
            }
        }
        Ok(out)
    }

    /// The scalar functions, by the section of DataFusion's documentation
    /// they are in.
    pub fn function_names(&self) -> FunctionNames {
        let mut out = FunctionNames::default();
        let state = self.ctx().state();
        for (name, udf) in state.scalar_functions() {
            // Tessera's own (checked arithmetic) stand in for operators.
            if name.starts_with("tessera_") {
                continue;
            }
            let section = udf.documentation().map(|d| d.doc_section.label);
            let list = match section {
                Some("Math Functions") => &mut out.numeric,
                Some(
                    "String Functions" | "Binary String Functions" | "Regular Expression Functions",
                ) => &mut out.string,
                Some("Time and Date Functions") => &mut out.datetime,
                _ => &mut out.system,
            };
            list.push(name.to_uppercase());
        }
        for list in [
            &mut out.numeric,
            &mut out.string,
            &mut out.datetime,
            &mut out.system,
        ] {
            list.sort();
            list.dedup();
        }
        out
    }
}
