//! Named places where a test makes the process die as a crash would there:
//! `TESSERA_FAILPOINT=<name>` aborts (no cleanup, like SIGKILL) the first
//! time the point is reached. Unset, a point costs one read of a static.
//!
//! | name                  | where                                              |
//! |-----------------------|----------------------------------------------------|
//! | `abort-after-decide`  | a write's decision is logged, no worker committed  |
//! | `abort-before-file-removal` | a table is dropped from the catalog, its files are all still on workers |
//! | `abort-after-split-copy` | a split or merge staged its copy of the parents, nothing is decided |
//! | `abort-after-split-decide` | a split or merge's decision is logged, no worker committed |

use std::sync::OnceLock;

fn configured() -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| std::env::var("TESSERA_FAILPOINT").ok())
        .as_deref()
}

/// Aborts the process if the failpoint `name` is set.
pub fn hit(name: &str) {
    if configured() == Some(name) {
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}
