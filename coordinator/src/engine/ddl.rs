//! Tessera's own DDL and SHOW statements: CREATE/DROP TABLE, SHOW TABLES,
//! DESCRIBE, SHOW PARTITIONS and `SHOW tessera[.name]`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use tessera_sql::{CreateTable, IndexDef, PartitionPlacement, PartitionScheme, TableDef};
use tessera_worker::{ErrorKind, WorkerClient};

use crate::catalog::Catalog;
use crate::membership::WorkerState;
use crate::options::TesseraOptions;

use super::{Coordinator, Planned, empty};

impl Coordinator {
    /// `SHOW tessera` (all of Tessera's options) or `SHOW tessera.<name>`:
    /// DataFusion's SHOW does not list extension options.
    pub(super) fn show_options(&self, name: &str) -> Result<Planned> {
        use datafusion::common::config::ExtensionOptions;
        let state = self.ctx().state();
        let options = state
            .config_options()
            .extensions
            .get::<TesseraOptions>()
            .cloned()
            .unwrap_or_default();
        let mut names = vec![];
        let mut values = vec![];
        let mut descriptions = vec![];
        for e in options.entries() {
            let key = if e.key.starts_with("tessera.") {
                e.key.clone()
            } else {
                format!("tessera.{}", e.key)
            };
            if name != "tessera" && !key.eq_ignore_ascii_case(name) {
                continue;
            }
            // The switches of background work hold for the coordinator,
            // whichever session set them last.
            let value = key
                .strip_prefix("tessera.")
                .and_then(|n| self.switch_value(n));
            names.push(key);
            values.push(value.or(e.value).unwrap_or_default());
            descriptions.push(e.description.trim().to_string());
        }
        if names.is_empty() {
            return plan_err!("'{name}' is not an option; SHOW tessera lists Tessera's options");
        }
        ready(vec![
            ("name", Arc::new(StringArray::from(names)) as ArrayRef),
            ("value", Arc::new(StringArray::from(values))),
            ("description", Arc::new(StringArray::from(descriptions))),
        ])
    }

    pub(super) async fn create_table(&self, ct: CreateTable) -> Result<Planned> {
        if self.catalog.table_def(&ct.name)?.is_some() || self.catalog.external(&ct.name)?.is_some()
        {
            if ct.if_not_exists {
                return Ok(empty());
            }
            return tessera_worker::already_exists_err!(
                "table '{}' already exists; DROP TABLE {} first",
                ct.name,
                ct.name
            );
        }
        let plan = self.ctx().state().create_logical_plan(&ct.base_sql).await?;
        let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(cmt)) = plan else {
            return plan_err!("could not plan CREATE TABLE {}", ct.name);
        };
        let schema = cmt.input.schema().as_arrow().clone();
        let scheme = match &ct.partitioning {
            Some(spec) => spec.resolve(&schema)?,
            None => PartitionScheme::Single,
        };
        let workers = self.live_workers()?;
        if workers.is_empty() {
            return Err(ErrorKind::Unavailable
                .error("no workers are running; start the cluster with --workers N"));
        }
        let name = ct.name.clone();
        // Checked again where the table is added: of two CREATE TABLE of
        // one name at once, one wins and the other is told it exists.
        let created = self
            .catalog
            .update(|s| {
                if s.tables.contains_key(&name) {
                    return Ok(false);
                }
                if s.map.tables.contains_key(&name) {
                    return plan_err!(
                        "'{name}' names the partitions of a GLOBAL index (table.index); choose \
                         another table name"
                    );
                }
                let mut def = TableDef::try_new(&name, s.tables_created, &schema, scheme.clone())?;
                def.replication = ct.replication.unwrap_or_default();
                def.rebalance = ct.rebalance.unwrap_or_default();
                def.rebalance.check(&name, &def.scheme)?;
                // Tables with the same partition count are placed alike, so
                // partition i of each lives on the same worker and joins on
                // their keys are co-located; one-partition tables are spread.
                let offset = if def.scheme.partition_count() > 1 {
                    0
                } else {
                    s.tables_created as usize
                };
                s.map.place_table(
                    &name,
                    def.scheme.partition_count(),
                    def.replication.replicas,
                    &workers,
                    offset,
                )?;
                s.tables.insert(name.clone(), def);
                s.stats.insert(name.clone(), BTreeMap::new());
                s.tables_created += 1;
                Ok(true)
            })
            .await?;
        if !created {
            if ct.if_not_exists {
                return Ok(empty());
            }
            return tessera_worker::already_exists_err!(
                "table '{name}' already exists; DROP TABLE {name} first"
            );
        }
        if let Some(query) = ct.query {
            let insert = format!("INSERT INTO {} {query}", quote_ident(&ct.name));
            if let Err(e) = self.run(&insert).await {
                let _ = self.drop_table(&ct.name, true).await;
                return Err(e);
            }
        }
        Ok(empty())
    }

    /// `COPY t FROM 'path' (...)`: the file's rows (under an import
    /// directory) into `t`, as one INSERT.
    pub(super) async fn copy_from(
        &self,
        table: &str,
        path: &str,
        options: &[(String, String)],
    ) -> Result<Planned> {
        if self.catalog.table_def(table)?.is_none() {
            return Err(crate::catalog::no_such_table(table));
        }
        self.file_dirs().check_import(path)?;
        let (mut format, mut header, mut delimiter) = (None, true, None);
        for (name, value) in options {
            match name.as_str() {
                "FORMAT" => format = Some(value.to_ascii_lowercase()),
                "HEADER" => {
                    header = match value.to_ascii_lowercase().as_str() {
                        "true" | "on" | "1" => true,
                        "false" | "off" | "0" => false,
                        other => {
                            return Err(ErrorKind::InvalidArgument.error(format!(
                                "COPY FROM HEADER takes true or false, not {other}"
                            )));
                        }
                    }
                }
                "DELIMITER" => {
                    if value.len() != 1 {
                        return Err(ErrorKind::InvalidArgument.error(format!(
                            "COPY FROM DELIMITER is one character, not '{value}'"
                        )));
                    }
                    delimiter = Some(value.clone());
                }
                other => {
                    return Err(ErrorKind::InvalidArgument.error(format!(
                        "COPY FROM knows the options FORMAT, HEADER and DELIMITER, not {other}"
                    )));
                }
            }
        }
        let format = format.or_else(|| {
            let lower = path.to_ascii_lowercase();
            [
                ("csv", ".csv"),
                ("parquet", ".parquet"),
                ("json", ".json"),
                ("json", ".jsonl"),
            ]
            .iter()
            .find(|(_, ext)| lower.ends_with(ext))
            .map(|(f, _)| f.to_string())
        });
        let stored = match format.as_deref() {
            Some("csv") => "CSV",
            Some("parquet") => "PARQUET",
            Some("json") => "JSON",
            Some(other) => {
                return Err(ErrorKind::InvalidArgument.error(format!(
                    "COPY FROM reads FORMAT csv, parquet or json, not {other}"
                )));
            }
            None => {
                return Err(ErrorKind::InvalidArgument.error(format!(
                    "cannot tell the format of '{path}' from its name; add (FORMAT csv), \
                     (FORMAT parquet) or (FORMAT json)"
                )));
            }
        };
        let mut file_options = vec![];
        if stored == "CSV" {
            file_options.push(format!("'format.has_header' '{header}'"));
            if let Some(d) = delimiter {
                file_options.push(format!("'format.delimiter' '{}'", d.replace('\'', "''")));
            }
        }
        let source = format!("__copy_{}", uuid::Uuid::new_v4().simple());
        let create = format!(
            "CREATE EXTERNAL TABLE \"{source}\" STORED AS {stored} LOCATION '{}' {}",
            path.replace('\'', "''"),
            if file_options.is_empty() {
                String::new()
            } else {
                format!("OPTIONS ({})", file_options.join(", "))
            }
        );
        // The file, as a table of this coordinator for the one statement.
        self.ctx()
            .sql(&create)
            .await?
            .collect()
            .await
            .map_err(|e| {
                ErrorKind::InvalidArgument.error(format!(
                    "cannot read '{path}' as {stored}: {e}; check the path and FORMAT"
                ))
            })?;
        let inserted = self
            .run(&format!(
                "INSERT INTO \"{}\" SELECT * FROM \"{source}\"",
                table.replace('"', "\"\"")
            ))
            .await;
        self.catalog.set_external(&source, None)?;
        let batches = inserted?;
        let schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        Ok(Planned::Ready(schema, batches))
    }

    pub(super) async fn drop_table(&self, name: &str, if_exists: bool) -> Result<Planned> {
        if self.catalog.external(name)?.is_some() {
            self.catalog.set_external(name, None)?;
            self.catalog
                .update(|s| {
                    s.external_tables.remove(name);
                    Ok(())
                })
                .await?;
            return Ok(empty());
        }
        let Some(def) = self.catalog.table_def(name)? else {
            if if_exists {
                return Ok(empty());
            }
            return Err(crate::catalog::no_such_table(name));
        };
        for index in self.catalog.indexes_of(name)? {
            crate::index::drop_index(&self.catalog, &index.name, true).await?;
        }
        let holders = held_by(&self.catalog.placements(name)?);
        self.catalog
            .update(|s| {
                s.tables.remove(name);
                s.remove_stats(name);
                s.map.drop_table(name);
                Ok(())
            })
            .await?;
        remove_files_later(&self.catalog, &def, vec![], holders);
        Ok(empty())
    }

    /// The workers that have joined and are not down, by id.
    pub(super) fn live_workers(&self) -> Result<Vec<String>> {
        let mut live = vec![];
        for id in self.catalog.members()?.keys() {
            if self.catalog.membership().state(id)? != WorkerState::Down {
                live.push(id.clone());
            }
        }
        Ok(live)
    }

    pub(super) fn show_tables(&self) -> Result<Planned> {
        let state = self.catalog.state()?;
        let mut names = vec![];
        let mut schemes = vec![];
        let mut counts = vec![];
        let mut strategies = vec![];
        for (name, def) in &state.tables {
            if crate::catalog::is_staging(name) {
                continue;
            }
            names.push(name.clone());
            schemes.push(def.scheme.display_with(def.schema()?.as_ref()));
            counts.push(
                state
                    .map
                    .table(name)
                    .map_or(def.scheme.partition_count(), |p| p.len() as u32),
            );
            strategies.push(Some(def.rebalance.to_string()));
        }
        for name in self.catalog.external_names()? {
            names.push(name);
            schemes.push("EXTERNAL".to_string());
            counts.push(0);
            strategies.push(None);
        }
        ready_with_nulls(
            vec![
                ("table_name", Arc::new(StringArray::from(names)) as ArrayRef),
                ("partitioning", Arc::new(StringArray::from(schemes))),
                ("partitions", Arc::new(UInt32Array::from(counts))),
                ("rebalance", Arc::new(StringArray::from(strategies))),
            ],
            &["rebalance"],
        )
    }

    pub(super) fn describe(&self, table: &str) -> Result<Planned> {
        let Some(def) = self.catalog.table_def(table)? else {
            if let Some(ext) = self.catalog.external(table)? {
                let schema = ext.schema();
                let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
                let types: Vec<String> = schema
                    .fields()
                    .iter()
                    .map(|f| f.data_type().to_string())
                    .collect();
                let nulls: Vec<&str> = schema
                    .fields()
                    .iter()
                    .map(|f| if f.is_nullable() { "YES" } else { "NO" })
                    .collect();
                let keys = vec![""; names.len()];
                return ready(vec![
                    (
                        "column_name",
                        Arc::new(StringArray::from(names)) as ArrayRef,
                    ),
                    ("data_type", Arc::new(StringArray::from(types))),
                    ("is_nullable", Arc::new(StringArray::from(nulls))),
                    ("partitioning", Arc::new(StringArray::from(keys))),
                ]);
            }
            return Err(crate::catalog::no_such_table(table));
        };
        let keys = def.scheme.key_columns();
        let mut names = vec![];
        let mut types = vec![];
        let mut nulls = vec![];
        let mut roles = vec![];
        for c in &def.columns {
            names.push(c.name.clone());
            types.push(c.data_type.clone());
            // NULL keys are refused on write, whatever the declaration says.
            let nullable = c.nullable && !keys.contains(&c.name.as_str());
            nulls.push(if nullable { "YES" } else { "NO" }.to_string());
            let role = match &def.scheme {
                PartitionScheme::Hash { .. } if keys.contains(&c.name.as_str()) => "hash key",
                PartitionScheme::Range { .. } if keys.contains(&c.name.as_str()) => "range key",
                _ if def.scheme.cluster_by().contains(&c.name) => "cluster key",
                _ => "",
            };
            roles.push(role.to_string());
        }
        // Spark-style trailer row: the whole scheme in one line.
        names.push("# partitioning".into());
        types.push(def.scheme.display_with(def.schema()?.as_ref()));
        nulls.push(String::new());
        let partitions = self.catalog.placements(&def.name).map_or(0, |p| p.len());
        roles.push(format!("{partitions} partitions"));
        ready(vec![
            (
                "column_name",
                Arc::new(StringArray::from(names)) as ArrayRef,
            ),
            ("data_type", Arc::new(StringArray::from(types))),
            ("is_nullable", Arc::new(StringArray::from(nulls))),
            ("partitioning", Arc::new(StringArray::from(roles))),
        ])
    }

    /// `SHOW PARTITIONS t`: the partitions of table `t`, or of the GLOBAL
    /// index named `t`.
    pub(super) async fn show_partitions(&self, name: &str) -> Result<Planned> {
        let state = self.catalog.state()?;
        let (table, location, scheme, schema) = match state.tables.get(name) {
            Some(def) => (
                name.to_string(),
                def.storage_key(),
                def.scheme.clone(),
                def.schema()?,
            ),
            None => {
                let global = state.indexes.get(name).filter(|i| i.kind.is_global());
                let Some((index, def)) =
                    global.and_then(|i| Some((i, state.tables.get(&i.table)?)))
                else {
                    return Err(crate::catalog::no_such_table(name));
                };
                (
                    index.map_key(),
                    index.storage_key(def),
                    index.scheme(),
                    index.entry_schema(def.schema()?.as_ref())?,
                )
            }
        };
        let table = table.as_str();
        let placements = self.catalog.placements(table)?;
        let members = self.catalog.members()?;
        // Sizes from the copy a read would use; none when every in-sync
        // copy is down.
        let mut by_worker: BTreeMap<(String, String), Vec<u32>> = BTreeMap::new();
        for part in self.catalog.read_copies(table)?.into_iter().flatten() {
            by_worker
                .entry((part.worker_id, part.url))
                .or_default()
                .push(part.partition);
        }
        // Read at a snapshot, as a query: a write acknowledged before is
        // counted even where its commit has not landed yet.
        let (snapshot, _hold, _) = self.catalog.take_snapshot().await?;
        let decided = snapshot.decided.as_slice();
        let mut stats: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for ((worker, url), parts) in by_worker {
            let asked = async {
                WorkerClient::connect(&url)?
                    .stats(&location, parts, decided)
                    .await
            };
            match asked.await {
                Ok(sizes) => {
                    for s in sizes {
                        stats.insert(s.partition, (s.rows, s.bytes));
                    }
                }
                // Its partitions' sizes stay empty: the states say why.
                Err(e) => tracing::info!(%worker, error = %e, "no partition sizes from a worker"),
            }
        }
        let state_of = |p: &PartitionPlacement, w: &str| -> Result<&'static str> {
            let up =
                members.contains_key(w) && self.catalog.membership().state(w)? != WorkerState::Down;
            Ok(match (up, p.is_in_sync(w)) {
                (false, _) => "down",
                (true, true) => "in_sync",
                (true, false) => "catching_up",
            })
        };
        let ids: Vec<u32> = placements.iter().map(|p| p.id).collect();
        let ranges: Vec<String> = placements
            .iter()
            .map(|p| scheme.describe_partition(p.id, p.range.as_ref(), &schema))
            .collect();
        let workers: Vec<String> = placements.iter().map(|p| p.leader().to_string()).collect();
        let replicas: Vec<String> = placements.iter().map(|p| p.replicas.join(", ")).collect();
        let in_sync: Vec<String> = placements
            .iter()
            .map(|p| p.in_sync().collect::<Vec<_>>().join(", "))
            .collect();
        let states: Vec<String> = placements
            .iter()
            .map(|p| {
                let states = p
                    .replicas
                    .iter()
                    .map(|w| Ok(format!("{w} {}", state_of(p, w)?)))
                    .collect::<Result<Vec<_>>>()?;
                Ok(states.join(", "))
            })
            .collect::<Result<_>>()?;
        let rows: Vec<Option<u64>> = ids.iter().map(|i| stats.get(i).map(|s| s.0)).collect();
        let bytes: Vec<Option<u64>> = ids.iter().map(|i| stats.get(i).map(|s| s.1)).collect();
        ready_with_nulls(
            vec![
                ("partition", Arc::new(UInt32Array::from(ids)) as ArrayRef),
                ("range", Arc::new(StringArray::from(ranges))),
                ("worker", Arc::new(StringArray::from(workers))),
                ("replicas", Arc::new(StringArray::from(replicas))),
                ("in_sync", Arc::new(StringArray::from(in_sync))),
                ("states", Arc::new(StringArray::from(states))),
                ("rows", Arc::new(UInt64Array::from(rows))),
                ("bytes", Arc::new(UInt64Array::from(bytes))),
            ],
            &["rows", "bytes"],
        )
    }
}

/// The option a `SHOW tessera[.name]` statement asks for.
/// The workers holding a copy of some partition of a table.
pub(super) fn held_by(placements: &[PartitionPlacement]) -> BTreeSet<String> {
    placements
        .iter()
        .flat_map(|p| p.replicas.iter().cloned())
        .collect()
}

/// Removes the files of `table` and of its `indexes`, no longer in the
/// catalog, from the workers that held them (a worker that cannot be
/// reached keeps them), once every query that may have planned a read of
/// them has ended.
pub(super) fn remove_files_later(
    catalog: &Arc<Catalog>,
    table: &TableDef,
    indexes: Vec<IndexDef>,
    holders: BTreeSet<String>,
) {
    let generation = catalog.new_generation();
    let (catalog, table) = (Arc::clone(catalog), table.clone());
    tokio::spawn(async move {
        catalog.snapshots_before(generation).await;
        crate::failpoint::hit("abort-before-file-removal");
        crate::index::remove_index_files(&catalog, &indexes, &table).await;
        let Ok(members) = catalog.members() else {
            return;
        };
        let location = table.storage_key();
        for worker in holders {
            let Some(url) = members.get(&worker) else {
                continue;
            };
            let dropped = match WorkerClient::connect(url) {
                Ok(client) => client.drop_table(&location).await,
                Err(e) => Err(e),
            };
            if let Err(e) = dropped {
                tracing::warn!(table = %table.name, %worker, error = %e, "files of a dropped table were left behind");
            }
        }
    });
}

pub(super) fn show_tessera_option(sql: &str) -> Option<String> {
    let sql = sql.trim().trim_end_matches(';').trim();
    let mut words = sql.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("show") {
        return None;
    }
    let name = words.next()?;
    if words.next().is_some() {
        return None;
    }
    let lower = name.to_ascii_lowercase();
    (lower == "tessera" || lower.starts_with("tessera.")).then_some(lower)
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(super) fn ready(columns: Vec<(&str, ArrayRef)>) -> Result<Planned> {
    ready_with_nulls(columns, &[])
}

/// Rows computed here; the columns named in `nullable` may hold NULLs.
pub(super) fn ready_with_nulls(
    columns: Vec<(&str, ArrayRef)>,
    nullable: &[&str],
) -> Result<Planned> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), nullable.contains(n)))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        columns.into_iter().map(|(_, a)| a).collect(),
    )?;
    Ok(Planned::Ready(schema, vec![batch]))
}
