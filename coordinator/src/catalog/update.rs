//! Changing the catalog: a change is applied to a copy of the state, the
//! keys it changed are written by compare-and-swap on their revisions, and
//! what the metastore committed is applied to the state held here.

use std::sync::atomic::Ordering;

use datafusion::common::{DataFusionError, Result, exec_err};

use super::{Catalog, poisoned};
use crate::catalog_state::CatalogState;
use crate::metastore::{Compare, Op};

impl Catalog {
    /// Applies `change` to the state and persists the keys it changed, by
    /// compare-and-swap on their revisions: if another change got to one
    /// of them first, `change` runs again on the newer state. If writing
    /// fails, the state is left as it was.
    pub async fn update<T>(&self, change: impl FnMut(&mut CatalogState) -> Result<T>) -> Result<T> {
        self.update_reading(&[], change).await
    }

    /// [`Catalog::update`] that also holds if none of the keys `reads` was
    /// changed meanwhile (by compare-and-swap on their revisions, as the
    /// keys it writes): `change` read them and writes none of them.
    pub async fn update_reading<T>(
        &self,
        reads: &[String],
        mut change: impl FnMut(&mut CatalogState) -> Result<T>,
    ) -> Result<T> {
        loop {
            let (out, ops, compares) = {
                let guard = self.state.lock().map_err(|_| poisoned())?;
                // A stopped coordinator's background work must not
                // overwrite what the next one on the same metastore writes.
                if self.closed.load(Ordering::SeqCst) {
                    return exec_err!("the coordinator is stopping; retry on the running one");
                }
                if self.follower.is_some() {
                    return Err(tessera_worker::ErrorKind::FailedPrecondition.error(
                        "this coordinator follows the cluster's leader and changes nothing \
                         itself; the statement should have gone to the leader: retry",
                    ));
                }
                let mut next = guard.clone();
                let out = change(&mut next)?;
                let ops = guard.diff(&next)?;
                if ops.is_empty() {
                    return Ok(out);
                }
                let revisions = self.revisions.lock().map_err(|_| poisoned())?;
                let read = reads
                    .iter()
                    .map(String::as_str)
                    .filter(|key| ops.iter().all(|op| op.key() != *key));
                let compares: Vec<Compare> = ops
                    .iter()
                    .map(Op::key)
                    .chain(read)
                    .map(|key| Compare {
                        key: key.to_string(),
                        revision: revisions.get(key).copied().unwrap_or(0),
                    })
                    .collect();
                (out, ops, compares)
            };
            // The commit and its application to `state` run as a task of
            // their own: a statement dropped half-way (its client went
            // away) must not leave keys committed in the metastore that
            // this coordinator never applied, or every later change of
            // them would fail its compare-and-swap for ever.
            let Some(me) = self.me.upgrade() else {
                return exec_err!("the coordinator is stopping; retry on the running one");
            };
            let committed = tokio::spawn(async move {
                let Some(revision) = me.metastore.commit(&compares, &ops).await? else {
                    return Ok(false);
                };
                me.apply_committed(&ops, revision)?;
                Ok::<_, DataFusionError>(true)
            })
            .await
            .map_err(|e| DataFusionError::Execution(format!("catalog commit failed: {e}")))??;
            if !committed {
                // Another change of the same keys landed first; its new
                // state is in memory once its writer applies it.
                tokio::task::yield_now().await;
                continue;
            }
            return Ok(out);
        }
    }

    /// Applies ops the metastore committed at `revision` to the state held
    /// here.
    fn apply_committed(&self, ops: &[Op], revision: u64) -> Result<()> {
        let mut guard = self.state.lock().map_err(|_| poisoned())?;
        let mut revisions = self.revisions.lock().map_err(|_| poisoned())?;
        self.revision.fetch_max(revision, Ordering::SeqCst);
        let mut decided = vec![];
        for op in ops {
            match op {
                Op::Put(key, value) => {
                    guard.apply(key, Some(value))?;
                    revisions.insert(key.clone(), revision);
                    decided.extend(crate::catalog_state::decided_txn(key));
                }
                Op::Delete(key) => {
                    guard.apply(key, None)?;
                    revisions.remove(key);
                }
            }
        }
        // Decided now: visible to every snapshot taken from here on
        // (under the state lock, so no snapshot sees it half-way).
        if !decided.is_empty()
            && let Ok(mut set) = self.in_flight.lock()
        {
            for txn in decided {
                set.remove(&txn);
            }
        }
        Ok(())
    }
}
