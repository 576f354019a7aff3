//! The partitioning clause of `CREATE TABLE`: parsed as written, then
//! checked against the table's columns (bounds of the key column's type).

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::{Result, ScalarValue, plan_datafusion_err, plan_err};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, UnaryOperator, Value};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use super::{column_list, expect_end, parse_word, parser_err};
use crate::key::KeyValue;
use crate::scheme::PartitionScheme;

/// The partitioning clause as written, before it is checked against columns.
#[derive(Debug, Clone, PartialEq)]
pub enum PartitionSpec {
    Hash {
        columns: Vec<String>,
        partitions: u64,
        cluster_by: Vec<String>,
    },
    Range {
        column: String,
        bounds: Vec<SqlExpr>,
    },
}

impl PartitionSpec {
    /// Checks the clause against the table's columns and converts bounds to
    /// key values of the key column's type.
    pub fn resolve(&self, schema: &Schema) -> Result<PartitionScheme> {
        match self {
            PartitionSpec::Hash {
                columns,
                partitions,
                cluster_by,
            } => Ok(PartitionScheme::Hash {
                columns: columns.clone(),
                partitions: u32::try_from(*partitions).unwrap_or(u32::MAX),
                cluster_by: cluster_by.clone(),
            }),
            PartitionSpec::Range { column, bounds } => {
                let Ok(field) = schema.field_with_name(column) else {
                    let names: Vec<&str> =
                        schema.fields().iter().map(|f| f.name().as_str()).collect();
                    return plan_err!(
                        "partition key column '{column}' is not a column of the table; columns are: {}",
                        names.join(", ")
                    );
                };
                let bounds = bounds
                    .iter()
                    .map(|b| key_bound(b, column, field.data_type()))
                    .collect::<Result<Vec<_>>>()?;
                Ok(PartitionScheme::Range {
                    column: column.clone(),
                    bounds,
                })
            }
        }
    }
}

/// A `SPLIT AT` bound (of `CREATE TABLE`, or of `ALTER TABLE .. SPLIT
/// PARTITION .. AT`) as a key value of the key column `column`'s type.
pub fn key_bound(b: &SqlExpr, column: &str, data_type: &DataType) -> Result<KeyValue> {
    let literal = bound_literal(b)?;
    if !literal_fits(&literal, data_type) {
        return plan_err!(
            "SPLIT AT bound {b} is {} but column '{column}' is {data_type}; write bounds of the \
             column's type (strings are quoted: '10')",
            describe_literal(&literal)
        );
    }
    match KeyValue::from_scalar(&literal, data_type) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => plan_err!("SPLIT AT bounds cannot be NULL"),
        Err(e) => {
            plan_err!("SPLIT AT bound {b} does not fit column '{column}' of type {data_type}: {e}")
        }
    }
}

/// Whether a bound literal is of the key column's kind: numbers for number
/// columns, strings for strings and (as their text form) dates and times.
fn literal_fits(literal: &ScalarValue, column: &DataType) -> bool {
    match literal {
        ScalarValue::Int64(_) | ScalarValue::UInt64(_) => column.is_integer(),
        ScalarValue::Utf8(_) => matches!(
            column,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(..)
        ),
        ScalarValue::Boolean(_) => *column == DataType::Boolean,
        _ => false,
    }
}

fn describe_literal(literal: &ScalarValue) -> &'static str {
    match literal {
        ScalarValue::Int64(_) | ScalarValue::UInt64(_) => "a number",
        ScalarValue::Utf8(_) => "a string",
        ScalarValue::Boolean(_) => "a boolean",
        _ => "a literal",
    }
}

/// A literal bound: a number, a string, or a typed string (`DATE '2024-01-01'`).
fn bound_literal(expr: &SqlExpr) -> Result<ScalarValue> {
    match expr {
        SqlExpr::Value(v) => match &v.value {
            Value::Number(n, _) => match n.parse::<i64>() {
                Ok(i) => Ok(ScalarValue::Int64(Some(i))),
                Err(_) => match n.parse::<u64>() {
                    Ok(u) => Ok(ScalarValue::UInt64(Some(u))),
                    Err(_) => plan_err!("SPLIT AT bound {n} is not an integer"),
                },
            },
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => {
                Ok(ScalarValue::Utf8(Some(s.clone())))
            }
            Value::Boolean(b) => Ok(ScalarValue::Boolean(Some(*b))),
            other => plan_err!("SPLIT AT bound {other} is not a literal Tessera can split on"),
        },
        SqlExpr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match bound_literal(expr)? {
            ScalarValue::Int64(Some(i)) => Ok(ScalarValue::Int64(Some(-i))),
            _ => plan_err!("SPLIT AT bound -{expr} is not an integer"),
        },
        SqlExpr::TypedString(ts) => match &ts.value.value {
            Value::SingleQuotedString(s) => Ok(ScalarValue::Utf8(Some(s.clone()))),
            other => plan_err!("SPLIT AT bound {other} is not a literal"),
        },
        other => plan_err!("SPLIT AT bounds must be literals, got {other}"),
    }
}

pub(super) fn parse_partition_clause(tokens: Vec<TokenWithSpan>) -> Result<PartitionSpec> {
    let mut p = Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens);
    p.expect_keywords(&[Keyword::PARTITION, Keyword::BY])
        .map_err(parser_err)?;
    let spec = if p.parse_keyword(Keyword::HASH) {
        let columns = column_list(&mut p)?;
        if columns.is_empty() {
            return plan_err!("PARTITION BY HASH needs at least one column");
        }
        p.expect_keyword(Keyword::PARTITIONS).map_err(|_| {
            plan_datafusion_err!("PARTITION BY HASH (...) must be followed by PARTITIONS n")
        })?;
        let partitions = p.parse_literal_uint().map_err(parser_err)?;
        let cluster_by = if p.parse_keywords(&[Keyword::CLUSTER, Keyword::BY]) {
            column_list(&mut p)?
        } else {
            vec![]
        };
        PartitionSpec::Hash {
            columns,
            partitions,
            cluster_by,
        }
    } else if p.parse_keyword(Keyword::RANGE) {
        let columns = column_list(&mut p)?;
        let [column] = columns.as_slice() else {
            return plan_err!(
                "PARTITION BY RANGE takes exactly one column, got {}",
                columns.len()
            );
        };
        // Without SPLIT AT: one partition holding every key (a REBALANCE
        // DYNAMIC table splits it as it grows).
        let mut bounds = vec![];
        if parse_word(&mut p, "SPLIT") {
            if !p.parse_keyword(Keyword::AT) {
                return plan_err!("expected SPLIT AT (v1, v2, ...) after PARTITION BY RANGE (col)");
            }
            p.expect_token(&Token::LParen).map_err(parser_err)?;
            bounds = p
                .parse_comma_separated(Parser::parse_expr)
                .map_err(parser_err)?;
            p.expect_token(&Token::RParen).map_err(parser_err)?;
        }
        PartitionSpec::Range {
            column: column.clone(),
            bounds,
        }
    } else {
        return plan_err!(
            "expected HASH or RANGE after PARTITION BY, e.g. PARTITION BY HASH (k) PARTITIONS 8"
        );
    };
    expect_end(&mut p)?;
    Ok(spec)
}
