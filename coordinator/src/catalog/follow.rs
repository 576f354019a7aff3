//! A follower's catalog: kept up to date by a watch on the metastore, and
//! caught up with the leader's revision before each statement.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use datafusion::common::Result;
use futures::StreamExt;

use super::{Catalog, poisoned};
use crate::follow::{CATCH_UP_WAIT, SnapshotReply};
use crate::metastore::WatchEvent;

/// Watches the metastore for as long as the catalog lives: a watch that
/// ends (etcd away) is started again, and the keys read again after it.
pub(super) fn spawn(catalog: &Arc<Catalog>) {
    let weak = Arc::downgrade(catalog);
    let task = tokio::spawn(async move {
        loop {
            if let Err(e) = follow_once(&weak).await {
                tracing::warn!(error = %e, "following the metastore failed; watching again");
            }
            match weak.upgrade() {
                Some(c) if !c.closed.load(Ordering::SeqCst) => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    if let Ok(mut slot) = catalog.follow_task.lock() {
        *slot = Some(task.abort_handle());
    }
}

/// One watch: started first, then every key read, so that no change falls
/// between the two (a change seen twice is applied once, by revision).
async fn follow_once(weak: &Weak<Catalog>) -> Result<()> {
    let Some(catalog) = weak.upgrade() else {
        return Ok(());
    };
    let mut events = catalog.metastore.watch("").await?;
    catalog.reload(0).await?;
    drop(catalog);
    while let Some(event) = events.next().await {
        let Some(catalog) = weak.upgrade() else {
            return Ok(());
        };
        catalog.apply_event(&event)?;
    }
    Ok(())
}

impl Catalog {
    /// Applies one change another coordinator made, unless the key is
    /// already at that revision or later.
    fn apply_event(&self, event: &WatchEvent) -> Result<()> {
        {
            let mut state = self.state.lock().map_err(|_| poisoned())?;
            let mut revisions = self.revisions.lock().map_err(|_| poisoned())?;
            let known = revisions.get(&event.key).copied().unwrap_or(0);
            if event.revision > known {
                state.apply(&event.key, event.value.as_deref())?;
                match event.value {
                    Some(_) => revisions.insert(event.key.clone(), event.revision),
                    None => revisions.remove(&event.key),
                };
            }
        }
        self.revision.fetch_max(event.revision, Ordering::SeqCst);
        self.revision_moved.notify_waiters();
        Ok(())
    }

    /// Reads every key again; the catalog is then at least at `at_least`
    /// (a revision written before this read began). A key a watch event
    /// brought to a later revision meanwhile keeps that.
    async fn reload(&self, at_least: u64) -> Result<()> {
        let entries = self.metastore.range("").await?;
        // Every key the read saw was written at or before its revision.
        let top = entries.values().map(|v| v.revision).max().unwrap_or(0);
        {
            let mut state = self.state.lock().map_err(|_| poisoned())?;
            let mut revisions = self.revisions.lock().map_err(|_| poisoned())?;
            for (key, v) in &entries {
                if v.revision >= revisions.get(key).copied().unwrap_or(0) {
                    state.apply(key, Some(&v.value))?;
                    revisions.insert(key.clone(), v.revision);
                }
            }
            let gone: Vec<String> = revisions
                .iter()
                .filter(|(key, rev)| **rev <= top && !entries.contains_key(*key))
                .map(|(key, _)| key.clone())
                .collect();
            for key in gone {
                state.apply(&key, None)?;
                revisions.remove(&key);
            }
        }
        self.revision.fetch_max(top.max(at_least), Ordering::SeqCst);
        self.revision_moved.notify_waiters();
        Ok(())
    }

    /// Takes the leader's members and waits until the catalog here is at
    /// the leader's revision: by the watch, or by reading the keys if the
    /// watch lags.
    pub(super) async fn follow_leader(&self, reply: &SnapshotReply) -> Result<()> {
        self.membership.adopt(&reply.members)?;
        let target = reply.revision;
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        loop {
            let moved = self.revision_moved.notified();
            if self.revision() >= target {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                break;
            }
        }
        tracing::debug!(
            target,
            at = self.revision(),
            "the metastore watch lags; reading the keys"
        );
        self.reload(target).await
    }
}
