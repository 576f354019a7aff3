//! `tessera run FILE`: a script's statements in order, with variables
//! (`-v name=value`, used as `:name` or `${name}`), `--echo`,
//! `--continue-on-error`, and one output file per statement with
//! `--output-dir`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use tessera_sql::split_statements;

use crate::ConnectArgs;
use crate::client::Client;
use crate::output::{Format, write_result};

pub struct RunArgs {
    pub to: ConnectArgs,
    pub format: Format,
    pub file: PathBuf,
    pub continue_on_error: bool,
    pub vars: Vec<(String, String)>,
    pub echo: bool,
    pub output_dir: Option<PathBuf>,
}

/// `name=value` from `-v`.
pub fn parse_var(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("-v {text}: write NAME=VALUE"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "-v {text}: a variable name is letters, digits and _"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `sql` with `${name}` and `:name` replaced by the variables' values,
/// outside quoted strings, quoted identifiers and comments. `${name}` of a
/// variable not set is an error; `:name` is left as it is (`::` casts too).
pub fn substitute(sql: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // Copied as they are: strings, quoted names and comments.
        let skip_to = match c {
            '\'' | '"' => {
                let mut j = i + 1;
                while j < chars.len() {
                    if chars[j] == c {
                        // A doubled quote stays inside.
                        if chars.get(j + 1) == Some(&c) {
                            j += 2;
                            continue;
                        }
                        break;
                    }
                    j += 1;
                }
                Some((j + 1).min(chars.len()))
            }
            '-' if chars.get(i + 1) == Some(&'-') => Some(
                (i..chars.len())
                    .find(|&j| chars[j] == '\n')
                    .unwrap_or(chars.len()),
            ),
            '/' if chars.get(i + 1) == Some(&'*') => Some(
                (i + 2..chars.len().saturating_sub(1))
                    .find(|&j| chars[j] == '*' && chars[j + 1] == '/')
                    .map_or(chars.len(), |j| j + 2),
            ),
            _ => None,
        };
        if let Some(end) = skip_to {
            out.extend(&chars[i..end]);
            i = end;
            continue;
        }
        if c == '$' && chars.get(i + 1) == Some(&'{') {
            let close = (i + 2..chars.len()).find(|&j| chars[j] == '}');
            if let Some(close) = close {
                let name: String = chars[i + 2..close].iter().collect();
                let value = vars.get(&name).ok_or_else(|| {
                    format!("variable '{name}' is not set; give it with -v {name}=VALUE")
                })?;
                out.push_str(value);
                i = close + 1;
                continue;
            }
        }
        if c == ':'
            && (i == 0 || chars[i - 1] != ':')
            && chars.get(i + 1).is_some_and(|n| is_ident(*n) && *n != ':')
        {
            let end = (i + 1..chars.len())
                .find(|&j| !is_ident(chars[j]))
                .unwrap_or(chars.len());
            let name: String = chars[i + 1..end].iter().collect();
            if let Some(value) = vars.get(&name) {
                out.push_str(value);
                i = end;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    Ok(out)
}

fn extension(format: Format) -> &'static str {
    match format {
        Format::Table => "txt",
        Format::Csv => "csv",
        Format::Json => "json",
        Format::Arrow => "arrow",
    }
}

pub async fn run(args: RunArgs) -> Result<(), String> {
    let mut script = String::new();
    if args.file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut script)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
    } else {
        script = std::fs::read_to_string(&args.file)
            .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    }
    let statements = split_statements(&script).map_err(|e| e.to_string())?;
    if args.format == Format::Arrow && args.output_dir.is_none() && statements.len() > 1 {
        return Err(format!(
            "--format arrow writes one stream, and this script has {} statements: give \
             --output-dir DIR for one file per statement",
            statements.len()
        ));
    }
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let vars: BTreeMap<String, String> = args.vars.iter().cloned().collect();
    let mut client = Client::connect_as(&args.to).await?;
    let stdout = std::io::stdout();
    let mut failed: Vec<u64> = vec![];
    for (n, s) in statements.iter().enumerate() {
        let ran = async {
            let sql = substitute(&s.sql, &vars)?;
            if args.echo {
                let mut out = stdout.lock();
                writeln!(out, "{sql};").map_err(|e| e.to_string())?;
            }
            let result = client.query(&sql).await?;
            match &args.output_dir {
                Some(dir) => {
                    let path = dir.join(format!("{:03}.{}", n + 1, extension(args.format)));
                    let mut file = std::fs::File::create(&path)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                    write_result(&mut file, &result, args.format)
                }
                None => {
                    let mut out = stdout.lock();
                    write_result(&mut out, &result, args.format)?;
                    out.flush().map_err(|e| e.to_string())
                }
            }
        };
        if let Err(e) = ran.await {
            let message = format!("statement at line {} failed: {e}", s.line);
            if !args.continue_on_error {
                return Err(message);
            }
            eprintln!("Error: {message}");
            failed.push(s.line);
        }
    }
    if !failed.is_empty() {
        let lines: Vec<String> = failed.iter().map(u64::to_string).collect();
        return Err(format!(
            "{} of {} statements failed (at lines {})",
            failed.len(),
            statements.len(),
            lines.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_replaced_outside_strings_and_comments() {
        let vars: BTreeMap<String, String> = [("t", "orders"), ("n", "10")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sub = |s: &str| substitute(s, &vars);
        assert_eq!(
            sub("SELECT * FROM ${t} LIMIT :n").unwrap(),
            "SELECT * FROM orders LIMIT 10"
        );
        assert_eq!(
            sub("SELECT ':n ${t}', \"a:n\" -- :n\n, x::int, :other /* ${t} */").unwrap(),
            "SELECT ':n ${t}', \"a:n\" -- :n\n, x::int, :other /* ${t} */"
        );
        assert_eq!(
            sub("SELECT 'it''s :n', :n").unwrap(),
            "SELECT 'it''s :n', 10"
        );
        let e = sub("SELECT ${missing}").unwrap_err();
        assert!(e.contains("-v missing=VALUE"), "{e}");
        assert!(parse_var("a=b=c").is_ok_and(|(k, v)| k == "a" && v == "b=c"));
        assert!(parse_var("no-equals").is_err());
        assert!(parse_var("bad name=1").is_err());
    }
}
