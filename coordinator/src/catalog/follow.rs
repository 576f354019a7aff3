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

/// Watch events applied at a time; a chunk cut at this size leaves its
/// last revision unfinished until the next chunk.
const WATCH_CHUNK: usize = 1024;

/// One watch: started first, then every key read, so that no change falls
/// between the two (a change seen twice is applied once, by revision).
async fn follow_once(weak: &Weak<Catalog>) -> Result<()> {
    let Some(catalog) = weak.upgrade() else {
        return Ok(());
    };
    let events = catalog.metastore.watch("").await?;
    catalog.reload(0).await?;
    drop(catalog);
    // etcd sends the changes of one transaction together: applied together,
    // so no statement planned meanwhile sees half of them.
    let mut chunks = events.ready_chunks(WATCH_CHUNK);
    while let Some(chunk) = chunks.next().await {
        let Some(catalog) = weak.upgrade() else {
            return Ok(());
        };
        catalog.apply_events(&chunk, chunk.len() < WATCH_CHUNK)?;
    }
    Ok(())
}

impl Catalog {
    /// Applies changes another coordinator made (a key already at that
    /// revision or later is left alone); the catalog is then at the last
    /// one's revision if `complete`, else just below it.
    fn apply_events(&self, events: &[WatchEvent], complete: bool) -> Result<()> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        {
            let mut state = self.state.lock().map_err(|_| poisoned())?;
            let mut revisions = self.revisions.lock().map_err(|_| poisoned())?;
            let mut tombstones = self.tombstones.lock().map_err(|_| poisoned())?;
            for event in events {
                let known = revisions.get(&event.key).copied().unwrap_or(0);
                if event.revision <= known {
                    continue;
                }
                state.apply(&event.key, event.value.as_deref())?;
                match event.value {
                    Some(_) => {
                        revisions.insert(event.key.clone(), event.revision);
                    }
                    None => {
                        revisions.remove(&event.key);
                        // A reload reading meanwhile must not bring it back.
                        if let Some(t) = tombstones.as_mut() {
                            t.insert(event.key.clone(), event.revision);
                        }
                    }
                }
            }
        }
        // Another coordinator took over the lead: pin the snapshots of the
        // queries running here on it.
        if let Some(follower) = &self.follower
            && events.iter().any(|e| {
                e.key == crate::metastore::LEADER_KEY
                    && e.value.as_deref().is_some_and(|v| !follower.is_me(v))
            })
        {
            tokio::spawn(Arc::clone(follower).repin());
        }
        let applied = if complete {
            last.revision
        } else {
            last.revision.saturating_sub(1)
        };
        self.revision.fetch_max(applied, Ordering::SeqCst);
        self.revision_moved.notify_waiters();
        Ok(())
    }

    /// Reads every key again; the catalog is then at least at `at_least`
    /// (a revision written before this read began). What the watch applied
    /// meanwhile stays: a key put at a later revision, or deleted after
    /// the read.
    async fn reload(&self, at_least: u64) -> Result<()> {
        let _one = self.reloading.lock().await;
        *self.tombstones.lock().map_err(|_| poisoned())? = Some(Default::default());
        let read = self.metastore.range("").await;
        // Locked in the order `apply_events` locks them.
        let mut state = self.state.lock().map_err(|_| poisoned())?;
        let mut revisions = self.revisions.lock().map_err(|_| poisoned())?;
        let deleted = self
            .tombstones
            .lock()
            .map_err(|_| poisoned())?
            .take()
            .unwrap_or_default();
        let entries = read?;
        // Every key the read saw was written at or before its revision.
        let top = entries.values().map(|v| v.revision).max().unwrap_or(0);
        {
            for (key, v) in &entries {
                let newer = revisions.get(key).is_some_and(|r| *r > v.revision)
                    || deleted.get(key).is_some_and(|r| *r > v.revision);
                if !newer {
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
        drop(revisions);
        drop(state);
        self.revision.fetch_max(top.max(at_least), Ordering::SeqCst);
        self.revision_moved.notify_waiters();
        Ok(())
    }

    /// Takes the leader's members and waits until the catalog here is at
    /// the leader's revision: by the watch, or by reading the keys if the
    /// watch lags.
    pub(super) async fn follow_leader(&self, reply: &SnapshotReply) -> Result<()> {
        self.membership
            .adopt(&reply.members, &reply.from, reply.sequence)?;
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
