//! A write dropped while its decision is committed stays in flight until
//! it is committed and forgotten.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use crate::catalog::interrupted::held;
use crate::write::{Ack, decide_and_commit};

#[tokio::test]
async fn a_write_dropped_while_it_is_decided_stays_in_flight_and_is_forgotten() {
    tokio::time::timeout(Duration::from_secs(60), dropped_while_decided())
        .await
        .expect("the test ends within a minute");
}

async fn dropped_while_decided() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, committed, release) = held(&dir, "decided/").await;
    let guard = catalog.begin_txn().await.unwrap();
    let txn = guard.txn;
    let statement = {
        let catalog = catalog.clone();
        tokio::spawn(async move {
            let writes = BTreeMap::new();
            decide_and_commit(
                &catalog,
                guard,
                writes,
                BTreeMap::new(),
                Ack::Committed,
                |_| Ok(()),
            )
            .await
        })
    };
    // The statement goes while its decision is being written: the
    // transaction must stay unresolved (a worker rejoining now would
    // otherwise have its staged files aborted as leftovers).
    committed.notified().await;
    statement.abort();
    assert!(statement.await.unwrap_err().is_cancelled());
    assert!(catalog.is_unresolved(txn).unwrap());
    release.notify_one();

    // The decision is committed and then forgotten (its own metastore
    // write), without a restart.
    committed.notified().await;
    release.notify_one();
    while catalog.is_unresolved(txn).unwrap() {
        tokio::task::yield_now().await;
    }
    assert!(catalog.state().unwrap().decided.is_empty());
}
