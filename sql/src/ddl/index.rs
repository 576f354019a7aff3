//! `CREATE INDEX`: an index's name, table, columns and kind.

use datafusion::common::{Result, plan_datafusion_err, plan_err};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use super::{ident_name, object_name, parse_word, parser_err};
use crate::index::IndexKind;

/// `CREATE INDEX [IF NOT EXISTS] name ON table (col, ...) [LOCAL | GLOBAL [SYNC | ASYNC] [PARTITIONS n]]`.
/// Without a kind the index is LOCAL; GLOBAL without a mode is SYNC.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateIndex {
    pub name: String,
    pub table: String,
    pub columns: Vec<String>,
    pub kind: IndexKind,
    pub partitions: Option<u64>,
    pub if_not_exists: bool,
}

pub(super) fn parse_create_index(tokens: Vec<TokenWithSpan>) -> Result<CreateIndex> {
    const FORM: &str = "CREATE INDEX name ON table (column, ...) [LOCAL | GLOBAL [SYNC | ASYNC] \
                        [PARTITIONS n]]";
    let mut p = Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens);
    p.expect_keywords(&[Keyword::CREATE, Keyword::INDEX])
        .map_err(parser_err)?;
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = p
        .parse_identifier()
        .map_err(|_| plan_datafusion_err!("CREATE INDEX needs a name: {FORM}"))?;
    p.expect_keyword(Keyword::ON)
        .map_err(|_| plan_datafusion_err!("CREATE INDEX needs ON table: {FORM}"))?;
    let table = object_name(&p.parse_object_name(false).map_err(parser_err)?);
    let columns = index_columns(&mut p)?;
    let mut kind = IndexKind::Local;
    let mut partitions = None;
    if parse_word(&mut p, "GLOBAL") {
        kind = if parse_word(&mut p, "ASYNC") {
            IndexKind::GlobalAsync
        } else {
            let _ = parse_word(&mut p, "SYNC");
            IndexKind::GlobalSync
        };
    } else if parse_word(&mut p, "LOCAL") {
        kind = IndexKind::Local;
    }
    if p.parse_keyword(Keyword::PARTITIONS) {
        partitions = Some(match p.parse_literal_uint() {
            Ok(n) => n,
            Err(_) => return plan_err!("PARTITIONS must be followed by a number: {FORM}"),
        });
    }
    if !matches!(p.peek_token().token, Token::EOF | Token::SemiColon) {
        return plan_err!(
            "unexpected '{}' in CREATE INDEX; the form is {FORM}",
            p.peek_token().token
        );
    }
    Ok(CreateIndex {
        name: ident_name(&name),
        table,
        columns,
        kind,
        partitions,
        if_not_exists,
    })
}

/// An index's columns, each with an optional `ASC | DESC` and
/// `NULLS FIRST | LAST`. Entries are found by value (equality, IN), so the
/// order a column is written in changes nothing; it is accepted as other
/// databases accept it.
fn index_columns(p: &mut Parser) -> Result<Vec<String>> {
    p.expect_token(&Token::LParen).map_err(parser_err)?;
    let columns = p
        .parse_comma_separated(|p| {
            let ident = p.parse_identifier()?;
            let _ = p.parse_one_of_keywords(&[Keyword::ASC, Keyword::DESC]);
            if p.parse_keyword(Keyword::NULLS) {
                p.expect_one_of_keywords(&[Keyword::FIRST, Keyword::LAST])?;
            }
            Ok(ident_name(&ident))
        })
        .map_err(parser_err)?;
    p.expect_token(&Token::RParen).map_err(parser_err)?;
    Ok(columns)
}
