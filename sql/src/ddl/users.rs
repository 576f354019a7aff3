//! Users and roles: `CREATE USER u PASSWORD '...' [ROLE admin | reader]`,
//! `ALTER USER u PASSWORD '...'`, `DROP USER [IF EXISTS] u`,
//! `GRANT admin | reader TO u`, `SHOW USERS`.

use datafusion::common::{Result, plan_err};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};
use serde::{Deserialize, Serialize};

use super::{Statement, expect_end, is_blank, non_blank, object_name, parser_err, word_is};
use crate::text::Offsets;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    /// Everything: DDL, writes, users, files on the server.
    Admin,
    /// Queries only.
    #[default]
    Reader,
}

impl UserRole {
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Admin => "admin",
            UserRole::Reader => "reader",
        }
    }
}

fn role(parser: &mut Parser) -> Result<UserRole> {
    match parser.next_token().token {
        Token::Word(w) if w.value.eq_ignore_ascii_case("admin") => Ok(UserRole::Admin),
        Token::Word(w) if w.value.eq_ignore_ascii_case("reader") => Ok(UserRole::Reader),
        other => plan_err!("the roles are admin and reader, not '{other}'"),
    }
}

fn password(parser: &mut Parser, user: &str) -> Result<String> {
    if !parser.parse_keyword(Keyword::PASSWORD) {
        return plan_err!("give the user a password: ... USER {user} PASSWORD '...'");
    }
    match parser.next_token().token {
        Token::SingleQuotedString(p) if !p.is_empty() => Ok(p),
        _ => plan_err!("the password is a non-empty string in single quotes"),
    }
}

/// A user statement, if `tokens` is one.
pub(super) fn parse_user_statement(tokens: &[TokenWithSpan]) -> Option<Result<Statement>> {
    let words = non_blank(tokens);
    let at = |i: usize, w: &str| words.get(i).is_some_and(|t| word_is(t, w));
    let user_statement = (at(0, "CREATE") || at(0, "ALTER") || at(0, "DROP")) && at(1, "USER")
        || at(0, "GRANT")
        || at(0, "SHOW") && at(1, "USERS");
    if !user_statement {
        return None;
    }
    Some(parse(tokens, &at))
}

fn parse(tokens: &[TokenWithSpan], at: &dyn Fn(usize, &str) -> bool) -> Result<Statement> {
    let mut parser = Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens.to_vec());
    if at(0, "SHOW") {
        parser.next_token();
        parser.next_token();
        expect_end(&mut parser)?;
        return Ok(Statement::ShowUsers);
    }
    if at(0, "GRANT") {
        parser.next_token();
        let role = role(&mut parser)?;
        if !parser.parse_keyword(Keyword::TO) {
            return plan_err!("GRANT {} TO user", role.as_str());
        }
        let user = object_name(&parser.parse_object_name(false).map_err(parser_err)?);
        expect_end(&mut parser)?;
        return Ok(Statement::Grant { role, user });
    }
    let verb = parser.next_token().token;
    parser.next_token();
    if word_is(&verb, "DROP") {
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = object_name(&parser.parse_object_name(false).map_err(parser_err)?);
        expect_end(&mut parser)?;
        return Ok(Statement::DropUser { name, if_exists });
    }
    let name = object_name(&parser.parse_object_name(false).map_err(parser_err)?);
    let password = password(&mut parser, &name)?;
    if word_is(&verb, "ALTER") {
        expect_end(&mut parser)?;
        return Ok(Statement::AlterUser { name, password });
    }
    let role = if parser.peek_token().token == Token::EOF
        || parser.peek_token().token == Token::SemiColon
    {
        None
    } else if word_is(&parser.next_token().token, "ROLE") {
        Some(role(&mut parser)?)
    } else {
        return plan_err!("CREATE USER {name} PASSWORD '...' [ROLE admin | reader]");
    };
    expect_end(&mut parser)?;
    Ok(Statement::CreateUser {
        name,
        password,
        role,
    })
}

/// `sql` with the password of a user statement written `'***'`: what the
/// query log and the server's log keep.
pub fn redact(sql: &str) -> std::borrow::Cow<'_, str> {
    let Ok(tokens) = super::tokenize(sql) else {
        return sql.into();
    };
    let words: Vec<&TokenWithSpan> = tokens.iter().filter(|t| !is_blank(&t.token)).collect();
    let offsets = Offsets::new(sql);
    let mut out = String::new();
    let mut copied = 0;
    for pair in words.windows(2) {
        if matches!(&pair[0].token, Token::Word(w) if w.keyword == Keyword::PASSWORD)
            && matches!(pair[1].token, Token::SingleQuotedString(_))
        {
            let start = offsets.of(pair[1].span.start);
            let end = offsets.of(pair[1].span.end);
            out.push_str(&sql[copied..start]);
            out.push_str("'***'");
            copied = end;
        }
    }
    if copied == 0 {
        return sql.into();
    }
    out.push_str(&sql[copied..]);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_statement;

    #[test]
    fn user_statements_parse() {
        assert_eq!(
            parse_statement("CREATE USER ana PASSWORD 's3cret'").unwrap(),
            Statement::CreateUser {
                name: "ana".into(),
                password: "s3cret".into(),
                role: None
            }
        );
        assert_eq!(
            parse_statement("create user \"Bo\" password 'x' role ADMIN;").unwrap(),
            Statement::CreateUser {
                name: "Bo".into(),
                password: "x".into(),
                role: Some(UserRole::Admin)
            }
        );
        assert_eq!(
            parse_statement("ALTER USER ana PASSWORD 'new'").unwrap(),
            Statement::AlterUser {
                name: "ana".into(),
                password: "new".into()
            }
        );
        assert_eq!(
            parse_statement("DROP USER IF EXISTS ana").unwrap(),
            Statement::DropUser {
                name: "ana".into(),
                if_exists: true
            }
        );
        assert_eq!(
            parse_statement("GRANT admin TO ana").unwrap(),
            Statement::Grant {
                role: UserRole::Admin,
                user: "ana".into()
            }
        );
        assert_eq!(parse_statement("SHOW USERS").unwrap(), Statement::ShowUsers);
        assert!(parse_statement("CREATE USER ana").is_err());
        assert!(parse_statement("CREATE USER ana PASSWORD ''").is_err());
        assert!(parse_statement("GRANT writer TO ana").is_err());
    }

    #[test]
    fn passwords_are_kept_out_of_logs() {
        assert_eq!(
            redact("CREATE USER ana PASSWORD 'it''s secret' ROLE admin"),
            "CREATE USER ana PASSWORD '***' ROLE admin"
        );
        assert_eq!(redact("SELECT 'password'"), "SELECT 'password'");
    }
}
