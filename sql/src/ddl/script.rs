//! Scripts: statements split at top-level `;`, each cut from the script's
//! own text with the line it starts on.

use datafusion::common::Result;
use datafusion::sql::sqlparser::tokenizer::Token;

use super::tokenize;
use crate::text::Offsets;

/// One statement of a script, with the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptStatement {
    pub line: u64,
    pub sql: String,
}

/// Splits a script into statements at top-level `;`, keeping each
/// statement's starting line. Comments and blank statements are dropped.
pub fn split_statements(script: &str) -> Result<Vec<ScriptStatement>> {
    let tokens = tokenize(script)?;
    let offsets = Offsets::new(script);
    let mut out = vec![];
    // Where the current statement's first code token starts, and its line.
    let mut current: Option<(usize, u64)> = None;
    let mut finish = |current: &mut Option<(usize, u64)>, end: usize| {
        if let Some((start, line)) = current.take() {
            out.push(ScriptStatement {
                line,
                sql: script[start..end].trim().to_string(),
            });
        }
    };
    for t in &tokens {
        match &t.token {
            Token::SemiColon => finish(&mut current, offsets.of(t.span.start)),
            Token::Whitespace(_) => {}
            _ if current.is_none() => {
                current = Some((offsets.of(t.span.start), t.span.start.line));
            }
            _ => {}
        }
    }
    finish(&mut current, script.len());
    Ok(out)
}

/// Whether `text` is one or more whole statements: its last token other
/// than whitespace and comments is a `;` (one inside a string literal,
/// a quoted name or a comment does not count). Text the lexer stops at
/// for want of more (an open string or comment) is not whole; text it
/// refuses otherwise is, so that the server says what is wrong with it.
pub fn ends_statement(text: &str) -> bool {
    match tokenize(text) {
        Ok(tokens) => tokens
            .iter()
            .rev()
            .find(|t| !super::is_blank(&t.token))
            .is_some_and(|t| t.token == Token::SemiColon),
        Err(e) => {
            let e = e.to_string();
            !(e.contains("Unterminated") || e.contains("EOF"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_end_where_the_lexer_says() {
        for whole in [
            "SELECT 1;",
            "SELECT 1; -- note",
            "SELECT 1 /* a; b */ ;\n",
            "SELECT ';\n';",
            "SELECT 1;\nSELECT 2;",
        ] {
            assert!(ends_statement(whole), "{whole}");
        }
        for open in [
            "SELECT 1",
            "SELECT 'a;",
            "SELECT 'a;\n",
            "SELECT 1 -- ;",
            "SELECT 1 /* ; ",
            "SELECT \"a;",
            "",
        ] {
            assert!(!ends_statement(open), "{open}");
        }
    }

    #[test]
    fn splits_scripts_with_lines() {
        let s = split_statements("-- c\nSELECT 1;\n\nSELECT ';'\n  ;  \n-- end\n").unwrap();
        assert_eq!(
            s,
            vec![
                ScriptStatement {
                    line: 2,
                    sql: "SELECT 1".into()
                },
                ScriptStatement {
                    line: 4,
                    sql: "SELECT ';'".into()
                },
            ]
        );
    }

    #[test]
    fn statements_keep_their_quoting() {
        let s = split_statements("SELECT 'it''s', \"a \"\"b\"\"\" FROM t; SELECT 2").unwrap();
        assert_eq!(s[0].sql, "SELECT 'it''s', \"a \"\"b\"\"\" FROM t");
    }
}
