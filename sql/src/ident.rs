//! Names users give: any identifier SQL allows (quoted or not, any script)
//! names a table, column or index. Storage never uses them (it uses ids),
//! so the only names refused are empty ones, ones with control characters
//! and ones too long to show.

use datafusion::common::{Result, plan_err};

/// Longest name, in bytes (PostgreSQL allows 63, MySQL 64 characters).
pub const MAX_NAME_BYTES: usize = 255;

/// Checks a name of a `what` (table, column, index).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return plan_err!("a {what} name cannot be empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return plan_err!(
            "{what} name '{}…' is {} bytes long; the limit is {MAX_NAME_BYTES}",
            name.chars().take(40).collect::<String>(),
            name.len()
        );
    }
    if name.chars().any(char::is_control) {
        return plan_err!(
            "{what} name {name:?} contains a control character; names may hold any other \
             character (quote them: \"my name\")"
        );
    }
    Ok(())
}

/// The first name listed twice, if any.
pub fn first_duplicate<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = std::collections::HashSet::new();
    names.into_iter().find(|n| !seen.insert(*n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_printable_name_is_fine() {
        for name in ["t", "k k", "schlüssel", "値", "a\"b", "Mixed.Case", "1st"] {
            check_name("table", name).unwrap();
        }
        assert!(check_name("table", "").is_err());
        assert!(check_name("table", "a\nb").is_err());
        assert!(check_name("table", &"x".repeat(256)).is_err());
        assert_eq!(first_duplicate(["a", "b", "a"]), Some("a"));
        assert_eq!(first_duplicate(["a", "A"]), None);
    }
}
