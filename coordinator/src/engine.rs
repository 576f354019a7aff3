//! The coordinator's statement engine: Tessera's own statements (DDL with
//! partitioning, SHOW PARTITIONS, ...) are handled here; everything else is
//! planned by DataFusion against the catalog and distributed by
//! datafusion-distributed.

mod access;
mod ddl;
mod errors;
mod explain;
mod follow;
mod literal_rows;
mod members;
mod metadata;
mod params;
mod planned;
mod progress_action;
mod rebalance;
mod recover;
mod replace;
mod replicas;
mod split;
mod statement_shape;
mod switches;
mod users;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::MemTable;
use datafusion::common::{DataFusionError, Result, plan_err};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, Statement as DfStatement};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use datafusion_distributed::{DistributedExt, SessionStateBuilderExt};
use futures::TryStreamExt;
use tessera_sql::{Statement, parse_statement};
use tessera_worker::TesseraCodec;
use tessera_worker::call_timeout;

use crate::catalog::Catalog;
use crate::colocate::ColocateJoins;
use crate::distribution::{
    MembershipChannels, MembershipResolver, desired_task_count, route_tasks, scale_up,
};
use crate::follow::Follower;
use crate::metastore::Metastore;
use crate::options::{self, TesseraOptions};
use crate::query_log::QueryLog;
use crate::schema::TesseraSchema;
use crate::snapshot::session_at_snapshot;
use crate::system_schema::SystemSchema;

pub use metadata::{FunctionNames, TABLE_TYPES};
pub use params::{ParamRow, param_rows};
pub use planned::{Planned, rows_written};

use planned::empty;

use ddl::show_tessera_option;
use errors::with_hint;
use explain::{strip_explain, strip_explain_analyze};

tokio::task_local! {
    /// The session of the client whose statement runs.
    static SESSION: SessionContext;
}

/// Runs `f` in a client's session: `SET` changes that session alone.
/// `f` is boxed: a statement's planning future is large, and each layer
/// wrapping it by value would copy all of it.
pub fn in_session<F: Future>(session: SessionContext, f: F) -> impl Future<Output = F::Output> {
    SESSION.scope(session, Box::pin(f))
}

/// One coordinator: catalog plus a distributed DataFusion session.
pub struct Coordinator {
    catalog: Arc<Catalog>,
    ctx: SessionContext,
    log: Arc<QueryLog>,
    /// One worker join at a time: the checks of a join (is this id alive
    /// elsewhere?) hold until it is recorded.
    joining: tokio::sync::Mutex<()>,
    /// Where clients may read and write files on this machine (nowhere
    /// until set; shared with the file functions, `read_csv` and the like).
    files: Arc<std::sync::OnceLock<crate::files::FileDirs>>,
    /// Moves of partitions between workers: the switches and the record.
    rebalancer: Arc<crate::rebalance::Rebalancer>,
    /// Merges of small files: the switch, the record, the background task.
    compactor: Arc<crate::compact::Compactor>,
    /// What writes report: to the ASYNC index applier, and counted.
    reports: Arc<crate::write::Reports>,
    /// Applies GLOBAL ASYNC index outboxes (told by writes, through `reports`).
    applier: Arc<crate::index::Applier>,
}

impl Coordinator {
    /// Opens the catalog, finishes interrupted writes and restores external
    /// tables. `members` maps the ids of workers started with the
    /// coordinator to their URLs (others join); a worker not heard from
    /// for `lease` is down.
    pub async fn open(
        metastore: Box<dyn Metastore>,
        members: BTreeMap<String, String>,
        lease: std::time::Duration,
    ) -> Result<Self> {
        let catalog = Catalog::open(metastore, members, lease).await?;
        let coordinator = Self::with_catalog(catalog)?;
        coordinator.recover().await?;
        coordinator.restore_external_tables().await;
        crate::index::spawn_applier(&coordinator.catalog, coordinator.applier());
        crate::compact::spawn_compactor(&coordinator.compactor);
        let rate = Arc::clone(&coordinator.rebalancer.copy_rate);
        crate::catch_up::spawn_catch_up(&coordinator.catalog, rate);
        crate::rebalance::spawn_auto_rebalance(&coordinator.catalog, &coordinator.rebalancer);
        coordinator.resume_backfills();
        Ok(coordinator)
    }

    /// A coordinator that follows the cluster's leader (see
    /// [`crate::follow`]): it serves clients, plans and runs queries, and
    /// passes every statement with effects to the leader; it runs no
    /// background work.
    pub async fn open_follower(
        follower: Arc<Follower>,
        lease: std::time::Duration,
    ) -> Result<Self> {
        let catalog = Catalog::open_follower(follower, lease).await?;
        let coordinator = Self::with_catalog(catalog)?;
        coordinator.restore_external_tables().await;
        Ok(coordinator)
    }

    fn with_catalog(catalog: Arc<Catalog>) -> Result<Self> {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_option_extension(TesseraOptions::default());
        // Each task reads its own partitions; siblings must not steal files.
        config
            .options_mut()
            .execution
            .enable_file_stream_work_stealing = false;
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_distributed_worker_resolver(MembershipResolver {
                catalog: Arc::clone(&catalog),
            })
            .with_distributed_channel_resolver(MembershipChannels::new(Arc::clone(&catalog)))
            .with_distributed_planner()
            .with_distributed_user_codec(TesseraCodec::default())
            .with_distributed_desired_task_count_handler(desired_task_count)
            .with_distributed_scale_up_leaf_node_handler(scale_up)
            .with_distributed_route_tasks_handler(route_tasks)
            .with_physical_optimizer_rule(Arc::new(ColocateJoins::new(Arc::clone(&catalog))))
            .with_physical_optimizer_rule(Arc::new(crate::yield_points::YieldPoints))
            .build();
        let ctx = SessionContext::new_with_state(state);
        {
            let state_ref = ctx.state_ref();
            let mut state = state_ref.write();
            options::apply(&mut state);
            tessera_worker::register_checked(&mut state)?;
            state.add_analyzer_rule(Arc::new(crate::ansi::AnsiArithmetic));
        }
        let files: Arc<std::sync::OnceLock<crate::files::FileDirs>> = Arc::default();
        for kind in crate::file_functions::FileKind::ALL {
            let function = crate::file_functions::ReadFileFunction::new(kind, Arc::clone(&files));
            ctx.register_udtf(kind.function(), Arc::new(function));
        }
        let default_catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| DataFusionError::Internal("no default catalog".into()))?;
        let applier: Arc<crate::index::Applier> = Arc::default();
        let reports = Arc::new(crate::write::Reports::new(applier.clone()));
        let public = TesseraSchema::new(
            Arc::clone(&catalog),
            Arc::clone(&reports),
            Arc::clone(&applier),
        );
        default_catalog.register_schema("public", Arc::new(public))?;
        let log = Arc::new(QueryLog::default());
        let compactor = crate::compact::Compactor::new(Arc::clone(&catalog));
        default_catalog.register_schema(
            "tessera",
            Arc::new(SystemSchema::new(Arc::clone(&log), Arc::clone(&compactor))),
        )?;
        Ok(Self {
            catalog,
            ctx,
            log,
            joining: tokio::sync::Mutex::new(()),
            files,
            rebalancer: Arc::default(),
            compactor,
            applier,
            reports,
        })
    }

    /// Finishes backfills a stop interrupted, in the background.
    fn resume_backfills(&self) {
        let Ok(state) = self.catalog.state() else {
            return;
        };
        for def in state.indexes.values().filter(|d| !d.is_ready()) {
            let catalog = Arc::clone(&self.catalog);
            let name = def.name.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::index::backfill(catalog, name.clone()).await {
                    tracing::warn!(index = %name, error = %e, "index backfill failed; it resumes at the next start");
                }
            });
        }
    }

    /// Whether `SET tessera.compaction = 'paused'` holds.
    pub fn compaction_paused(&self) -> bool {
        self.compactor.paused()
    }

    /// The background compaction's record (`tessera.compactions`).
    pub fn compactions(&self) -> &crate::compaction_log::CompactionLog {
        &self.compactor.log
    }

    /// Pauses or resumes applying ASYNC index outboxes (maintenance, and
    /// tests of what a crash before the apply leaves).
    pub fn pause_index_apply(&self, paused: bool) {
        self.applier().set_paused(paused);
    }

    /// The ASYNC index applier (writes tell it of outbox entries).
    pub fn applier(&self) -> &Arc<crate::index::Applier> {
        &self.applier
    }

    /// Where writes report what they did.
    pub fn write_reports(&self) -> &Arc<crate::write::Reports> {
        &self.reports
    }

    /// INSERT statements acknowledged since the start, and their fan-out.
    pub fn write_fanout(&self) -> crate::write::WriteFanout {
        self.reports.counters.fanout()
    }

    /// Stops background work (the ASYNC applier); called when the cluster stops.
    pub fn close(&self) {
        self.catalog.stop();
        self.applier().wake();
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The session of the client whose statement runs now (see
    /// [`in_session`]), or the coordinator's own.
    /// Tessera's options in the session of the statement running now.
    pub(crate) fn options(&self) -> TesseraOptions {
        self.ctx()
            .state()
            .config_options()
            .extensions
            .get::<TesseraOptions>()
            .cloned()
            .unwrap_or_default()
    }

    fn ctx(&self) -> SessionContext {
        SESSION
            .try_with(SessionContext::clone)
            .unwrap_or_else(|_| self.ctx.clone())
    }

    /// A new client session: the coordinator's settings as they are at
    /// the start, its catalog shared.
    pub fn new_session(&self) -> SessionContext {
        SessionContext::new_with_state(self.ctx.state())
    }

    /// The log of queries run (`tessera.queries`).
    pub fn query_log(&self) -> &Arc<QueryLog> {
        &self.log
    }

    /// Plans (and, for statements with effects, runs) one SQL statement; it
    /// enters the query log when its rows have been sent.
    pub async fn plan(&self, sql: &str) -> Result<Planned> {
        self.plan_with(sql, &[]).await
    }

    /// As [`Self::plan`], with parameter values: one row binds them, more
    /// run the statement for each row (an INSERT as one statement).
    pub async fn plan_with(&self, sql: &str, rows: &[ParamRow]) -> Result<Planned> {
        let recorder = self.log.begin(sql);
        // Counted only for a client that will ask (it tagged the statement).
        let planned = if crate::query_log::current_caller().tag.is_some() {
            crate::progress::counting(recorder.progress(), self.plan_statement(sql, rows)).await
        } else {
            self.plan_statement(sql, rows).await
        };
        match planned {
            Ok(Planned::Plan(plan, ctx, _, catalog)) => {
                Ok(Planned::Plan(plan, ctx, Some(Box::new(recorder)), catalog))
            }
            Ok(Planned::Ready(schema, batches)) => {
                let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
                recorder.finish(Ok(rows));
                Ok(Planned::Ready(schema, batches))
            }
            Err(e) => {
                recorder.finish(Err(&e));
                Err(e)
            }
        }
    }

    async fn plan_statement(&self, sql: &str, rows: &[ParamRow]) -> Result<Planned> {
        let statement = parse_statement(sql)?;
        match self.catalog.follower() {
            Some(follower) => {
                let follower = Arc::clone(follower);
                self.plan_following(&follower, sql, statement, rows).await
            }
            None => {
                // Taken before any table is looked up: a query finds the
                // tables its snapshot sees (a table replaced or dropped
                // keeps its files until the snapshots taken before are
                // gone, see `Catalog::snapshots_before`).
                let taken = crate::snapshot::take(&self.catalog).await?;
                crate::snapshot::with_snapshot(taken, self.plan_parsed(statement, rows)).await
            }
        }
    }

    async fn plan_parsed(&self, statement: Statement, rows: &[ParamRow]) -> Result<Planned> {
        if !rows.is_empty() && !matches!(statement, Statement::Sql(_)) {
            return plan_err!(
                "this statement takes no parameters; only queries, INSERT, UPDATE and DELETE do"
            );
        }
        match statement {
            // Boxed: CREATE TABLE ... AS SELECT plans an INSERT in turn.
            Statement::CreateTable(ct) if crate::catalog::is_staging(&ct.name) => plan_err!(
                "table names starting with '{}' are reserved; choose another name",
                crate::catalog::STAGING_PREFIX
            ),
            Statement::CreateTable(ct) => Box::pin(self.create_table(ct)).await,
            Statement::DropTable { name, if_exists } => self.drop_table(&name, if_exists).await,
            Statement::ShowTables => self.show_tables(),
            Statement::ShowPartitions { table } => self.show_partitions(&table).await,
            Statement::Describe { table } => self.describe(&table),
            Statement::CreateIndex(ci) => {
                crate::index::create_index(&self.catalog, ci).await?;
                Ok(empty())
            }
            Statement::DropIndex { name, if_exists } => {
                crate::index::drop_index(&self.catalog, &name, if_exists).await?;
                Ok(empty())
            }
            Statement::ShowIndexes { table } => {
                let batch = crate::index::show_indexes(&self.catalog, table.as_deref())?;
                Ok(Planned::Ready(batch.schema(), vec![batch]))
            }
            Statement::Compact { table } => {
                // What was acknowledged before it is merged too: statements
                // acknowledged at their decision finish their commits first
                // (a worker that does not confirm one leaves its files for
                // the next compaction).
                self.catalog.settle_decided(call_timeout()).await?;
                let done = self
                    .compactor
                    .compact_table(
                        &table,
                        crate::compact::EXPLICIT,
                        crate::compaction_log::EXPLICIT_TRIGGER,
                    )
                    .await?;
                let batch = crate::compact::report(&done)?;
                Ok(Planned::Ready(batch.schema(), vec![batch]))
            }
            Statement::ShowWorkers => self.show_workers(),
            Statement::SetReplicas { table, replicas } => self.set_replicas(&table, replicas).await,
            Statement::SplitPartition {
                table,
                partition,
                at,
            } => {
                let how = crate::reshape::Reshape::Split { partition, at };
                self.reshape_partitions(&table, how).await
            }
            Statement::SetRebalance { table, strategy } => {
                self.set_rebalance(&table, strategy).await
            }
            Statement::MergePartitions { table, a, b } => {
                self.reshape_partitions(&table, crate::reshape::Reshape::Merge { a, b })
                    .await
            }
            Statement::CreateUser {
                name,
                password,
                role,
            } => self.create_user(&name, &password, role).await,
            Statement::AlterUser { name, password } => self.alter_user(&name, &password).await,
            Statement::DropUser { name, if_exists } => self.drop_user(&name, if_exists).await,
            Statement::Grant { role, user } => self.grant(role, &user).await,
            Statement::ShowUsers => self.show_users(),
            Statement::CopyFrom {
                table,
                path,
                options,
            } => Box::pin(self.copy_from(&table, &path, &options)).await,
            Statement::CancelQuery { id } => {
                self.log.cancel(&id, &crate::query_log::current_caller())?;
                Ok(empty())
            }
            Statement::AlterWorker { id, action } => self.alter_worker(&id, action).await,
            Statement::ExplainRebalance { table } => self.explain_rebalance(table.as_deref()),
            Statement::RebalanceApply { table } => self.rebalance_apply(table.as_deref()),
            Statement::ShowRebalance => self.show_rebalance(),
            Statement::RebalanceCancel => self.rebalance_cancel(),
            Statement::Sql(sql) if rows.len() > 1 => self.plan_many(&sql, rows).await,
            Statement::Sql(sql) => self.plan_datafusion(&sql, rows.first()).await,
        }
    }

    /// Loads rows into an existing table through the normal write path
    /// (`INSERT INTO t SELECT * FROM <rows>`), so they are cast, routed and
    /// committed atomically like any INSERT.
    pub async fn load(
        &self,
        table: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<u64> {
        let staging = format!("__load_{}", uuid::Uuid::new_v4().simple());
        let mem = Arc::new(MemTable::try_new(schema, vec![batches])?);
        self.catalog().set_external(&staging, Some(mem))?;
        let result = self
            .run(&format!(
                "INSERT INTO \"{table}\" SELECT * FROM \"{staging}\""
            ))
            .await;
        self.catalog().set_external(&staging, None)?;
        Ok(rows_written(&result?))
    }

    /// Runs one statement to completion and returns its rows.
    pub async fn run(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        self.plan(sql).await?.execute()?.try_collect().await
    }

    async fn plan_datafusion(&self, sql: &str, params: Option<&ParamRow>) -> Result<Planned> {
        let trimmed = sql.trim_start();
        if let Some(inner) = strip_explain(trimmed) {
            return self.explain(inner).await;
        }
        if let Some(inner) = strip_explain_analyze(trimmed) {
            return self.explain_analyze(inner).await;
        }
        if let Some(name) = show_tessera_option(trimmed) {
            return self.show_options(&name);
        }
        let state = self.ctx().state();
        let plan = state
            .create_logical_plan(sql)
            .await
            .map_err(|e| with_hint(e, &state, sql))?;
        let plan = match params {
            Some(values) => params::bind(plan, values)?,
            None => plan,
        };
        self.plan_logical(sql, plan).await
    }

    /// Lets clients read files under `dirs.import_dirs()` and write under
    /// `dirs.export_dirs()` (once; before that, nowhere).
    pub fn set_file_dirs(&self, dirs: crate::files::FileDirs) {
        let _ = self.files.set(dirs);
    }

    /// Where clients may read and write files (nowhere until set).
    fn file_dirs(&self) -> &crate::files::FileDirs {
        self.files.get().unwrap_or(&crate::files::NO_FILES)
    }

    /// Refuses a plan that touches files clients may not (see
    /// [`crate::files`]).
    fn check_files(&self, plan: &LogicalPlan) -> Result<()> {
        self.file_dirs().check_plan(plan, |name| {
            self.catalog.is_external_table(name).unwrap_or(false)
        })
    }

    /// Runs or plans a statement DataFusion planned (`sql` is its text).
    async fn plan_logical(&self, sql: &str, plan: LogicalPlan) -> Result<Planned> {
        self.check_files(&plan)?;
        match &plan {
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(ext)) => {
                let name = ext.name.table().to_string();
                let location = ext.locations.join(", ");
                self.ctx().execute_logical_plan(plan).await.map_err(|e| {
                    DataFusionError::Plan(format!(
                        "cannot create external table '{name}' from '{location}': {e}; check that \
                         LOCATION names readable files of the STORED AS format"
                    ))
                })?;
                self.catalog
                    .update(|s| {
                        s.external_tables.insert(name.clone(), sql.to_string());
                        Ok(())
                    })
                    .await?;
                Ok(empty())
            }
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(_)) => {
                plan_err!("CREATE TABLE is handled by Tessera; this form is not supported")
            }
            LogicalPlan::Dml(dml) => {
                let schema = Arc::new(plan.schema().as_arrow().clone());
                let input = Arc::clone(&dml.input);
                let named = |e| literal_rows::name_null_column(e, &input);
                if literal_rows::is_literal_rows(&input) {
                    let state = session_at_snapshot(self.ctx().state(), &self.catalog).await?;
                    let (physical, task) = literal_rows::plan_unoptimized(state, &plan)
                        .await
                        .map_err(named)?;
                    if literal_rows::reads_one_stream(&physical) {
                        let batches = datafusion::physical_plan::collect(physical, task).await?;
                        return Ok(Planned::Ready(schema, batches));
                    }
                }
                let state = session_at_snapshot(self.ctx().state(), &self.catalog).await?;
                let batches = DataFrame::new(state, plan).collect().await.map_err(named)?;
                Ok(Planned::Ready(schema, batches))
            }
            LogicalPlan::Ddl(_) | LogicalPlan::Statement(_) => {
                let is_statement = matches!(plan, LogicalPlan::Statement(_));
                let variable = match &plan {
                    LogicalPlan::Statement(DfStatement::SetVariable(v)) => Some(v.variable.clone()),
                    LogicalPlan::Statement(DfStatement::ResetVariable(v)) => {
                        Some(v.variable.clone())
                    }
                    _ => None,
                };
                let df = self.ctx().execute_logical_plan(plan).await?;
                let schema = Arc::new(df.schema().as_arrow().clone());
                let batches = df.collect().await?;
                if is_statement {
                    // SET tessera.* may have changed what DataFusion must do.
                    options::apply(&mut self.ctx().state_ref().write());
                    if let Some(variable) = variable {
                        self.follow_switch(&variable)?;
                    }
                }
                Ok(Planned::Ready(schema, batches))
            }
            _ => {
                let state = session_at_snapshot(self.ctx().state(), &self.catalog).await?;
                let df = DataFrame::new(state, plan);
                let task_ctx = df.task_ctx();
                let physical = df.create_physical_plan().await?;
                let catalog = Arc::clone(&self.catalog);
                Ok(Planned::Plan(physical, Arc::new(task_ctx), None, catalog))
            }
        }
    }

    /// A query planned at a snapshot taken now.
    async fn query(&self, sql: &str) -> Result<DataFrame> {
        let state = session_at_snapshot(self.ctx().state(), &self.catalog).await?;
        let plan = state
            .create_logical_plan(sql)
            .await
            .map_err(|e| with_hint(e, &state, sql))?;
        self.check_files(&plan)?;
        Ok(DataFrame::new(state, plan))
    }
}
