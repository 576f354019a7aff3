//! Replacing a table's rows at once: a staging table is filled (by a bulk
//! ingest), then put in the table's place in one metastore write.

use datafusion::common::{Result, exec_err, plan_err};
use tessera_sql::{IndexDef, Statement, parse_statement};
use tessera_worker::ErrorKind;

use super::Coordinator;
use super::ddl::{held_by, remove_files_later};

/// How long a replace waits for queries that began before its rows were
/// written.
const REPLACE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Coordinator {
    /// Creates the staging table a replacing ingest fills (`sql` is its
    /// CREATE TABLE, its name under [`crate::catalog::STAGING_PREFIX`]).
    pub async fn create_staging_table(&self, sql: &str) -> Result<()> {
        match parse_statement(sql)? {
            Statement::CreateTable(ct) if crate::catalog::is_staging(&ct.name) => {
                Box::pin(self.create_table(ct)).await?;
                Ok(())
            }
            _ => plan_err!("not a staging table's CREATE TABLE: {sql}"),
        }
    }

    /// Puts the table `staged` in the place of `name`, in one metastore
    /// write: `name`'s rows and indexes go (unless `replace` is false: then
    /// a table of that name made meanwhile is an error), `staged`'s rows
    /// are `name`'s from then on (a snapshot sees either the old table or
    /// the new one). The old files are removed afterwards.
    pub async fn replace_table(&self, name: &str, staged: &str, replace: bool) -> Result<()> {
        // Every query running once this returns took its snapshot after
        // the staged rows were decided: whichever table a query finds under
        // the name, its snapshot sees that table's rows.
        let generation = self.catalog.new_generation();
        let waited =
            tokio::time::timeout(REPLACE_WAIT, self.catalog.snapshots_before(generation)).await;
        if waited.is_err() {
            return Err(ErrorKind::Unavailable.error(format!(
                "replacing '{name}' waited {} s for queries that began before the new rows were \
                 written; nothing was changed. Find them with SELECT * FROM tessera.queries \
                 WHERE status = 'running', end them (CANCEL QUERY 'id'), and ingest again",
                REPLACE_WAIT.as_secs()
            )));
        }
        // What goes is read in the catalog write that removes it.
        let replaced = self
            .catalog
            .update(|s| {
                if !replace && (s.tables.contains_key(name) || s.external_tables.contains_key(name))
                {
                    return tessera_worker::already_exists_err!(
                        "table '{name}' was created by another statement while the rows were \
                         uploaded; nothing was written: ingest again with mode 'append'"
                    );
                }
                // Counted while the staged table is still its key's owner
                // (pending counts of the upload included).
                let stats = s.remove_stats(staged).unwrap_or_default();
                let Some(mut def) = s.tables.remove(staged) else {
                    return exec_err!(
                        "the rows uploaded to replace '{name}' are gone (was the upload's \
                         table dropped?); nothing changed: upload again"
                    );
                };
                let old = s.tables.remove(name);
                let old_indexes: Vec<IndexDef> = s
                    .indexes
                    .values()
                    .filter(|i| i.table == name)
                    .cloned()
                    .collect();
                let holders = held_by(s.map.table(name).unwrap_or_default());
                s.remove_stats(name);
                s.map.drop_table(name);
                for index in &old_indexes {
                    s.indexes.remove(&index.name);
                    s.index_stats.remove(&index.name);
                    s.remove_stats(&index.map_key());
                    s.map.drop_table(&index.map_key());
                }
                // The files stay where they are: under the staged table's key.
                def.storage = Some(def.storage_key());
                def.name = name.to_string();
                s.tables.insert(name.to_string(), def);
                s.stats.insert(name.to_string(), stats);
                s.map.rename_table(staged, name);
                Ok(old.map(|old| (old, old_indexes, holders)))
            })
            .await?;
        if let Some((old, old_indexes, holders)) = replaced {
            remove_files_later(&self.catalog, &old, old_indexes, holders);
        }
        Ok(())
    }
}
