//! ANSI arithmetic, on by default (`SET tessera.ansi = false` relaxes it
//! per session):
//!
//! | case                          | `tessera.ansi = true` (default) | `false`            |
//! |-------------------------------|---------------------------------|--------------------|
//! | integer `+ - *` overflow      | error                           | wraps around       |
//! | invalid cast (`'x'::INT`)     | error                           | NULL               |
//! | integer division by zero      | error                           | NULL               |
//! | integer `SUM` overflow        | error                           | wraps around       |
//!
//! An analyzer rule (after type coercion, so types are known) turns integer
//! `+`, `-` and `*` into checked functions (`tessera_worker::checked_udf`);
//! with ANSI off it turns casts into `TRY_CAST` and divisors into
//! `NULLIF(divisor, 0)`. `SUM` over integers (widened to `BIGINT` by
//! coercion) becomes `tessera_checked_sum`, checked in every partial and
//! final aggregate (`SUM(DISTINCT ...)` too), and in window sums (sliding
//! frames retract with checks as well). Floating-point division by zero follows IEEE 754
//! (infinity or NaN) either way, as in DataFusion.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, Cast, ScalarFunction, TryCast};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator, WindowFunctionDefinition, lit,
};
use datafusion::optimizer::AnalyzerRule;

use crate::options::TesseraOptions;

#[derive(Debug, Default)]
pub struct AnsiArithmetic;

impl AnalyzerRule for AnsiArithmetic {
    fn name(&self) -> &str {
        "tessera_ansi_arithmetic"
    }

    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> Result<LogicalPlan> {
        let ansi = config
            .extensions
            .get::<TesseraOptions>()
            .is_none_or(|o| o.ansi);
        plan.transform_up_with_subqueries(|plan| {
            let mut schema = merge_schema(&plan.inputs());
            if let LogicalPlan::TableScan(ts) = &plan {
                schema.merge(&DFSchema::try_from_qualified_schema(
                    ts.table_name.clone(),
                    &ts.source.schema(),
                )?);
            }
            // Rewritten expressions keep the names users see.
            let names = NamePreserver::new(&plan);
            plan.map_expressions(|e| {
                let name = names.save(&e);
                Ok(e.transform_up(|e| rewrite(e, ansi, &schema))?
                    .update_data(|e| name.restore(e)))
            })
        })
        .map(|t| t.data)
    }
}

/// Whether `name(args)` is DataFusion's `sum` over integers (widened to
/// 64 bits by coercion): what the checked sum stands in for.
fn integer_sum(name: &str, args: &[Expr], schema: &DFSchema) -> bool {
    name == "sum"
        && matches!(
            args.first().map(|a| a.get_type(schema)),
            Some(Ok(DataType::Int64 | DataType::UInt64))
        )
}

fn rewrite(e: Expr, ansi: bool, schema: &DFSchema) -> Result<Transformed<Expr>> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let integers = || {
                let l = left.get_type(schema).ok()?;
                let r = right.get_type(schema).ok()?;
                (l == r && l.is_integer()).then_some(l)
            };
            if ansi && let Some(udf) = tessera_worker::checked_udf(op) {
                if integers().is_some() {
                    // `(a + b) + c`: one call with every operand of the chain
                    // (children are rewritten first), so the plan stays flat.
                    let args = match *left {
                        Expr::ScalarFunction(f) if f.func.name() == udf.name() => {
                            let mut args = f.args;
                            args.push(*right);
                            args
                        }
                        other => vec![other, *right],
                    };
                    return Ok(Transformed::yes(Expr::ScalarFunction(
                        ScalarFunction::new_udf(udf, args),
                    )));
                }
            } else if !ansi
                && matches!(op, Operator::Divide | Operator::Modulo)
                && let Some(t) = integers()
                && let Ok(zero) = ScalarValue::new_zero(&t)
            {
                let divisor = datafusion::functions::core::expr_fn::nullif(*right, lit(zero));
                return Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                    left,
                    op,
                    Box::new(divisor),
                ))));
            }
            Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr {
                left,
                op,
                right,
            })))
        }
        Expr::AggregateFunction(AggregateFunction { func, params })
            if ansi && integer_sum(func.name(), &params.args, schema) =>
        {
            Ok(Transformed::yes(Expr::AggregateFunction(
                AggregateFunction {
                    func: tessera_worker::checked_sum_udaf(),
                    params,
                },
            )))
        }
        Expr::WindowFunction(w)
            if ansi
                && !w.params.distinct
                && matches!(&w.fun, WindowFunctionDefinition::AggregateUDF(f)
                    if integer_sum(f.name(), &w.params.args, schema)) =>
        {
            let mut w = w;
            w.fun = WindowFunctionDefinition::AggregateUDF(tessera_worker::checked_sum_udaf());
            Ok(Transformed::yes(Expr::WindowFunction(w)))
        }
        Expr::Cast(Cast { expr, field }) if !ansi => {
            Ok(Transformed::yes(Expr::TryCast(TryCast { expr, field })))
        }
        other => Ok(Transformed::no(other)),
    }
}
