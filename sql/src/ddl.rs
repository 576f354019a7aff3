//! Tessera's statements on top of sqlparser: the partitioning clause of
//! `CREATE TABLE` (`partition.rs`), `CREATE INDEX` (`index.rs`), `SHOW
//! PARTITIONS`, `SHOW TABLES`, `SHOW WORKERS`, `ALTER WORKER`, `DESCRIBE`,
//! `COMPACT TABLE` and `DROP TABLE`. Everything else is left to
//! DataFusion's SQL planner.
//!
//! ```sql
//! CREATE TABLE t (k BIGINT, v VARCHAR) PARTITION BY HASH (k) PARTITIONS 8
//! CREATE TABLE t (ts BIGINT, v VARCHAR) PARTITION BY RANGE (ts) SPLIT AT (1000, 2000)
//! CREATE TABLE t (sensor INT, ts TIMESTAMP) PARTITION BY HASH (sensor) PARTITIONS 8 CLUSTER BY (ts)
//! CREATE TABLE t PARTITION BY HASH (k) PARTITIONS 4 AS SELECT ...
//! ```

use datafusion::common::{DataFusionError, Result, plan_datafusion_err, plan_err};
use datafusion::sql::sqlparser::ast::{self, ObjectName, ObjectType};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::strategy::Strategy;

mod alter_table;
mod create_table;
mod index;
mod partition;
mod rebalance;
mod script;
mod users;

pub use create_table::CreateTable;
use create_table::{parse_create_table, take_rebalance_clause, take_replicas_clause};
pub use index::CreateIndex;
use index::parse_create_index;
pub use partition::{PartitionSpec, key_bound};
use rebalance::parse_rebalance_statement;
pub use script::{ScriptStatement, ends_statement, split_statements};
use users::parse_user_statement;
pub use users::{UserRole, redact};

/// A statement as the coordinator dispatches it.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    CreateTable(CreateTable),
    DropTable {
        name: String,
        if_exists: bool,
    },
    ShowTables,
    ShowPartitions {
        table: String,
    },
    Describe {
        table: String,
    },
    CreateIndex(CreateIndex),
    DropIndex {
        name: String,
        if_exists: bool,
    },
    ShowIndexes {
        table: Option<String>,
    },
    /// `COMPACT TABLE t`: merge the small files of its partitions.
    Compact {
        table: String,
    },
    /// `SHOW WORKERS`: every worker, its state and what it holds.
    ShowWorkers,
    /// `ALTER TABLE t SET REPLICAS r`: copies added or removed.
    SetReplicas {
        table: String,
        replicas: u32,
    },
    /// `ALTER TABLE t SET REBALANCE FIXED | DYNAMIC ... | PROPORTIONAL ...`.
    SetRebalance {
        table: String,
        strategy: Strategy,
    },
    /// `ALTER TABLE t SPLIT PARTITION id [AT v]`: the partition becomes
    /// two, at `v` (a RANGE table's key) or, without it, at the median
    /// key of its rows (RANGE) or the middle of its hash slice (HASH).
    SplitPartition {
        table: String,
        partition: u32,
        at: Option<Box<ast::Expr>>,
    },
    /// `ALTER TABLE t MERGE PARTITIONS a, b`: two neighbours in key order
    /// become one.
    MergePartitions {
        table: String,
        a: u32,
        b: u32,
    },
    /// `ALTER WORKER id DRAIN | ACTIVATE | DECOMMISSION`.
    AlterWorker {
        id: String,
        action: WorkerAction,
    },
    /// `CREATE USER u PASSWORD '...' [ROLE admin | reader]`.
    CreateUser {
        name: String,
        password: String,
        role: Option<UserRole>,
    },
    /// `ALTER USER u PASSWORD '...'`.
    AlterUser {
        name: String,
        password: String,
    },
    /// `DROP USER [IF EXISTS] u`.
    DropUser {
        name: String,
        if_exists: bool,
    },
    /// `GRANT admin | reader TO u`: the user's role from now on.
    Grant {
        role: UserRole,
        user: String,
    },
    /// `SHOW USERS`.
    ShowUsers,
    /// `COPY t FROM 'path' [WITH] [(FORMAT csv|parquet|json, HEADER [b],
    /// DELIMITER 'c')]`: the rows of files on the server into a table.
    CopyFrom {
        table: String,
        path: String,
        /// Option names upper-cased, values as written (`HEADER` alone: "true").
        options: Vec<(String, String)>,
    },
    /// `CANCEL QUERY 'id'`: stop a running query (ids in `tessera.queries`).
    CancelQuery {
        id: String,
    },
    /// `EXPLAIN REBALANCE [t]`: the moves that would even the workers out.
    ExplainRebalance {
        table: Option<String>,
    },
    /// `REBALANCE APPLY [t]`: run that plan in the background.
    RebalanceApply {
        table: Option<String>,
    },
    /// `SHOW REBALANCE`: the steps of the running (or last) rebalance.
    ShowRebalance,
    /// `REBALANCE CANCEL`: stop after the running steps.
    RebalanceCancel,
    /// Anything else, for DataFusion.
    Sql(String),
}

/// What `ALTER WORKER` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerAction {
    Drain,
    Activate,
    Decommission,
}

fn parser_err(e: ParserError) -> DataFusionError {
    DataFusionError::SQL(Box::new(e), None)
}

/// Normalises an identifier as DataFusion does: unquoted names fold to lower case.
fn ident_name(ident: &ast::Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

fn object_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(ident_name)
        .collect::<Vec<_>>()
        .join(".")
}

fn is_word(t: &Token, kw: Keyword) -> bool {
    matches!(t, Token::Word(w) if w.keyword == kw && w.quote_style.is_none())
}

fn is_blank(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

/// A statement's tokens without the whitespace.
fn non_blank(tokens: &[TokenWithSpan]) -> Vec<&Token> {
    tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !is_blank(t))
        .collect()
}

/// Whether `t` is the unquoted word `w`, in any case.
fn word_is(t: &Token, w: &str) -> bool {
    matches!(t, Token::Word(x) if x.value.eq_ignore_ascii_case(w) && x.quote_style.is_none())
}

fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>> {
    Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| plan_datafusion_err!("{e}"))
}

/// Classifies one statement.
pub fn parse_statement(sql: &str) -> Result<Statement> {
    let tokens = tokenize(sql)?;
    crate::depth::check_depth(&tokens)?;
    let words = non_blank(&tokens);
    let kw = |i: usize, k: Keyword| words.get(i).is_some_and(|t| is_word(t, k));

    if let Some(user) = parse_user_statement(&tokens) {
        return user;
    }
    if let Some(rebalance) = parse_rebalance_statement(&tokens) {
        return rebalance;
    }
    if kw(0, Keyword::SHOW) && kw(1, Keyword::TABLES) && words.len() == 2 {
        return Ok(Statement::ShowTables);
    }
    if kw(0, Keyword::SHOW) && kw(1, Keyword::PARTITIONS) {
        let mut parser =
            Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens[..].to_vec());
        parser
            .expect_keywords(&[Keyword::SHOW, Keyword::PARTITIONS])
            .map_err(parser_err)?;
        let _ = parser.parse_keyword(Keyword::FROM);
        let name = parser.parse_object_name(false).map_err(parser_err)?;
        expect_end(&mut parser)?;
        return Ok(Statement::ShowPartitions {
            table: object_name(&name),
        });
    }
    if (kw(0, Keyword::DESCRIBE) || kw(0, Keyword::DESC)) && words.len() >= 2 {
        let mut parser = Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens.clone());
        parser.next_token();
        let _ = parser.parse_keyword(Keyword::TABLE);
        let name = parser.parse_object_name(false).map_err(parser_err)?;
        expect_end(&mut parser)?;
        return Ok(Statement::Describe {
            table: object_name(&name),
        });
    }
    if kw(0, Keyword::DROP) && kw(1, Keyword::TABLE) {
        let stmt = Parser::new(&GenericDialect {})
            .with_tokens_with_locations(tokens)
            .parse_statement()
            .map_err(parser_err)?;
        if let ast::Statement::Drop {
            object_type: ObjectType::Table,
            if_exists,
            names,
            ..
        } = stmt
        {
            if names.len() != 1 {
                return plan_err!("DROP TABLE takes one table at a time");
            }
            return Ok(Statement::DropTable {
                name: object_name(&names[0]),
                if_exists,
            });
        }
        return plan_err!("could not parse DROP TABLE");
    }
    let word = |i: usize, w: &str| {
        words
            .get(i)
            .is_some_and(|t| matches!(t, Token::Word(x) if x.value.eq_ignore_ascii_case(w)))
    };
    if kw(0, Keyword::SHOW) && (word(1, "INDEXES") || kw(1, Keyword::INDEX)) {
        let mut parser = Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens);
        parser.next_token();
        parser.next_token();
        let table = if parser.parse_keyword(Keyword::ON) || parser.parse_keyword(Keyword::FROM) {
            Some(object_name(
                &parser.parse_object_name(false).map_err(parser_err)?,
            ))
        } else {
            None
        };
        expect_end(&mut parser)?;
        return Ok(Statement::ShowIndexes { table });
    }
    let ends_at = |n: usize| {
        words.len() == n || (words.len() == n + 1 && matches!(words[n], Token::SemiColon))
    };
    if kw(0, Keyword::SHOW) && word(1, "WORKERS") && ends_at(2) {
        return Ok(Statement::ShowWorkers);
    }
    if kw(0, Keyword::ALTER)
        && kw(1, Keyword::TABLE)
        && let Some(statement) = alter_table::parse_alter_table(tokens.clone())?
    {
        return Ok(statement);
    }
    if kw(0, Keyword::ALTER) && word(1, "WORKER") {
        let mut parser = Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens);
        parser.next_token();
        parser.next_token();
        let id = match parser.next_token().token {
            Token::Word(w) => w.value,
            Token::SingleQuotedString(s) => s,
            other => {
                return plan_err!(
                    "ALTER WORKER takes a worker id (SHOW WORKERS lists them), not '{other}'"
                );
            }
        };
        let action = match parser.next_token().token {
            Token::Word(w) if w.value.eq_ignore_ascii_case("DRAIN") => WorkerAction::Drain,
            Token::Word(w) if w.value.eq_ignore_ascii_case("ACTIVATE") => WorkerAction::Activate,
            Token::Word(w) if w.value.eq_ignore_ascii_case("DECOMMISSION") => {
                WorkerAction::Decommission
            }
            other => {
                return plan_err!(
                    "ALTER WORKER {id} takes DRAIN, ACTIVATE or DECOMMISSION, not '{other}'"
                );
            }
        };
        expect_end(&mut parser)?;
        return Ok(Statement::AlterWorker { id, action });
    }
    // COPY t FROM ...; COPY (query) TO and COPY t TO are DataFusion's.
    if kw(0, Keyword::COPY) && matches!(words.get(1), Some(Token::Word(_))) && kw(2, Keyword::FROM)
    {
        return parse_copy_from(tokens);
    }
    if word(0, "CANCEL") && word(1, "QUERY") {
        let mut parser = Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens);
        parser.next_token();
        parser.next_token();
        let id = match parser.next_token().token {
            Token::SingleQuotedString(s) => s,
            other => {
                return plan_err!(
                    "CANCEL QUERY takes a query id in quotes, as SELECT query_id FROM \
                     tessera.queries WHERE status = 'running' shows it, not '{other}'"
                );
            }
        };
        expect_end(&mut parser)?;
        return Ok(Statement::CancelQuery { id });
    }
    if word(0, "COMPACT") {
        let mut parser = Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens);
        parser.next_token();
        if !parser.parse_keyword(Keyword::TABLE) {
            return plan_err!("COMPACT takes a table: COMPACT TABLE name");
        }
        let table = object_name(&parser.parse_object_name(false).map_err(parser_err)?);
        expect_end(&mut parser)?;
        return Ok(Statement::Compact { table });
    }
    if kw(0, Keyword::DROP) && kw(1, Keyword::INDEX) {
        let mut parser = Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens);
        parser.next_token();
        parser.next_token();
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = object_name(&parser.parse_object_name(false).map_err(parser_err)?);
        expect_end(&mut parser)?;
        return Ok(Statement::DropIndex { name, if_exists });
    }
    if kw(0, Keyword::CREATE) && kw(1, Keyword::UNIQUE) && kw(2, Keyword::INDEX) {
        return plan_err!(
            "UNIQUE indexes are not supported: Tessera does not enforce uniqueness across \
             partitions. Create a plain index (CREATE INDEX ...) and check for duplicates with \
             SELECT col, count(*) ... GROUP BY col HAVING count(*) > 1"
        );
    }
    if kw(0, Keyword::CREATE) && kw(1, Keyword::INDEX) {
        return parse_create_index(tokens).map(Statement::CreateIndex);
    }
    let create_table = kw(0, Keyword::CREATE)
        && (kw(1, Keyword::TABLE)
            || (kw(1, Keyword::OR) && kw(2, Keyword::REPLACE) && kw(3, Keyword::TABLE)));
    if create_table {
        let (sql, replication) = take_replicas_clause(sql, &tokens)?;
        let (sql, rebalance) = take_rebalance_clause(&sql, &tokenize(&sql)?)?;
        let tokens = tokenize(&sql)?;
        let mut ct = parse_create_table(&sql, tokens)?;
        ct.replication = replication;
        ct.rebalance = rebalance;
        return Ok(Statement::CreateTable(ct));
    }
    Ok(Statement::Sql(sql.to_string()))
}

fn parse_copy_from(tokens: Vec<TokenWithSpan>) -> Result<Statement> {
    let mut parser = Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens);
    parser.next_token();
    let table = object_name(&parser.parse_object_name(false).map_err(parser_err)?);
    parser.next_token();
    let path = match parser.next_token().token {
        Token::SingleQuotedString(s) => s,
        other => {
            return plan_err!(
                "COPY {table} FROM takes a path in quotes: COPY {table} FROM '/data/file.csv', \
                 not {other}"
            );
        }
    };
    let _ = parser.parse_keyword(Keyword::WITH);
    let mut options = vec![];
    if parser.consume_token(&Token::LParen) {
        loop {
            let name = match parser.next_token().token {
                Token::Word(w) => w.value.to_ascii_uppercase(),
                other => return plan_err!("COPY FROM options are NAME value pairs, not {other}"),
            };
            let value = match parser.peek_token().token {
                Token::Comma | Token::RParen => "true".to_string(),
                _ => match parser.next_token().token {
                    Token::Word(w) => w.value,
                    Token::SingleQuotedString(s) => s,
                    Token::Number(n, _) => n,
                    other => return plan_err!("COPY FROM option {name}: {other} is no value"),
                },
            };
            options.push((name, value));
            if parser.consume_token(&Token::RParen) {
                break;
            }
            if !parser.consume_token(&Token::Comma) {
                return plan_err!("COPY FROM options are separated by commas and end with ')'");
            }
        }
    }
    expect_end(&mut parser)?;
    Ok(Statement::CopyFrom {
        table,
        path,
        options,
    })
}

fn expect_end(parser: &mut Parser) -> Result<()> {
    let _ = parser.consume_token(&Token::SemiColon);
    match parser.peek_token().token {
        Token::EOF => Ok(()),
        other => plan_err!("unexpected '{other}' at the end of the statement"),
    }
}

/// Consumes the next token if it is the (non-reserved) word `word`.
fn parse_word(p: &mut Parser, word: &str) -> bool {
    match p.peek_token().token {
        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word) => {
            p.next_token();
            true
        }
        _ => false,
    }
}

fn column_list(p: &mut Parser) -> Result<Vec<String>> {
    p.expect_token(&Token::LParen).map_err(parser_err)?;
    let idents = p
        .parse_comma_separated(Parser::parse_identifier)
        .map_err(parser_err)?;
    p.expect_token(&Token::RParen).map_err(parser_err)?;
    Ok(idents.iter().map(ident_name).collect())
}

#[cfg(test)]
mod tests;
