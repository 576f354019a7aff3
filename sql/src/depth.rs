//! A bound on how deeply a statement's expressions nest, checked on its
//! tokens before anything recursive (parser, planner, optimizer, plan
//! encoding, execution) walks it.
//!
//! DataFusion parses `1 + 1 + ... + 1` without recursion but plans and runs
//! it as a tree as deep as the chain is long, through recursive code (clone,
//! display, evaluation) that no stack check guards: a long enough chain
//! overflows a thread's stack and aborts the process. Like DuckDB's
//! `max_expression_depth` (also 1,000 by default), the statement is refused
//! with an error instead.

use datafusion::common::{Result, plan_err};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

/// The deepest expression nesting a statement may have.
pub const MAX_EXPRESSION_DEPTH: usize = 1_000;

/// Keywords that start a new clause or list item: operators before them
/// belong to a finished expression.
const RESETS: &[Keyword] = &[
    Keyword::SELECT,
    Keyword::FROM,
    Keyword::WHERE,
    Keyword::GROUP,
    Keyword::HAVING,
    Keyword::ORDER,
    Keyword::LIMIT,
    Keyword::OFFSET,
    Keyword::UNION,
    Keyword::INTERSECT,
    Keyword::EXCEPT,
    Keyword::JOIN,
    Keyword::ON,
    Keyword::USING,
    Keyword::WHEN,
    Keyword::THEN,
    Keyword::ELSE,
    Keyword::END,
    Keyword::AS,
    Keyword::VALUES,
    Keyword::SET,
];

/// Keywords that join two expressions into one a level deeper.
const OPERATORS: &[Keyword] = &[
    Keyword::AND,
    Keyword::OR,
    Keyword::LIKE,
    Keyword::ILIKE,
    Keyword::IS,
    Keyword::BETWEEN,
];

fn is_operator(token: &Token) -> bool {
    match token {
        Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::Mod
        | Token::StringConcat
        | Token::Eq
        | Token::DoubleEq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Ampersand
        | Token::Pipe
        | Token::Caret
        | Token::ShiftLeft
        | Token::ShiftRight
        | Token::DoubleColon => true,
        Token::Word(w) => w.quote_style.is_none() && OPERATORS.contains(&w.keyword),
        _ => false,
    }
}

/// An upper estimate of the statement's deepest expression: open
/// parentheses plus the operators chained at each level on the way.
pub fn expression_depth(tokens: &[TokenWithSpan]) -> usize {
    // Operators chained so far at each open parenthesis level.
    let mut levels: Vec<usize> = vec![0];
    let mut chained = 0usize;
    let mut deepest = 0usize;
    for t in tokens {
        match &t.token {
            Token::LParen => levels.push(0),
            Token::RParen if levels.len() > 1 => {
                chained -= levels.pop().unwrap_or(0);
            }
            Token::Comma | Token::SemiColon => {
                if let Some(top) = levels.last_mut() {
                    chained -= *top;
                    *top = 0;
                }
            }
            Token::Word(w) if w.quote_style.is_none() && RESETS.contains(&w.keyword) => {
                if let Some(top) = levels.last_mut() {
                    chained -= *top;
                    *top = 0;
                }
            }
            tok if is_operator(tok) => {
                if let Some(top) = levels.last_mut() {
                    *top += 1;
                    chained += 1;
                }
            }
            _ => {}
        }
        deepest = deepest.max(levels.len() - 1 + chained);
    }
    deepest
}

/// Refuses a statement nested deeper than [`MAX_EXPRESSION_DEPTH`].
pub fn check_depth(tokens: &[TokenWithSpan]) -> Result<()> {
    let depth = expression_depth(tokens);
    if depth > MAX_EXPRESSION_DEPTH {
        return plan_err!(
            "the statement nests expressions about {depth} levels deep; the limit is \
             {MAX_EXPRESSION_DEPTH}. Split long chains of operators (for example sum the terms \
             in a subquery, or use IN (...) instead of many ORs)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;

    fn depth(sql: &str) -> usize {
        let tokens = Tokenizer::new(&GenericDialect {}, sql)
            .tokenize_with_location()
            .unwrap();
        expression_depth(&tokens)
    }

    #[test]
    fn chains_and_parentheses_count_lists_do_not() {
        assert_eq!(depth("SELECT 1"), 0);
        assert_eq!(depth("SELECT 1 + 2 * 3"), 2);
        assert_eq!(depth("SELECT (1 + 2) * 3"), 2);
        let sum = vec!["1"; 5000].join(" + ");
        assert_eq!(depth(&format!("SELECT {sum}")), 4999);
        let list: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
        assert_eq!(depth(&format!("SELECT 1 IN ({})", list.join(", "))), 1);
        assert_eq!(depth("SELECT a + 1, b + 1 FROM t WHERE a = 1 AND b = 2"), 3);
        let nested = format!("SELECT {}1{}", "(".repeat(2000), ")".repeat(2000));
        assert_eq!(depth(&nested), 2000);
        // Unbalanced input (a parse error later) does not underflow.
        assert_eq!(depth("SELECT 1 + 1) + 1)"), 2);
    }
}
