//! Finishing decided transactions: once every worker confirmed its
//! commit, a transaction leaves the decision log and what it counted joins
//! its table's statistics. Statements hand their transaction over and are
//! acknowledged at once; one task at a time removes everything handed over
//! so far in a single metastore write, so concurrent writes share it.

use std::time::Duration;

use super::{Catalog, TxnGuard, poisoned};

/// Transactions removed from the log in one metastore write at most (a
/// transaction of etcd takes a bounded number of operations).
const BATCH: usize = 256;

/// Transactions handed over and not yet removed (with the guard of each
/// that still holds one), and whether a task is removing them.
#[derive(Debug, Default)]
pub(super) struct Finishing {
    pending: Vec<(u64, Option<TxnGuard>)>,
    running: bool,
}

impl Catalog {
    /// `txn` is committed on every worker that still holds a copy it
    /// wrote: it leaves the decision log soon, and `guard` is dropped once
    /// it has. Until then a restart would commit it again, which changes
    /// nothing (commit is idempotent).
    pub(crate) fn finished(&self, txn: u64, guard: Option<TxnGuard>) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        {
            let Ok(mut finishing) = self.finishing.lock() else {
                return;
            };
            finishing.pending.push((txn, guard));
            if finishing.running {
                return;
            }
            finishing.running = true;
        }
        tokio::spawn(async move { me.finish_pending().await });
    }

    async fn finish_pending(&self) {
        loop {
            let batch: Vec<(u64, Option<TxnGuard>)> = {
                let Ok(mut finishing) = self.finishing.lock().map_err(|_| poisoned()) else {
                    return;
                };
                if finishing.pending.is_empty() {
                    finishing.running = false;
                    return;
                }
                let n = finishing.pending.len().min(BATCH);
                finishing.pending.drain(..n).collect()
            };
            let txns: Vec<u64> = batch.iter().map(|(t, _)| *t).collect();
            let removed = self
                .update(|s| {
                    for txn in &txns {
                        s.decided.remove(txn);
                    }
                    s.fold_stats_deltas(txns.iter().copied());
                    Ok(())
                })
                .await;
            // The gate shares go either way: a write that could not be
            // forgotten stays in the log, and nothing waits for it more
            // by holding its gate.
            drop(batch);
            match removed {
                // The ASYNC applier, whose horizon stops at the oldest
                // write still in the log, watches this.
                Ok(()) => self.forgotten.send_modify(|n| *n += txns.len() as u64),
                Err(e) if self.closed.load(std::sync::atomic::Ordering::SeqCst) => {
                    // The next start commits them again and forgets them.
                    tracing::debug!(error = %e, "finished writes stay in the log until the next start");
                }
                Err(e) => {
                    tracing::warn!(error = %e, writes = txns.len(), "could not clear finished writes from the log; retrying");
                    if let Ok(mut finishing) = self.finishing.lock() {
                        finishing
                            .pending
                            .extend(txns.into_iter().map(|t| (t, None)));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}
