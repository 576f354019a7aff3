//! Integer arithmetic that fails on overflow (ANSI SQL), where DataFusion's
//! `+`, `-` and `*` wrap around. The coordinator rewrites integer
//! arithmetic into these functions when `tessera.ansi` is on; every process
//! registers them, so plans carrying them decode anywhere.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::compute::kernels::numeric;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, plan_err};
use datafusion::execution::SessionState;
use datafusion::execution::registry::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, Expr, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::physical_expr_common::datum::apply;

/// `a + b + ...`, `a - b - ...` or `a * b * ...` (left to right) on
/// integers of one type, an error on overflow. A chain of one operator is
/// one call with every operand: plans stay as shallow as DataFusion's own
/// (it encodes chains of binary operators flat too), within the nesting
/// that plan decoding on the workers allows.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CheckedArithmetic {
    op: Operator,
    name: &'static str,
    signature: Signature,
}

impl CheckedArithmetic {
    fn new(op: Operator, name: &'static str) -> Self {
        Self {
            op,
            name,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

/// The checked function standing for `op`, if it has one. Made once: the
/// analyzer asks for every binary operator of every statement.
pub fn checked_udf(op: Operator) -> Option<Arc<ScalarUDF>> {
    static UDFS: OnceLock<[Arc<ScalarUDF>; 3]> = OnceLock::new();
    let [add, subtract, multiply] = UDFS.get_or_init(|| {
        let udf = |op, name| Arc::new(ScalarUDF::from(CheckedArithmetic::new(op, name)));
        [
            udf(Operator::Plus, "tessera_checked_add"),
            udf(Operator::Minus, "tessera_checked_subtract"),
            udf(Operator::Multiply, "tessera_checked_multiply"),
        ]
    });
    match op {
        Operator::Plus => Some(Arc::clone(add)),
        Operator::Minus => Some(Arc::clone(subtract)),
        Operator::Multiply => Some(Arc::clone(multiply)),
        _ => None,
    }
}

/// Makes the checked functions (operators and `SUM`) known to a session,
/// to plan and to decode.
pub fn register_checked(state: &mut SessionState) -> Result<()> {
    for op in [Operator::Plus, Operator::Minus, Operator::Multiply] {
        if let Some(udf) = checked_udf(op) {
            state.register_udf(udf)?;
        }
    }
    state.register_udaf(crate::checked_sum::checked_sum_udaf())?;
    Ok(())
}

impl ScalarUDFImpl for CheckedArithmetic {
    fn name(&self) -> &str {
        self.name
    }

    /// Named like the operators it replaces, so result columns keep the
    /// names users wrote (`a + b + 1`).
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        if args.len() < 2 {
            return plan_err!("{} takes two or more arguments", self.name);
        }
        let names: Vec<String> = args.iter().map(|a| a.schema_name().to_string()).collect();
        Ok(names.join(&format!(" {} ", self.op)))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [first, rest @ ..]
                if !rest.is_empty() && first.is_integer() && rest.iter().all(|t| t == first) =>
            {
                Ok(first.clone())
            }
            _ => plan_err!(
                "{} takes two or more integers of one type, got {arg_types:?}",
                self.name
            ),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [first, rest @ ..] = args.args.as_slice() else {
            return plan_err!("{} takes two or more arguments", self.name);
        };
        let mut acc = first.clone();
        for r in rest {
            acc = match self.op {
                Operator::Plus => apply(&acc, r, numeric::add)?,
                Operator::Minus => apply(&acc, r, numeric::sub)?,
                _ => apply(&acc, r, numeric::mul)?,
            };
        }
        Ok(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn overflow_is_an_error_in_range_is_exact() {
        let ctx = SessionContext::new();
        register_checked(&mut ctx.state_ref().write()).unwrap();
        let ok = ctx
            .sql(
                "SELECT tessera_checked_add(CAST(40 AS BIGINT), CAST(1 AS BIGINT), CAST(1 AS BIGINT)) AS v",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let v = ok[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(v, 42);
        let e = ctx
            .sql("SELECT tessera_checked_multiply(v, v) FROM (VALUES (CAST(4294967296 AS BIGINT))) AS t(v)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("Overflow"), "{e}");
    }
}
