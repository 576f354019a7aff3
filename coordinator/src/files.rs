//! Files on the server's own disk that clients may name: `CREATE EXTERNAL
//! TABLE ... LOCATION` reads only under the operator's `--import-dir`s,
//! `COPY ... TO` writes only under the `--export-dir`s (none by default),
//! and an external table is never written through. Only admins run
//! either (see `engine/access.rs`).

use std::path::{Component, Path, PathBuf};

use datafusion::common::Result;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use tessera_worker::ErrorKind;

/// The directories clients may read files from and write files to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileDirs {
    import: Vec<PathBuf>,
    export: Vec<PathBuf>,
}

/// No directories: clients read and write no files.
pub static NO_FILES: FileDirs = FileDirs {
    import: Vec::new(),
    export: Vec::new(),
};

fn resolve_dir(dir: &Path, flag: &str) -> Result<PathBuf> {
    let resolved = std::fs::canonicalize(dir).map_err(|e| {
        ErrorKind::InvalidArgument.error(format!(
            "{flag} {}: {e}; give a directory that exists",
            dir.display()
        ))
    })?;
    if !resolved.is_dir() {
        return Err(ErrorKind::InvalidArgument
            .error(format!("{flag} {} is not a directory", dir.display())));
    }
    Ok(resolved)
}

impl FileDirs {
    /// Clients may read under `import` and write under `export` (each
    /// resolved now: a directory that exists, symbolic links followed).
    pub fn new(import: &[PathBuf], export: &[PathBuf]) -> Result<Self> {
        Ok(Self {
            import: import
                .iter()
                .map(|d| resolve_dir(d, "--import-dir"))
                .collect::<Result<_>>()?,
            export: export
                .iter()
                .map(|d| resolve_dir(d, "--export-dir"))
                .collect::<Result<_>>()?,
        })
    }

    pub fn import_dirs(&self) -> &[PathBuf] {
        &self.import
    }

    pub fn export_dirs(&self) -> &[PathBuf] {
        &self.export
    }

    /// Refuses to read `location` unless it is under an import directory.
    pub fn check_import(&self, location: &str) -> Result<()> {
        self.check(location, Access::Read)
    }

    /// Refuses a plan that reads or writes files outside the allowed
    /// directories, or writes into an external table (`external` says
    /// whether a table name is one).
    pub fn check_plan(&self, plan: &LogicalPlan, external: impl Fn(&str) -> bool) -> Result<()> {
        let mut refused = None;
        plan.apply(|node| {
            let checked = match node {
                LogicalPlan::Copy(copy) => self.check(&copy.output_url, Access::Write),
                LogicalPlan::Ddl(DdlStatement::CreateExternalTable(ext)) => ext
                    .locations
                    .iter()
                    .try_for_each(|l| self.check(l, Access::Read)),
                LogicalPlan::Dml(dml) if external(dml.table_name.table()) => {
                    Err(ErrorKind::InvalidArgument.error(format!(
                        "'{}' is an external table, which Tessera reads but does not write; \
                         write its files with COPY ... TO, or load the rows into a table",
                        dml.table_name.table()
                    )))
                }
                _ => Ok(()),
            };
            match checked {
                Ok(()) => Ok(TreeNodeRecursion::Continue),
                Err(e) => {
                    refused = Some(e);
                    Ok(TreeNodeRecursion::Stop)
                }
            }
        })?;
        refused.map_or(Ok(()), Err)
    }

    fn check(&self, location: &str, access: Access) -> Result<()> {
        let (dirs, flag, what) = match access {
            Access::Read => (&self.import, "--import-dir", "LOCATION"),
            Access::Write => (&self.export, "--export-dir", "COPY ... TO"),
        };
        if dirs.is_empty() {
            return Err(ErrorKind::PermissionDenied.error(format!(
                "{what} '{location}': this server {} no files for clients; its operator allows \
                 a directory with {flag} DIR",
                match access {
                    Access::Read => "reads",
                    Access::Write => "writes",
                }
            )));
        }
        let path = resolve(location).map_err(|why| {
            ErrorKind::InvalidArgument.error(format!("{what} '{location}': {why}"))
        })?;
        if dirs.iter().any(|d| path.starts_with(d)) {
            return Ok(());
        }
        let allowed: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        Err(ErrorKind::PermissionDenied.error(format!(
            "{what} '{location}' is outside the directories this server allows ({flag}): {}",
            allowed.join(", ")
        )))
    }
}

#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

/// `location` as an absolute path on this machine with symbolic links
/// and `..` resolved as far as it exists (a file to be written, or a glob,
/// exists only in part); the rest may not climb with `..`.
fn resolve(location: &str) -> std::result::Result<PathBuf, String> {
    let local = match location.split_once("://") {
        Some(("file", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "{scheme}:// locations are not served; name a file on the server"
            ));
        }
        None => location,
    };
    let absolute = std::path::absolute(local).map_err(|e| e.to_string())?;
    let mut existing = absolute.as_path();
    let mut rest = vec![];
    while std::fs::symlink_metadata(existing).is_err() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        rest.push(name.to_owned());
        existing = parent;
    }
    let mut resolved = std::fs::canonicalize(existing).map_err(|e| e.to_string())?;
    for name in rest.iter().rev() {
        let part = Path::new(name);
        if part
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err("a path that does not exist yet may not contain '..'".to_string());
        }
        resolved.push(part);
    }
    if absolute
        .strip_prefix(existing)
        .is_ok_and(|r| r.components().any(|c| matches!(c, Component::ParentDir)))
    {
        return Err("a path that does not exist yet may not contain '..'".to_string());
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_or_out() {
        let root = tempfile::tempdir().unwrap();
        let inside = root.path().join("in");
        let outside = root.path().join("out");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.parquet"), b"x").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&outside, inside.join("link")).unwrap();
        let dirs =
            FileDirs::new(std::slice::from_ref(&inside), std::slice::from_ref(&inside)).unwrap();
        let at = |p: &Path| p.display().to_string();

        assert!(
            dirs.check(&at(&inside.join("new/out.parquet")), Access::Write)
                .is_ok()
        );
        assert!(
            dirs.check(&at(&inside.join("*.parquet")), Access::Read)
                .is_ok()
        );
        assert!(
            dirs.check(&format!("file://{}", at(&inside.join("a"))), Access::Write)
                .is_ok()
        );
        for bad in [
            at(&outside.join("secret.parquet")),
            at(&inside.join("../out/secret.parquet")),
            at(&inside.join("new/../../out/x.parquet")),
            "s3://bucket/x.parquet".to_string(),
            "/etc/passwd".to_string(),
        ] {
            assert!(dirs.check(&bad, Access::Read).is_err(), "{bad}");
            assert!(dirs.check(&bad, Access::Write).is_err(), "{bad}");
        }
        #[cfg(unix)]
        assert!(
            dirs.check(&at(&inside.join("link/secret.parquet")), Access::Read)
                .is_err(),
            "a link out of the directory is followed"
        );
        let none = FileDirs::default();
        let e = none
            .check(&at(&inside.join("x")), Access::Write)
            .unwrap_err();
        assert!(e.to_string().contains("--export-dir"), "{e}");
    }
}
