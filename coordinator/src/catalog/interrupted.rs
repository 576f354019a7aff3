//! A catalog change whose statement is dropped while the metastore commits
//! it still reaches the state held in memory. `held` is the catalog other
//! layers' tests drop statements in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::Result;
use futures::stream::BoxStream;
use tokio::sync::Notify;

use crate::catalog::Catalog;
use crate::catalog_state::{AdminState, MemberRecord};
use crate::metastore::{Compare, FileMetastore, Metastore, Op, Versioned, WatchEvent};

/// A file metastore whose commits of keys under `prefix`, once written,
/// wait for `release` before they return: the window in which a statement
/// can be dropped between the commit and its application.
#[derive(Debug)]
struct HeldCommits {
    inner: FileMetastore,
    prefix: &'static str,
    committed: Arc<Notify>,
    release: Arc<Notify>,
}

#[async_trait]
impl Metastore for HeldCommits {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<BTreeMap<String, Versioned>> {
        self.inner.range(prefix).await
    }
    async fn commit(&self, compares: &[Compare], ops: &[Op]) -> Result<Option<u64>> {
        let out = self.inner.commit(compares, ops).await?;
        if out.is_some() && ops.iter().any(|op| op.key().starts_with(self.prefix)) {
            self.committed.notify_one();
            self.release.notified().await;
        }
        Ok(out)
    }
    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>> {
        self.inner.watch(prefix).await
    }
}

/// A catalog over a metastore that holds commits of keys under `prefix`,
/// with the signal that one was written and the one that lets it return.
pub(crate) async fn held(
    dir: &tempfile::TempDir,
    prefix: &'static str,
) -> (Arc<Catalog>, Arc<Notify>, Arc<Notify>) {
    let committed = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let store = HeldCommits {
        inner: FileMetastore::open(dir.path()).unwrap(),
        prefix,
        committed: committed.clone(),
        release: release.clone(),
    };
    let catalog = Catalog::open(Box::new(store), BTreeMap::new(), Duration::from_secs(5))
        .await
        .unwrap();
    (catalog, committed, release)
}

/// A statement that sets worker w1's URL, run as a task of its own.
fn set_url(catalog: &Arc<Catalog>, url: &'static str) -> tokio::task::JoinHandle<Result<()>> {
    let catalog = catalog.clone();
    tokio::spawn(async move {
        catalog
            .update(|s| {
                let record = MemberRecord {
                    url: url.to_string(),
                    admin: AdminState::Active,
                };
                s.members.insert("w1".into(), record);
                Ok(())
            })
            .await
    })
}

#[tokio::test]
async fn a_change_dropped_mid_commit_is_still_applied() {
    tokio::time::timeout(Duration::from_secs(60), dropped_mid_commit())
        .await
        .expect("the test ends within a minute");
}

async fn dropped_mid_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, committed, release) = held(&dir, "member/").await;

    // The statement is dropped once its change is in the metastore and
    // before the commit call returns.
    let first = set_url(&catalog, "http://127.0.0.2:1");
    committed.notified().await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    release.notify_one();

    // A later change of the same key must not spin on a stale revision.
    let second = set_url(&catalog, "http://127.0.0.3:1");
    committed.notified().await;
    release.notify_one();
    tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("a change after a dropped one completes")
        .unwrap()
        .unwrap();
    let state = catalog.state().unwrap();
    assert_eq!(state.members["w1"].url, "http://127.0.0.3:1");
}
