//! `SUM` and `SUM(DISTINCT)` over integers, window sums included, that
//! fail on overflow (ANSI SQL), where DataFusion's wrap around. The coordinator's ANSI rule puts it in place of `sum` over
//! `BIGINT` and `BIGINT UNSIGNED` (smaller integers are widened to those
//! first); every process registers it, so partial and final aggregates run
//! it wherever the plan sends them. Partial sums merge with the same check,
//! so an overflow is found whichever stage sees it.

use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, PrimitiveArray};
use arrow::compute::kernels::boolean::not;
use arrow::compute::sum_checked;
use arrow::compute::{nullif, prep_null_mask_filter};
use arrow::datatypes::{
    ArrowNativeTypeOp, ArrowNumericType, DataType, Field, FieldRef, Int64Type, UInt64Type,
};
use datafusion::common::{DataFusionError, Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, ReversedUDAF,
    Signature, Volatility,
};
use datafusion_functions_aggregate_common::aggregate::groups_accumulator::accumulate::NullState;

const NAME: &str = "tessera_checked_sum";

fn overflow(t: &DataType) -> DataFusionError {
    crate::ErrorKind::InvalidArgument.error(format!(
        "SUM overflowed {t}; sum a wider type (CAST(x AS DECIMAL(38, 0))) or SET tessera.ansi = \
         false to let it wrap around"
    ))
}

/// The checked sum, made once: the analyzer asks for it per aggregate.
pub fn checked_sum_udaf() -> Arc<AggregateUDF> {
    static UDAF: OnceLock<Arc<AggregateUDF>> = OnceLock::new();
    Arc::clone(UDAF.get_or_init(|| Arc::new(AggregateUDF::from(CheckedSum::new()))))
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CheckedSum {
    signature: Signature,
}

impl CheckedSum {
    fn new() -> Self {
        Self {
            signature: Signature::uniform(
                1,
                vec![DataType::Int64, DataType::UInt64],
                Volatility::Immutable,
            ),
        }
    }
}

impl AggregateUDFImpl for CheckedSum {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [t @ (DataType::Int64 | DataType::UInt64)] => Ok(t.clone()),
            _ => plan_err!("{NAME} takes one BIGINT or BIGINT UNSIGNED, got {arg_types:?}"),
        }
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        if args.is_distinct {
            return match args.return_field.data_type() {
                DataType::Int64 => Ok(Box::new(DistinctSum::<Int64Type>::new(DataType::Int64))),
                DataType::UInt64 => Ok(Box::new(DistinctSum::<UInt64Type>::new(DataType::UInt64))),
                other => plan_err!("{NAME} cannot sum {other}"),
            };
        }
        match args.return_field.data_type() {
            DataType::Int64 => Ok(Box::new(SumAccumulator::<Int64Type>::new(DataType::Int64))),
            DataType::UInt64 => Ok(Box::new(SumAccumulator::<UInt64Type>::new(
                DataType::UInt64,
            ))),
            other => plan_err!("{NAME} cannot sum {other}"),
        }
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        if args.is_distinct {
            // The distinct values seen so far.
            return Ok(vec![
                Field::new_list(
                    format_state_name(args.name, "sum distinct"),
                    Field::new_list_field(args.return_type().clone(), true),
                    false,
                )
                .into(),
            ]);
        }
        Ok(vec![
            Field::new(
                format_state_name(args.name, "sum"),
                args.return_type().clone(),
                true,
            )
            .into(),
        ])
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        !args.is_distinct
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        match args.return_field.data_type() {
            DataType::Int64 => Ok(Box::new(SumGroups::<Int64Type>::new(DataType::Int64))),
            DataType::UInt64 => Ok(Box::new(SumGroups::<UInt64Type>::new(DataType::UInt64))),
            other => plan_err!("{NAME} cannot sum {other}"),
        }
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        ReversedUDAF::Identical
    }
}

/// One group's sum (aggregates without GROUP BY, and window frames),
/// kept in 128 bits and checked against the result type when it is read:
/// a sliding frame adds the rows entering before it retracts those
/// leaving, and that passing excess is no overflow of the frame's sum.
struct SumAccumulator<T: ArrowNumericType> {
    sum: i128,
    /// Values summed and not retracted: none left is NULL, not 0.
    count: u64,
    data_type: DataType,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<T: ArrowNumericType> std::fmt::Debug for SumAccumulator<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SumAccumulator({})", self.data_type)
    }
}

impl<T: ArrowNumericType> SumAccumulator<T>
where
    T::Native: Into<i128> + TryFrom<i128>,
{
    fn new(data_type: DataType) -> Self {
        Self {
            sum: 0,
            count: 0,
            data_type,
            _type: std::marker::PhantomData,
        }
    }

    /// The values' sum and count: Arrow's vectorized sum, or 128-bit
    /// arithmetic when that overflows the type.
    fn batch(values: &ArrayRef) -> (i128, u64) {
        let values = values.as_primitive::<T>();
        let count = (values.len() - values.null_count()) as u64;
        let sum = match sum_checked(values) {
            Ok(sum) => sum.map_or(0, Into::into),
            Err(_) => values.iter().flatten().map(Into::<i128>::into).sum(),
        };
        (sum, count)
    }
}

impl<T: ArrowNumericType> Accumulator for SumAccumulator<T>
where
    T::Native: Into<i128> + TryFrom<i128>,
{
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let (sum, count) = Self::batch(&values[0]);
        self.sum += sum;
        self.count += count;
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let sum = if self.count == 0 {
            None
        } else {
            Some(T::Native::try_from(self.sum).map_err(|_| overflow(&self.data_type))?)
        };
        ScalarValue::new_primitive::<T>(sum, &self.data_type)
    }

    fn size(&self) -> usize {
        size_of_val(self)
    }

    /// Values leaving a sliding window frame.
    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let (sum, count) = Self::batch(&values[0]);
        self.sum -= sum;
        self.count = self.count.saturating_sub(count);
        Ok(())
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }
}

/// `SUM(DISTINCT x)` of one group: the distinct values, summed checked at
/// the end (partial states carry the values, so stages merge them).
struct DistinctSum<T: ArrowNumericType> {
    values: std::collections::HashSet<T::Native>,
    data_type: DataType,
}

impl<T: ArrowNumericType> std::fmt::Debug for DistinctSum<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DistinctSum({})", self.data_type)
    }
}

impl<T: ArrowNumericType> DistinctSum<T>
where
    T::Native: std::hash::Hash + Eq,
{
    fn new(data_type: DataType) -> Self {
        Self {
            values: Default::default(),
            data_type,
        }
    }

    fn add(&mut self, values: &ArrayRef) {
        self.values
            .extend(values.as_primitive::<T>().iter().flatten());
    }
}

impl<T: ArrowNumericType> Accumulator for DistinctSum<T>
where
    T::Native: std::hash::Hash + Eq,
{
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.add(&values[0]);
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for list in states[0].as_list::<i32>().iter().flatten() {
            self.add(&list);
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values: Vec<ScalarValue> = self
            .values
            .iter()
            .map(|v| ScalarValue::new_primitive::<T>(Some(*v), &self.data_type))
            .collect::<Result<_>>()?;
        Ok(vec![ScalarValue::List(ScalarValue::new_list_nullable(
            &values,
            &self.data_type,
        ))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let mut sum: Option<T::Native> = None;
        for v in &self.values {
            sum = Some(match sum {
                None => *v,
                Some(s) => s.add_checked(*v).map_err(|_| overflow(&self.data_type))?,
            });
        }
        ScalarValue::new_primitive::<T>(sum, &self.data_type)
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.values.capacity() * size_of::<T::Native>()
    }
}

/// Sums per group, with DataFusion's tracking of groups that saw no value.
struct SumGroups<T: ArrowNumericType + Send> {
    sums: Vec<T::Native>,
    null_state: NullState,
    data_type: DataType,
}

impl<T: ArrowNumericType + Send> std::fmt::Debug for SumGroups<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SumGroups({})", self.data_type)
    }
}

impl<T: ArrowNumericType + Send> SumGroups<T> {
    fn new(data_type: DataType) -> Self {
        Self {
            sums: Vec::new(),
            null_state: NullState::new(),
            data_type,
        }
    }
}

impl<T: ArrowNumericType + Send> GroupsAccumulator for SumGroups<T> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let values = values[0].as_primitive::<T>();
        self.sums.resize(total_num_groups, T::default_value());
        let mut overflowed = false;
        let sums = &mut self.sums;
        self.null_state.accumulate(
            group_indices,
            values,
            opt_filter,
            total_num_groups,
            |group, x| {
                let sum = &mut sums[group];
                match sum.add_checked(x) {
                    Ok(v) => *sum = v,
                    Err(_) => overflowed = true,
                }
            },
        );
        if overflowed {
            return Err(overflow(&self.data_type));
        }
        Ok(())
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.update_batch(values, group_indices, None, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let sums = emit_to.take_needed(&mut self.sums);
        let nulls = self.null_state.build(emit_to);
        Ok(Arc::new(
            PrimitiveArray::<T>::new(sums.into(), nulls).with_data_type(self.data_type.clone()),
        ))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.evaluate(emit_to)?])
    }

    /// A row's partial sum is its value; rows filtered out are NULL.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let values = Arc::clone(&values[0]);
        let Some(filter) = opt_filter else {
            return Ok(vec![values]);
        };
        let dropped = not(&prep_null_mask_filter(filter))?;
        Ok(vec![nullif(&values, &dropped)?])
    }

    fn size(&self) -> usize {
        self.sums.capacity() * size_of::<T::Native>() + self.null_state.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use datafusion::prelude::SessionContext;

    async fn run(sql: &str) -> Result<Vec<arrow::record_batch::RecordBatch>> {
        let ctx = SessionContext::new();
        crate::register_checked(&mut ctx.state_ref().write())?;
        ctx.sql(sql).await?.collect().await
    }

    #[tokio::test]
    async fn overflow_is_an_error_with_and_without_groups() {
        let rows = "(VALUES (CAST(9223372036854775807 AS BIGINT), 1), (CAST(1 AS BIGINT), 1))";
        for sql in [
            format!("SELECT tessera_checked_sum(column1) FROM {rows}"),
            format!("SELECT column2, tessera_checked_sum(column1) FROM {rows} GROUP BY column2"),
        ] {
            let e = run(&sql).await.unwrap_err();
            assert!(e.to_string().contains("SUM overflowed Int64"), "{sql}: {e}");
        }
    }

    #[tokio::test]
    async fn in_range_sums_are_exact_and_empty_is_null() {
        let b = run(
            "SELECT column2, tessera_checked_sum(column1) FROM (VALUES (CAST(-5 AS BIGINT), 1), \
             (CAST(7 AS BIGINT), 1), (NULL, 2)) GROUP BY column2 ORDER BY column2",
        )
        .await
        .unwrap();
        let sums = b[0].column(1).as_primitive::<Int64Type>();
        assert_eq!(sums.value(0), 2);
        assert!(sums.is_null(1));
    }

    #[test]
    fn rows_passed_on_as_state_drop_filtered_rows() {
        use arrow::array::Int64Array;
        let acc = SumGroups::<Int64Type>::new(DataType::Int64);
        let values: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(4)]));
        let filter = BooleanArray::from(vec![Some(true), Some(true), Some(false), None]);
        let state = acc.convert_to_state(&[values], Some(&filter)).unwrap();
        let got: Vec<Option<i64>> = state[0].as_primitive::<Int64Type>().iter().collect();
        assert_eq!(got, vec![Some(1), None, None, None]);
    }
}
