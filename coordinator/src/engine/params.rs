//! Statements with parameters (`$1`, `$2`...; `?` are numbered by the
//! Flight SQL server): their parameter schema, binding one row of values,
//! and many rows of an INSERT run as one statement.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{LogicalPlan, Values, WriteOp};
use tessera_sql::{Statement, parse_statement};

use super::errors::with_hint;
use super::{Coordinator, Planned};

/// One row of parameter values, `$1` first.
pub type ParamRow = Vec<ScalarValue>;

/// The rows of a batch of parameter values (one column per parameter).
pub fn param_rows(batch: &RecordBatch) -> Result<Vec<ParamRow>> {
    (0..batch.num_rows())
        .map(|row| {
            batch
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, row))
                .collect()
        })
        .collect()
}

/// The parameters of `plan`, `$1` first, with the types it expects (Null
/// where it does not say).
fn parameter_types(plan: &LogicalPlan) -> Result<Vec<(String, DataType)>> {
    let mut params: Vec<(usize, String, DataType)> = plan
        .get_parameter_types()?
        .into_iter()
        .map(|(name, t)| {
            let n = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(usize::MAX);
            (n, name, t.unwrap_or(DataType::Null))
        })
        .collect();
    params.sort();
    Ok(params.into_iter().map(|(_, name, t)| (name, t)).collect())
}

/// `plan` with `values` in place of its parameters, each cast to the type
/// the statement expects (a client's BIGINT for an INT column, a string
/// for a timestamp...).
pub(super) fn bind(plan: LogicalPlan, values: &ParamRow) -> Result<LogicalPlan> {
    let expected = parameter_types(&plan)?;
    if expected.len() != values.len() {
        return plan_err!(
            "the statement takes {} parameter(s) and {} value(s) were given",
            expected.len(),
            values.len()
        );
    }
    let cast = values
        .iter()
        .zip(&expected)
        .map(|(v, (name, t))| {
            if t.is_null() || &v.data_type() == t {
                Ok(v.clone())
            } else {
                v.cast_to(t).map_err(|e| {
                    datafusion::common::DataFusionError::Plan(format!(
                        "parameter {name} is {} and cannot be used as {t}: {e}",
                        v.data_type()
                    ))
                })
            }
        })
        .collect::<Result<Vec<_>>>()?;
    plan.with_param_values(cast)
}

/// The rows of the VALUES an INSERT's plan reads, if that is all it reads.
fn insert_values(plan: &LogicalPlan) -> Option<&Values> {
    let LogicalPlan::Dml(dml) = plan else {
        return None;
    };
    if !matches!(dml.op, WriteOp::Insert(InsertOp::Append)) {
        return None;
    }
    let mut node = dml.input.as_ref();
    loop {
        match node {
            LogicalPlan::Projection(p) => node = p.input.as_ref(),
            LogicalPlan::Values(v) => return Some(v),
            _ => return None,
        }
    }
}

/// One INSERT of every row of `bound` (the same INSERT ... VALUES with
/// different parameter values), if each is such an INSERT.
fn merge_inserts(bound: &[LogicalPlan]) -> Result<Option<LogicalPlan>> {
    let mut rows = vec![];
    for plan in bound {
        match insert_values(plan) {
            Some(v) => rows.extend(v.values.iter().cloned()),
            None => return Ok(None),
        }
    }
    let Some(first) = bound.first() else {
        return Ok(None);
    };
    let mut rows = Some(rows);
    let merged = first.clone().transform_down(|node| match node {
        LogicalPlan::Values(v) => Ok(Transformed::yes(LogicalPlan::Values(Values {
            schema: v.schema,
            values: rows.take().unwrap_or_default(),
        }))),
        other => Ok(Transformed::no(other)),
    })?;
    Ok(Some(merged.data))
}

fn count_batch(count: u64) -> Result<(SchemaRef, RecordBatch)> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(UInt64Array::from(vec![count]))],
    )?;
    Ok((schema, batch))
}

impl Coordinator {
    /// The parameters a statement takes, as a schema (`$1`, `$2`...).
    pub async fn parameter_schema(&self, sql: &str) -> Result<SchemaRef> {
        let Statement::Sql(sql) = parse_statement(sql)? else {
            return Ok(Arc::new(Schema::empty()));
        };
        // Statements DataFusion does not plan itself (SHOW tessera.*,
        // EXPLAIN ANALYZE ...) take none; any other error shows when the
        // statement runs.
        let Ok(plan) = self.ctx().state().create_logical_plan(&sql).await else {
            return Ok(Arc::new(Schema::empty()));
        };
        let fields: Vec<Field> = parameter_types(&plan)?
            .into_iter()
            .map(|(name, t)| Field::new(name, t, true))
            .collect();
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Runs a statement once per row of parameters: an INSERT ... VALUES
    /// as one statement (all rows or none), anything else row by row.
    pub(super) async fn plan_many(&self, sql: &str, rows: &[ParamRow]) -> Result<Planned> {
        let state = self.ctx().state();
        let plan = state
            .create_logical_plan(sql)
            .await
            .map_err(|e| with_hint(e, &state, sql))?;
        let bound = rows
            .iter()
            .map(|row| bind(plan.clone(), row))
            .collect::<Result<Vec<_>>>()?;
        if let Some(merged) = merge_inserts(&bound)? {
            return self.plan_logical(sql, merged).await;
        }
        if !matches!(plan, LogicalPlan::Dml(_)) {
            return plan_err!(
                "a query takes one row of parameters, and {} were given; run it once per row",
                rows.len()
            );
        }
        let mut count = 0;
        for plan in bound {
            let planned = self.plan_logical(sql, plan).await?;
            if let Planned::Ready(_, batches) = planned {
                count += super::rows_written(&batches);
            }
        }
        let (schema, batch) = count_batch(count)?;
        Ok(Planned::Ready(schema, vec![batch]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    #[test]
    fn a_batch_is_rows_of_values() {
        let batch = RecordBatch::try_from_iter([
            ("a", Arc::new(Int64Array::from(vec![Some(1), None])) as _),
            ("b", Arc::new(StringArray::from(vec!["x", "y"])) as _),
        ])
        .unwrap();
        let rows = param_rows(&batch).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0], ScalarValue::Int64(Some(1)));
        assert_eq!(rows[1][0], ScalarValue::Int64(None));
        assert_eq!(rows[1][1], ScalarValue::Utf8(Some("y".into())));
    }
}
