//! Rebalancing: `EXPLAIN REBALANCE [t]` (the plan; nothing moves),
//! `REBALANCE APPLY [t]` (run it in the background), `SHOW REBALANCE`
//! (its steps) and `REBALANCE CANCEL`.

use datafusion::common::Result;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use super::{Statement, expect_end, non_blank, object_name, parser_err, word_is};

/// A rebalancing statement, if `tokens` is one.
pub(super) fn parse_rebalance_statement(tokens: &[TokenWithSpan]) -> Option<Result<Statement>> {
    let words = non_blank(tokens);
    let at = |i: usize, w: &str| words.get(i).is_some_and(|t| word_is(t, w));
    let rebalance = at(0, "EXPLAIN") && at(1, "REBALANCE")
        || at(0, "REBALANCE") && (at(1, "APPLY") || at(1, "CANCEL"))
        || at(0, "SHOW") && at(1, "REBALANCE");
    if !rebalance {
        return None;
    }
    Some((|| {
        let mut parser =
            Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens.to_vec());
        // The two words that name the statement.
        parser.next_token();
        parser.next_token();
        let table = if at(0, "EXPLAIN") || at(1, "APPLY") {
            match parser.peek_token().token {
                Token::EOF | Token::SemiColon => None,
                _ => Some(object_name(
                    &parser.parse_object_name(false).map_err(parser_err)?,
                )),
            }
        } else {
            None
        };
        expect_end(&mut parser)?;
        Ok(if at(0, "EXPLAIN") {
            Statement::ExplainRebalance { table }
        } else if at(0, "SHOW") {
            Statement::ShowRebalance
        } else if at(1, "APPLY") {
            Statement::RebalanceApply { table }
        } else {
            Statement::RebalanceCancel
        })
    })())
}

#[cfg(test)]
mod tests {
    use crate::{Statement, parse_statement};

    #[test]
    fn rebalance_statements_parse() {
        let table = |t: &str| Some(t.to_string());
        assert_eq!(
            parse_statement("EXPLAIN REBALANCE").unwrap(),
            Statement::ExplainRebalance { table: None }
        );
        assert_eq!(
            parse_statement("explain rebalance orders;").unwrap(),
            Statement::ExplainRebalance {
                table: table("orders")
            }
        );
        assert_eq!(
            parse_statement("REBALANCE APPLY lineitem").unwrap(),
            Statement::RebalanceApply {
                table: table("lineitem")
            }
        );
        assert_eq!(
            parse_statement("REBALANCE APPLY").unwrap(),
            Statement::RebalanceApply { table: None }
        );
        assert_eq!(
            parse_statement("SHOW REBALANCE").unwrap(),
            Statement::ShowRebalance
        );
        assert_eq!(
            parse_statement("REBALANCE CANCEL;").unwrap(),
            Statement::RebalanceCancel
        );
        assert!(parse_statement("REBALANCE CANCEL now").is_err());
        assert!(parse_statement("SHOW REBALANCE t").is_err());
    }
}
