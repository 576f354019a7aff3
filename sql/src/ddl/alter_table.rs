//! `ALTER TABLE t` statements Tessera runs itself: `SET REPLICAS r`, `SET
//! REBALANCE ...`, `SPLIT PARTITION id [AT v]` and `MERGE PARTITIONS a, b`.
//! The table's name comes first, so a table may be named after any of
//! these words.

use datafusion::common::{Result, plan_err};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use super::{Statement, expect_end, is_blank, object_name, parse_word, parser_err};
use crate::replication::Replication;
use crate::strategy::Strategy;

/// The statement, or `None` for an `ALTER TABLE` DataFusion runs.
pub(super) fn parse_alter_table(tokens: Vec<TokenWithSpan>) -> Result<Option<Statement>> {
    let mut parser = Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens.clone());
    parser
        .expect_keywords(&[Keyword::ALTER, Keyword::TABLE])
        .map_err(parser_err)?;
    let Ok(name) = parser.parse_object_name(false) else {
        return Ok(None);
    };
    let table = object_name(&name);
    let next_is = |parser: &Parser, n: usize, w: &str| {
        matches!(parser.peek_nth_token(n).token,
            Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w))
    };
    if next_is(&parser, 0, "REPLICAS") || next_is(&parser, 0, "REBALANCE") {
        return plan_err!("expected ALTER TABLE {table} SET REPLICAS n or SET REBALANCE ...");
    }
    if next_is(&parser, 0, "SET") && next_is(&parser, 1, "REPLICAS") {
        parser.next_token();
        parser.next_token();
        let replicas = match parser.next_token().token {
            Token::Number(n, _) => n.parse::<u32>().ok(),
            _ => None,
        };
        let Some(replicas) = replicas else {
            return plan_err!(
                "ALTER TABLE {table} SET REPLICAS takes a number of copies: REPLICAS 3"
            );
        };
        Replication::try_new(replicas, None)?;
        expect_end(&mut parser)?;
        return Ok(Some(Statement::SetReplicas { table, replicas }));
    }
    if next_is(&parser, 0, "SET") && next_is(&parser, 1, "REBALANCE") {
        parser.next_token();
        parser.next_token();
        let rest: Vec<&Token> = (parser.index()..tokens.len())
            .map(|i| &tokens[i].token)
            .filter(|t| !is_blank(t) && !matches!(t, Token::SemiColon | Token::EOF))
            .collect();
        let (strategy, taken) = Strategy::parse(&rest)?;
        if let Some(extra) = rest.get(taken) {
            return plan_err!("unexpected '{extra}' after REBALANCE {strategy}");
        }
        return Ok(Some(Statement::SetRebalance { table, strategy }));
    }
    if parse_word(&mut parser, "SPLIT") {
        if !parser.parse_keyword(Keyword::PARTITION) {
            return plan_err!("expected ALTER TABLE {table} SPLIT PARTITION id [AT value]");
        }
        let partition = match parser.next_token().token {
            Token::Number(n, _) => n.parse::<u32>().ok(),
            _ => None,
        };
        let Some(partition) = partition else {
            return plan_err!(
                "ALTER TABLE {table} SPLIT PARTITION takes a partition id (SHOW PARTITIONS \
                 {table} lists them): SPLIT PARTITION 3"
            );
        };
        let at = if parser.parse_keyword(Keyword::AT) {
            Some(Box::new(parser.parse_expr().map_err(parser_err)?))
        } else {
            None
        };
        expect_end(&mut parser)?;
        return Ok(Some(Statement::SplitPartition {
            table,
            partition,
            at,
        }));
    }
    if parser.parse_keyword(Keyword::MERGE) {
        if !parser.parse_keyword(Keyword::PARTITIONS) {
            return plan_err!("expected ALTER TABLE {table} MERGE PARTITIONS a, b");
        }
        let mut ids = vec![];
        loop {
            match parser.next_token().token {
                Token::Number(n, _) => match n.parse::<u32>() {
                    Ok(id) => ids.push(id),
                    Err(_) => ids.clear(),
                },
                _ => ids.clear(),
            }
            if ids.is_empty() || !parser.consume_token(&Token::Comma) {
                break;
            }
        }
        expect_end(&mut parser)?;
        let [a, b] = ids[..] else {
            return plan_err!(
                "ALTER TABLE {table} MERGE PARTITIONS takes two partition ids, neighbours in key \
                 order (SHOW PARTITIONS {table} lists them): MERGE PARTITIONS 3, 4"
            );
        };
        return Ok(Some(Statement::MergePartitions { table, a, b }));
    }
    Ok(None)
}
