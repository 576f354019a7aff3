//! `TesseraTable`: the `TableProvider` of a partitioned table. It prunes
//! partitions with the partition map, plans a `PartitionScanExec` over the
//! kept ones, and routes inserts through the write path.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, Result, not_impl_err};
use datafusion::datasource::TableType;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use tessera_sql::{Placements, TableDef, prune_partitions};
use tessera_worker::{PartitionScanExec, ScanSpec};

use crate::catalog::Catalog;
use crate::index::Applier;
use crate::write::group::Groups;
use crate::write::{Reports, WriteSink};

#[derive(Debug)]
pub struct TesseraTable {
    catalog: Arc<Catalog>,
    /// Told what writes did.
    reports: Arc<Reports>,
    /// The ASYNC applier (asked by `fresh` reads).
    applier: Arc<Applier>,
    def: TableDef,
    schema: SchemaRef,
    /// Where small INSERTs share transactions (`None`: each writes alone).
    groups: Option<Arc<Groups>>,
}

impl TesseraTable {
    pub fn try_new(
        catalog: Arc<Catalog>,
        reports: Arc<Reports>,
        applier: Arc<Applier>,
        def: TableDef,
    ) -> Result<Self> {
        let schema = def.schema()?;
        Ok(Self {
            catalog,
            reports,
            applier,
            def,
            schema,
            groups: None,
        })
    }

    /// Small INSERTs into this table share transactions through `groups`.
    pub(crate) fn grouped(mut self, groups: Arc<Groups>) -> Self {
        self.groups = Some(groups);
        self
    }
}

#[async_trait]
impl TableProvider for TesseraTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters prune partitions and row groups, and filter rows in the
        // Parquet reader; DataFusion still re-checks them above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let placements =
            crate::query_map::placements(state.config_options(), &self.catalog, &self.def.name)?;
        let layout = placements.layout(&self.def.scheme)?;
        let mut kept = prune_partitions(&self.def.scheme, layout.as_ref(), &self.schema, filters);
        let snapshot = crate::snapshot::snapshot_of(state, &self.catalog).await?;
        let index = crate::index::plan_index_read(
            (&self.catalog, &self.applier),
            state,
            &snapshot,
            &self.def,
            &self.schema,
            filters,
            &kept,
        )
        .await?;
        let index = index.map(|(read, data)| {
            kept = data;
            read
        });
        let parts = self
            .catalog
            .scan_parts_at(&self.def.name, &placements, &kept)?;
        let df_schema = DFSchema::try_from(Arc::clone(&self.schema))?;
        let predicate = conjunction(filters.to_vec())
            .map(|e| state.create_physical_expr(e, &df_schema))
            .transpose()?;
        let estimate = self.catalog.size_estimate(&self.def.name, &kept)?;
        let progress = state.config().get_extension::<crate::progress::Progress>();
        if let (Some(progress), Some(estimate)) = (&progress, estimate) {
            progress.expect(estimate.rows);
        }
        let spec = ScanSpec {
            table: self.def.name.clone(),
            location: self.def.storage_key(),
            table_schema: Arc::clone(&self.schema),
            projection: projection.cloned(),
            predicate,
            limit,
            total_partitions: placements.len() as u32,
            kept_partitions: parts.len() as u32,
            estimate,
            colocated_on: None,
            index,
            snapshot: Some(snapshot),
            query: progress.map(|p| Arc::from(p.query_id.as_str())),
        };
        let outputs = parts.len();
        Ok(Arc::new(PartitionScanExec::try_new(spec, parts, outputs)?))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return not_impl_err!(
                "{insert_op} is not supported on Tessera tables yet; use INSERT INTO"
            );
        }
        let mut sink = WriteSink::new(
            Arc::clone(&self.catalog),
            Arc::clone(&self.reports),
            self.def.clone(),
            self.schema(),
        );
        if let Some(groups) = &self.groups {
            sink = sink.grouped(Arc::clone(groups));
        }
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}
