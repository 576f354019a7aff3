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

#[cfg(test)]
mod tests {
    use super::*;

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
