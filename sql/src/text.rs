//! From token locations back to the statement's own text. Tokens rendered
//! again lose how they were written (`'it''s'` becomes `'it's'`), so pieces
//! of a statement are cut out of the original instead.

use datafusion::sql::sqlparser::tokenizer::Location;

/// Byte offsets of token locations (1-based lines and character columns)
/// in one text.
pub struct Offsets<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Offsets<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, line_starts }
    }

    /// The byte offset of `loc`; the end of the text past its last line.
    pub fn of(&self, loc: Location) -> usize {
        let Some(start) = usize::try_from(loc.line)
            .ok()
            .and_then(|l| l.checked_sub(1))
            .and_then(|l| self.line_starts.get(l).copied())
        else {
            return self.text.len();
        };
        let column = usize::try_from(loc.column).unwrap_or(1).saturating_sub(1);
        self.text[start..]
            .char_indices()
            .nth(column)
            .map_or(self.text.len(), |(i, _)| start + i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;

    #[test]
    fn offsets_point_at_tokens() {
        let text = "SELECT 'é''s',\n  \"値 x\" FROM t";
        let tokens = Tokenizer::new(&GenericDialect {}, text)
            .tokenize_with_location()
            .unwrap();
        let offsets = Offsets::new(text);
        let starts: Vec<&str> = tokens
            .iter()
            .filter(|t| {
                !matches!(
                    t.token,
                    datafusion::sql::sqlparser::tokenizer::Token::Whitespace(_)
                )
            })
            .map(|t| &text[offsets.of(t.span.start)..offsets.of(t.span.end)])
            .collect();
        assert_eq!(starts, ["SELECT", "'é''s'", ",", "\"値 x\"", "FROM", "t"]);
    }
}
