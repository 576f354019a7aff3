//! Partition pruning: from a query's filters to the partitions that can hold
//! matching rows. Equality, `IN`, `OR` of equalities and ranges on the
//! partition key are understood; anything else keeps every partition.
//!
//! Hash tables keep the partitions of the hashed literals (all key columns
//! must be pinned); range tables keep the partitions whose bounds overlap the
//! predicate's interval; hybrid tables prune by their hash part.

use std::collections::BTreeSet;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, expr::InList};

use crate::key::KeyValue;
use crate::layout::{KeyRange, PartitionLayout};
use crate::scheme::PartitionScheme;

/// Most key combinations hashed for one query before giving up on pruning.
const MAX_COMBINATIONS: usize = 4096;

/// What the filters say about one key column.
#[derive(Debug, Clone, PartialEq)]
enum Constraint {
    /// The column equals one of these values (empty: matches nothing).
    Values(Vec<KeyValue>),
    /// The column lies between these bounds (`(value, inclusive)`).
    Range {
        lo: Option<(KeyValue, bool)>,
        hi: Option<(KeyValue, bool)>,
    },
}

impl Constraint {
    fn admits(&self, v: &KeyValue) -> bool {
        match self {
            Constraint::Values(vs) => vs.contains(v),
            Constraint::Range { lo, hi } => {
                let above = match lo {
                    None => true,
                    Some((b, true)) => v >= b,
                    Some((b, false)) => v > b,
                };
                let below = match hi {
                    None => true,
                    Some((b, true)) => v <= b,
                    Some((b, false)) => v < b,
                };
                above && below
            }
        }
    }

    fn intersect(self, other: Constraint) -> Constraint {
        match (self, other) {
            (Constraint::Values(a), other) | (other, Constraint::Values(a)) => {
                Constraint::Values(a.into_iter().filter(|v| other.admits(v)).collect())
            }
            (Constraint::Range { lo: l1, hi: h1 }, Constraint::Range { lo: l2, hi: h2 }) => {
                let lo = match (l1, l2) {
                    (None, x) | (x, None) => x,
                    (Some(a), Some(b)) => Some(if a.0 > b.0 || (a.0 == b.0 && !a.1) {
                        a
                    } else {
                        b
                    }),
                };
                let hi = match (h1, h2) {
                    (None, x) | (x, None) => x,
                    (Some(a), Some(b)) => Some(if a.0 < b.0 || (a.0 == b.0 && !a.1) {
                        a
                    } else {
                        b
                    }),
                };
                Constraint::Range { lo, hi }
            }
        }
    }
}

/// The partitions of a table with `scheme` laid out as `layout` (`None`:
/// the scheme's initial layout) that rows matching every filter can live
/// in, ascending by id.
pub fn prune_partitions(
    scheme: &PartitionScheme,
    layout: Option<&PartitionLayout>,
    schema: &Schema,
    filters: &[Expr],
) -> Vec<u32> {
    let initial;
    let layout = match layout {
        Some(l) => l,
        None => {
            initial = PartitionLayout::initial(scheme);
            &initial
        }
    };
    let mut all: Vec<u32> = layout.ids().collect();
    all.sort_unstable();
    let constraint_of = |column: &str| -> Option<Constraint> {
        let data_type = schema.field_with_name(column).ok()?.data_type().clone();
        let mut found: Option<Constraint> = None;
        for filter in filters {
            for conjunct in split_conjunction(filter) {
                if let Some(c) = constraint(conjunct, column, &data_type) {
                    found = Some(match found {
                        None => c,
                        Some(prev) => prev.intersect(c),
                    });
                }
            }
        }
        found
    };
    match scheme {
        PartitionScheme::Single => all,
        PartitionScheme::Hash { columns, .. } => {
            let mut combos: Vec<Vec<KeyValue>> = vec![vec![]];
            for column in columns {
                let Some(Constraint::Values(values)) = constraint_of(column) else {
                    return all;
                };
                if combos.len() * values.len() > MAX_COMBINATIONS {
                    return all;
                }
                combos = combos
                    .into_iter()
                    .flat_map(|prefix| {
                        values.iter().map(move |v| {
                            let mut key = prefix.clone();
                            key.push(v.clone());
                            key
                        })
                    })
                    .collect();
            }
            let kept: BTreeSet<u32> = combos
                .iter()
                .map(|k| scheme.partition_of_key(Some(layout), k))
                .collect();
            kept.into_iter().collect()
        }
        PartitionScheme::Range { column, .. } => match constraint_of(column) {
            None => all,
            Some(Constraint::Values(values)) => {
                let kept: BTreeSet<u32> = values
                    .iter()
                    .map(|v| layout.partition_of_value(v))
                    .collect();
                kept.into_iter().collect()
            }
            Some(Constraint::Range { lo, hi }) => {
                let mut kept: Vec<u32> = layout
                    .parts()
                    .iter()
                    .filter(|(range, _)| {
                        let (lower, upper) = match range {
                            KeyRange::Range { lo, hi } => (lo.as_ref(), hi.as_ref()),
                            _ => (None, None),
                        };
                        // Some x with lower <= x < upper and lo <= x <= hi.
                        let hi_ok = match (&hi, lower) {
                            (Some((h, true)), Some(l)) => h >= l,
                            (Some((h, false)), Some(l)) => h > l,
                            _ => true,
                        };
                        let lo_ok = match (&lo, upper) {
                            (Some((l, _)), Some(u)) => l < u,
                            _ => true,
                        };
                        hi_ok && lo_ok
                    })
                    .map(|(_, id)| *id)
                    .collect();
                kept.sort_unstable();
                kept
            }
        },
    }
}

fn column_is(expr: &Expr, column: &str) -> bool {
    matches!(expr, Expr::Column(c) if c.name == column)
}

fn literal(expr: &Expr) -> Option<&ScalarValue> {
    match expr {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

/// Key values of the literals, dropping NULLs (they never compare equal).
/// `None` if a literal cannot be converted to the column's type.
fn key_values<'a>(
    literals: impl Iterator<Item = &'a Expr>,
    data_type: &datafusion::arrow::datatypes::DataType,
) -> Option<Vec<KeyValue>> {
    let mut out = vec![];
    for e in literals {
        if let Some(v) = KeyValue::from_scalar(literal(e)?, data_type).ok()?
            && !out.contains(&v)
        {
            out.push(v);
        }
    }
    Some(out)
}

fn constraint(
    expr: &Expr,
    column: &str,
    data_type: &datafusion::arrow::datatypes::DataType,
) -> Option<Constraint> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if *op == Operator::Or {
                // `k = 1 OR k IN (2, 3)`: a union of value sets.
                let (Some(Constraint::Values(mut a)), Some(Constraint::Values(b))) = (
                    constraint(left, column, data_type),
                    constraint(right, column, data_type),
                ) else {
                    return None;
                };
                for v in b {
                    if !a.contains(&v) {
                        a.push(v);
                    }
                }
                return Some(Constraint::Values(a));
            }
            let (op, lit) = if column_is(left, column) {
                (*op, right.as_ref())
            } else if column_is(right, column) {
                (op.swap()?, left.as_ref())
            } else {
                return None;
            };
            let comparison = matches!(
                op,
                Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
            );
            if !comparison {
                return None;
            }
            let value = KeyValue::from_scalar(literal(lit)?, data_type).ok()?;
            let Some(value) = value else {
                // A comparison with NULL is never true.
                return Some(Constraint::Values(vec![]));
            };
            match op {
                Operator::Eq => Some(Constraint::Values(vec![value])),
                Operator::Lt => Some(Constraint::Range {
                    lo: None,
                    hi: Some((value, false)),
                }),
                Operator::LtEq => Some(Constraint::Range {
                    lo: None,
                    hi: Some((value, true)),
                }),
                Operator::Gt => Some(Constraint::Range {
                    lo: Some((value, false)),
                    hi: None,
                }),
                Operator::GtEq => Some(Constraint::Range {
                    lo: Some((value, true)),
                    hi: None,
                }),
                _ => None,
            }
        }
        // NULL keys live where the NULL key value hashes (or the first
        // range partition).
        Expr::IsNull(expr) if column_is(expr, column) => {
            Some(Constraint::Values(vec![KeyValue::Null]))
        }
        Expr::InList(InList {
            expr,
            list,
            negated: false,
        }) if column_is(expr, column) => key_values(list.iter(), data_type).map(Constraint::Values),
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if column_is(expr, column) => {
            let lo = KeyValue::from_scalar(literal(low)?, data_type).ok()?;
            let hi = KeyValue::from_scalar(literal(high)?, data_type).ok()?;
            match (lo, hi) {
                (Some(lo), Some(hi)) => Some(Constraint::Range {
                    lo: Some((lo, true)),
                    hi: Some((hi, true)),
                }),
                _ => Some(Constraint::Values(vec![])),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::prelude::{col, lit};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ])
    }

    fn hash() -> PartitionScheme {
        PartitionScheme::Hash {
            columns: vec!["k".into()],
            partitions: 8,
            cluster_by: vec![],
        }
    }

    fn range() -> PartitionScheme {
        PartitionScheme::Range {
            column: "k".into(),
            bounds: vec![
                KeyValue::Int(1000),
                KeyValue::Int(2000),
                KeyValue::Int(3000),
            ],
        }
    }

    #[test]
    fn hash_equality_keeps_one() {
        let kept = prune_partitions(&hash(), None, &schema(), &[col("k").eq(lit(42i64))]);
        assert_eq!(
            kept,
            vec![hash().partition_of_key(None, &[KeyValue::Int(42)])]
        );
        // An Int32 literal hashes like the Int64 column value.
        assert_eq!(
            prune_partitions(&hash(), None, &schema(), &[lit(42i32).eq(col("k"))]),
            kept
        );
    }

    #[test]
    fn hash_in_and_or() {
        let in_list = col("k").in_list(vec![lit(1i64), lit(2i64)], false);
        let or = col("k").eq(lit(1i64)).or(col("k").eq(lit(2i64)));
        let a = prune_partitions(&hash(), None, &schema(), &[in_list]);
        assert!(!a.is_empty() && a.len() <= 2);
        assert_eq!(a, prune_partitions(&hash(), None, &schema(), &[or]));
        assert_eq!(
            prune_partitions(&hash(), None, &schema(), &[col("k").gt(lit(1i64))]).len(),
            8
        );
    }

    #[test]
    fn range_between_and_bounds() {
        let between = col("k").between(lit(1500i64), lit(2500i64));
        assert_eq!(
            prune_partitions(&range(), None, &schema(), &[between]),
            vec![1, 2]
        );
        assert_eq!(
            prune_partitions(&range(), None, &schema(), &[col("k").lt(lit(1000i64))]),
            vec![0]
        );
        assert_eq!(
            prune_partitions(&range(), None, &schema(), &[col("k").lt_eq(lit(1000i64))]),
            vec![0, 1]
        );
        assert_eq!(
            prune_partitions(&range(), None, &schema(), &[col("k").gt_eq(lit(3000i64))]),
            vec![3]
        );
        let both = [col("k").gt(lit(100i64)), col("k").lt(lit(200i64))];
        assert_eq!(prune_partitions(&range(), None, &schema(), &both), vec![0]);
        assert_eq!(
            prune_partitions(&range(), None, &schema(), &[col("k").eq(lit(2000i64))]),
            vec![2]
        );
        let contradiction = [col("k").eq(lit(5i64)), col("k").gt(lit(10i64))];
        assert!(prune_partitions(&range(), None, &schema(), &contradiction).is_empty());
    }

    #[test]
    fn distinct_from_null_keeps_all() {
        let f = Expr::BinaryExpr(BinaryExpr::new(
            Box::new(col("k")),
            Operator::IsDistinctFrom,
            Box::new(lit(ScalarValue::Int64(None))),
        ));
        assert_eq!(prune_partitions(&hash(), None, &schema(), &[f]).len(), 8);
    }

    #[test]
    fn unrelated_filters_keep_all() {
        assert_eq!(
            prune_partitions(&range(), None, &schema(), &[col("s").eq(lit("x"))]).len(),
            4
        );
    }
}
