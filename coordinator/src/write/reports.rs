//! What the write path reports to the layers that watch it: outbox
//! entries to the ASYNC index applier, and counts of acknowledged INSERTs.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tessera_sql::IndexKind;

/// Where the write path reports what it did, to the layers that watch it
/// (the engine wires them): the watcher of GLOBAL ASYNC index outboxes
/// (the index layer's applier), and the counters of acknowledged INSERTs.
#[derive(Debug)]
pub struct Reports {
    pub outboxes: Arc<dyn OutboxWatcher>,
    pub counters: WriteCounters,
}

impl Reports {
    pub fn new(outboxes: Arc<dyn OutboxWatcher>) -> Self {
        Self {
            outboxes,
            counters: WriteCounters::default(),
        }
    }

    /// Transaction `txn` of `statements` INSERTs, which wrote `partitions`
    /// partitions on `workers` workers and the index entries `counts`
    /// (index, kind, entries), is acknowledged: count it, and tell the
    /// outbox watcher of the GLOBAL ASYNC indexes it gave entries to.
    pub(crate) fn acknowledged(
        &self,
        (statements, partitions, workers): (u64, u64, u64),
        counts: &[(String, IndexKind, u64)],
        txn: u64,
    ) {
        self.counters.count(statements, partitions, workers);
        let mut outboxes = counts
            .iter()
            .filter(|(_, k, n)| *k == IndexKind::GlobalAsync && *n > 0)
            .map(|(name, ..)| name.as_str())
            .peekable();
        if outboxes.peek().is_some() {
            self.outboxes.outbox_written(&mut outboxes, txn);
        }
    }
}

/// Told of the GLOBAL ASYNC index outboxes a committed write added
/// entries to, and its transaction.
pub trait OutboxWatcher: Send + Sync + fmt::Debug {
    fn outbox_written(&self, names: &mut dyn Iterator<Item = &str>, txn: u64);
}

/// INSERT statements acknowledged since the coordinator started, with the
/// partitions their transactions wrote before the acknowledgement (data
/// partitions plus GLOBAL SYNC index partitions; a LOCAL index or an
/// outbox lives in its data partition) and the workers they involved,
/// summed over transactions: statements that shared one (see [`group`])
/// share its count.
#[derive(Debug, Default)]
pub struct WriteCounters {
    writes: AtomicU64,
    partitions: AtomicU64,
    workers: AtomicU64,
    transactions: AtomicU64,
}

/// What [`WriteCounters`] counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteFanout {
    /// Statements.
    pub writes: u64,
    /// Their transactions (fewer when small statements shared them).
    pub transactions: u64,
    pub partitions: u64,
    pub workers: u64,
}

impl WriteCounters {
    /// One transaction of `statements` INSERTs, acknowledged.
    fn count(&self, statements: u64, partitions: u64, workers: u64) {
        self.writes.fetch_add(statements, Ordering::Relaxed);
        self.partitions.fetch_add(partitions, Ordering::Relaxed);
        self.workers.fetch_add(workers, Ordering::Relaxed);
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn fanout(&self) -> WriteFanout {
        WriteFanout {
            writes: self.writes.load(Ordering::Relaxed),
            partitions: self.partitions.load(Ordering::Relaxed),
            workers: self.workers.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
        }
    }
}
