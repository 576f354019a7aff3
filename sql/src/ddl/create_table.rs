//! `CREATE TABLE`: its partitioning clause (`partition.rs`) and its
//! `REPLICAS` and `REBALANCE` clauses taken out, and the rest left to DataFusion.

use datafusion::common::{Result, plan_err};
use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use super::partition::{PartitionSpec, parse_partition_clause};
use super::{is_blank, is_word, object_name, parser_err};
use crate::replication::{Replication, WriteQuorum};
use crate::strategy::Strategy;
use crate::text::Offsets;

/// `CREATE TABLE` with its partitioning clause taken out.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateTable {
    pub name: String,
    pub if_not_exists: bool,
    /// The statement without the partitioning clause: plain DataFusion SQL
    /// whose plan gives the schema (and the query, for `AS SELECT`).
    pub base_sql: String,
    /// The `AS SELECT ...` query, if any.
    pub query: Option<String>,
    pub partitioning: Option<PartitionSpec>,
    /// `REPLICAS r [WRITE QUORUM ...]`, if given.
    pub replication: Option<Replication>,
    /// `REBALANCE ...`, if given.
    pub rebalance: Option<Strategy>,
}

/// A CREATE TABLE's `REPLICAS r [WRITE QUORUM ALL | MAJORITY | ONE]`
/// clause (anywhere at the top level before `AS`), and the statement with
/// the clause blanked out.
pub(super) fn take_replicas_clause(
    sql: &str,
    tokens: &[TokenWithSpan],
) -> Result<(String, Option<Replication>)> {
    take_clause(sql, tokens, "REPLICAS", |words| {
        let word = |at: usize, w: &str| {
            words.get(at).is_some_and(
                |t| matches!(t, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w)),
            )
        };
        let Some(Token::Number(n, _)) = words.first() else {
            return plan_err!("REPLICAS takes the number of copies of each partition: REPLICAS 3");
        };
        let Ok(replicas) = n.parse::<u32>() else {
            return plan_err!("REPLICAS takes a whole number of copies, got {n}");
        };
        let mut taken = 1;
        let mut quorum = None;
        if word(taken, "WRITE") {
            if !word(taken + 1, "QUORUM") {
                return plan_err!("expected WRITE QUORUM ALL | MAJORITY | ONE");
            }
            let chosen = match words.get(taken + 2) {
                Some(Token::Word(w)) if w.quote_style.is_none() => WriteQuorum::parse(&w.value),
                _ => None,
            };
            let Some(chosen) = chosen else {
                return plan_err!("expected WRITE QUORUM ALL | MAJORITY | ONE");
            };
            quorum = Some(chosen);
            taken += 3;
        }
        Ok((Replication::try_new(replicas, quorum)?, taken))
    })
}

/// A CREATE TABLE's `REBALANCE FIXED | DYNAMIC ... | PROPORTIONAL ...`
/// clause, and the statement with the clause blanked out.
pub(super) fn take_rebalance_clause(
    sql: &str,
    tokens: &[TokenWithSpan],
) -> Result<(String, Option<Strategy>)> {
    take_clause(sql, tokens, "REBALANCE", Strategy::parse)
}

/// Whether the word at `at` is (part of) the table's name: right after
/// `TABLE` or `IF NOT EXISTS`, or next to a `.` (`s.replicas`).
fn names_table(words: &[(usize, &Token)], at: usize) -> bool {
    let before = at
        .checked_sub(1)
        .and_then(|i| words.get(i))
        .map(|(_, t)| *t);
    let after = words.get(at + 1).map(|(_, t)| *t);
    matches!(before, Some(Token::Period))
        || matches!(after, Some(Token::Period))
        || before.is_some_and(|t| is_word(t, Keyword::TABLE) || is_word(t, Keyword::EXISTS))
}

/// A clause that starts with `keyword` at the top level before `AS`,
/// parsed by `parse` from the words after the keyword (it says how many it
/// took), and the statement with the clause blanked out.
fn take_clause<T>(
    sql: &str,
    tokens: &[TokenWithSpan],
    keyword: &str,
    parse: impl Fn(&[&Token]) -> Result<(T, usize)>,
) -> Result<(String, Option<T>)> {
    let words: Vec<(usize, &Token)> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| !is_blank(&t.token))
        .map(|(i, t)| (i, &t.token))
        .collect();
    let mut depth = 0i32;
    for (at, (_, token)) in words.iter().enumerate() {
        match token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            t if depth == 0 && is_word(t, Keyword::AS) => break,
            Token::Word(w)
                if depth == 0
                    && w.quote_style.is_none()
                    && w.value.eq_ignore_ascii_case(keyword)
                    && !names_table(&words, at) =>
            {
                let after: Vec<&Token> = words[at + 1..].iter().map(|(_, t)| *t).collect();
                let (value, taken) = parse(&after)?;
                let end = at + 1 + taken;
                let offsets = Offsets::new(sql);
                let from = offsets.of(tokens[words[at].0].span.start);
                let to = words
                    .get(end)
                    .map_or(sql.len(), |(i, _)| offsets.of(tokens[*i].span.start));
                let blanked = format!("{}{}{}", &sql[..from], " ".repeat(to - from), &sql[to..]);
                return Ok((blanked, Some(value)));
            }
            _ => {}
        }
    }
    Ok((sql.to_string(), None))
}

pub(super) fn parse_create_table(sql: &str, tokens: Vec<TokenWithSpan>) -> Result<CreateTable> {
    // Find a top-level `PARTITION BY` and where its clause ends: a top-level
    // `AS` (CREATE TABLE ... AS SELECT) or the end of the statement.
    let mut depth = 0i32;
    let mut clause: Option<(usize, usize)> = None;
    for (i, t) in tokens.iter().enumerate() {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            tok if depth == 0 && clause.is_none() && is_word(tok, Keyword::PARTITION) => {
                let next = tokens[i + 1..].iter().find(|t| !is_blank(&t.token));
                if next.is_some_and(|t| is_word(&t.token, Keyword::BY)) {
                    clause = Some((i, tokens.len()));
                }
            }
            tok if depth == 0 && is_word(tok, Keyword::AS) => {
                if let Some((start, end)) = clause
                    && end == tokens.len()
                {
                    clause = Some((start, i));
                }
            }
            _ => {}
        }
    }

    // The statement without the clause, cut from the text as written.
    let offsets = Offsets::new(sql);
    let at = |i: usize| {
        tokens
            .get(i)
            .map_or(sql.len(), |t| offsets.of(t.span.start))
    };
    let (base_tokens, base_sql, partitioning) = match clause {
        None => (tokens.clone(), sql.to_string(), None),
        Some((start, end)) => {
            let clause_tokens = tokens[start..end].to_vec();
            let mut base = tokens[..start].to_vec();
            base.extend_from_slice(&tokens[end..]);
            let text = format!("{}{}", &sql[..at(start)], &sql[at(end)..]);
            (base, text, Some(parse_partition_clause(clause_tokens)?))
        }
    };
    let stmt = Parser::new(&GenericDialect {})
        .with_tokens_with_locations(base_tokens)
        .parse_statement()
        .map_err(parser_err)?;
    let ast::Statement::CreateTable(ct) = stmt else {
        return plan_err!("could not parse CREATE TABLE");
    };
    if ct.or_replace {
        return plan_err!(
            "CREATE OR REPLACE TABLE is not supported; DROP TABLE first, then CREATE TABLE"
        );
    }
    Ok(CreateTable {
        name: object_name(&ct.name),
        if_not_exists: ct.if_not_exists,
        base_sql: base_sql.trim().trim_end_matches(';').to_string(),
        query: ct.query.map(|q| q.to_string()),
        partitioning,
        replication: None,
        rebalance: None,
    })
}
