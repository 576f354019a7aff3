//! Parameters of prepared statements: JDBC and ODBC write them `?`,
//! PostgreSQL and DataFusion `$1`, `$2`... A statement's `?` are numbered
//! in the order they appear, so that DataFusion binds either kind.

use datafusion::common::{DataFusionError, Result};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::text::Offsets;

/// `sql` with every `?` placeholder written `$n` (n counting from 1), and
/// how many parameters the statement takes. Mixing `?` with `$n` is
/// refused: which number a `?` would get is anyone's guess.
pub fn number_placeholders(sql: &str) -> Result<(String, usize)> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| DataFusionError::SQL(Box::new(e.into()), None))?;
    let offsets = Offsets::new(sql);
    let mut out = String::with_capacity(sql.len() + 8);
    let mut copied = 0;
    let (mut questions, mut numbered) = (0usize, 0usize);
    for t in &tokens {
        let Token::Placeholder(p) = &t.token else {
            continue;
        };
        if p == "?" {
            let start = offsets.of(t.span.start);
            out.push_str(&sql[copied..start]);
            questions += 1;
            out.push_str(&format!("${questions}"));
            copied = start + 1;
        } else if let Some(n) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            numbered = numbered.max(n);
        }
    }
    out.push_str(&sql[copied..]);
    if questions > 0 && numbered > 0 {
        return Err(DataFusionError::Plan(
            "the statement mixes ? and $n parameters; write all of them one way".into(),
        ));
    }
    Ok((out, questions.max(numbered)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_are_numbered_and_dollars_kept() {
        let (sql, n) = number_placeholders("INSERT INTO t VALUES (?, ?, '?')").unwrap();
        assert_eq!(sql, "INSERT INTO t VALUES ($1, $2, '?')");
        assert_eq!(n, 2);
        let (sql, n) = number_placeholders("SELECT * FROM t WHERE k = $2 AND v = $1 -- ?").unwrap();
        assert_eq!(sql, "SELECT * FROM t WHERE k = $2 AND v = $1 -- ?");
        assert_eq!(n, 2);
        let (sql, n) = number_placeholders("SELECT \"?\", 'é?' FROM t WHERE\n  x = ?").unwrap();
        assert_eq!(sql, "SELECT \"?\", 'é?' FROM t WHERE\n  x = $1");
        assert_eq!(n, 1);
        assert_eq!(number_placeholders("SELECT 1").unwrap().1, 0);
        assert!(number_placeholders("SELECT ?, $1").is_err());
    }
}
