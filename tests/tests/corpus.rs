//! A public sqllogictest corpus over hash-partitioned tables, compared with
//! single-process DataFusion record by record. Not part of CI (it takes
//! minutes per file); run it with, for example:
//!
//! ```text
//! TESSERA_CORPUS="path/to/sqllogictest/test/select1.test path/to/test/index/in/10" \
//!   cargo test -p tessera-tests --test corpus -- --ignored --nocapture
//! ```
//!
//! `TESSERA_BIN` picks the `tessera` binary to test (default: the one built
//! beside this test). Every record DataFusion passes must pass on Tessera.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tessera_tests::corpus::{FileResult, compare_file};

fn files(spec: &str) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack: Vec<PathBuf> = spec.split_whitespace().map(PathBuf::from).collect();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                stack.push(e.path());
            }
        } else if p.extension().is_some_and(|e| e == "test" || e == "slt") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn default_binary() -> PathBuf {
    // target/debug/deps/corpus-… → target/debug/tessera
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("tessera"))
        .unwrap()
}

fn print_causes(title: &str, causes: &BTreeMap<String, usize>) {
    let mut sorted: Vec<(&String, &usize)> = causes.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    println!("{title}");
    for (cause, n) in sorted.iter().take(25) {
        println!("  {n:>6}  {cause}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs a public corpus for minutes; set TESSERA_CORPUS"]
async fn public_corpus_over_partitioned_tables() {
    let spec = std::env::var("TESSERA_CORPUS").expect("set TESSERA_CORPUS to files or folders");
    let binary = std::env::var("TESSERA_BIN").map_or_else(|_| default_binary(), PathBuf::from);
    let mut results: Vec<FileResult> = vec![];
    println!(
        "{:<60} {:>8} {:>10} {:>10} {:>12}",
        "file", "records", "datafusion", "tessera", "regressions"
    );
    for path in files(&spec) {
        let r = compare_file(&path, &binary).await.unwrap();
        let records = r.tessera.passed.len() + r.tessera.failed.len() + r.tessera.skipped;
        let name = path.display().to_string();
        let short = &name[name.len().saturating_sub(60)..];
        println!(
            "{short:<60} {records:>8} {:>10} {:>10} {:>12}",
            r.datafusion.passed.len(),
            r.tessera.passed.len(),
            r.regressions().len()
        );
        results.push(r);
    }
    let mut tessera_causes: BTreeMap<String, usize> = BTreeMap::new();
    let mut datafusion_causes: BTreeMap<String, usize> = BTreeMap::new();
    let mut regression_causes: BTreeMap<String, usize> = BTreeMap::new();
    let (mut records, mut df_passed, mut t_passed, mut skipped) = (0, 0, 0, 0);
    for r in &results {
        records += r.tessera.passed.len() + r.tessera.failed.len() + r.tessera.skipped;
        skipped += r.tessera.skipped;
        df_passed += r.datafusion.passed.len();
        t_passed += r.tessera.passed.len();
        for c in r.tessera.failed.values() {
            *tessera_causes.entry(c.clone()).or_default() += 1;
        }
        for c in r.datafusion.failed.values() {
            *datafusion_causes.entry(c.clone()).or_default() += 1;
        }
        for (_, c) in r.regressions() {
            *regression_causes.entry(c.to_string()).or_default() += 1;
        }
    }
    let regressions: usize = regression_causes.values().sum();
    println!(
        "\n{} files, {records} records ({skipped} skipped by their conditions): \
         DataFusion passed {df_passed}, Tessera passed {t_passed}; \
         {regressions} passed on DataFusion but failed on Tessera",
        results.len()
    );
    print_causes("Tessera failures by cause:", &tessera_causes);
    print_causes("DataFusion failures by cause:", &datafusion_causes);
    print_causes(
        "Passed on DataFusion, failed on Tessera, by cause:",
        &regression_causes,
    );
    assert_eq!(
        regressions, 0,
        "records DataFusion passes failed on Tessera"
    );
}
