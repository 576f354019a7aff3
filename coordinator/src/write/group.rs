//! Group commit of small INSERTs. A small statement into a table that
//! another is being written to waits for that write, and then goes with the
//! others that waited meanwhile as one transaction: one prepare per worker,
//! one staged file and fsync per partition, one decision, one commit. Each
//! statement is acknowledged once that transaction is decided (logged: from
//! then on durable and seen by every snapshot), and the
//! transaction is all or nothing, so each statement still lands whole or
//! not at all, and every snapshot sees all of a group or none of it. A
//! group that fails changed nothing, and its statements are then written
//! one by one: what failed it (a worker down under one statement's rows)
//! fails only the statements it concerns.
//!
//! No statement waits for a timer: the first into an idle table is written
//! at once (alone), and a group is simply everything that queued while the
//! write before it ran, as PostgreSQL's WAL group commit shares one flush.
//! A statement's rows are checked (schema, NOT NULL) and routed before it
//! queues, so one bad statement never fails the others of its group.
//!
//! ```text
//!  INSERT ─► route ─► small? ─► queue of its table ─► leader task:
//!                                                      take all queued
//!                                                      ─► one transaction
//!                                                      ─► answer each
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};
use tessera_sql::TableDef;
use tokio::sync::oneshot;

use super::{Reports, write_routed};
use crate::catalog::Catalog;

/// Rows of a statement, by partition.
type Routed = BTreeMap<u32, Vec<RecordBatch>>;

/// A statement of at most this many rows and bytes may share a transaction.
const SMALL_ROWS: usize = 1_000;
const SMALL_BYTES: usize = 1 << 20;
/// A group stops growing at this many statements or rows.
const GROUP_STATEMENTS: usize = 256;
const GROUP_ROWS: usize = 16_000;

/// Whether a statement's rows are few enough to share a transaction.
pub(crate) fn is_small(routed: &Routed) -> bool {
    let (mut rows, mut bytes) = (0, 0);
    for batch in routed.values().flatten() {
        rows += batch.num_rows();
        bytes += batch.get_array_memory_size();
    }
    rows <= SMALL_ROWS && bytes <= SMALL_BYTES
}

/// A statement waiting to be written.
struct Waiting {
    def: TableDef,
    schema: SchemaRef,
    routed: Routed,
    rows: usize,
    done: oneshot::Sender<Result<(), Arc<DataFusionError>>>,
}

/// The statements waiting for one table (by its storage key), and whether
/// a leader task is writing them.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    writing: bool,
}

/// The queues of small statements, one per table being written.
#[derive(Default)]
pub struct Groups {
    queues: Mutex<HashMap<String, Queue>>,
}

impl fmt::Debug for Groups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Groups")
            .field("tables", &self.lock().len())
            .finish()
    }
}

impl Groups {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Queue>> {
        // Nothing panics while the lock is held; a poisoned map is whole.
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one statement's rows (routed to `def`'s partitions) in the
    /// next transaction of its table; returns once that is decided.
    pub(crate) async fn write(
        self: &Arc<Self>,
        catalog: &Arc<Catalog>,
        reports: &Arc<Reports>,
        def: TableDef,
        schema: SchemaRef,
        routed: Routed,
    ) -> Result<()> {
        let key = def.storage_key();
        let rows = routed.values().flatten().map(|b| b.num_rows()).sum();
        let (done, answer) = oneshot::channel();
        let leads = {
            let mut queues = self.lock();
            let queue = queues.entry(key.clone()).or_default();
            queue.waiting.push_back(Waiting {
                def,
                schema,
                routed,
                rows,
                done,
            });
            !std::mem::replace(&mut queue.writing, true)
        };
        if leads {
            // A task of its own: a statement whose client goes away must
            // not take the writing of the others with it.
            let writers = (Arc::clone(catalog), Arc::clone(reports));
            tokio::spawn(lead(Arc::clone(self), key, writers));
        }
        match answer.await {
            Ok(result) => result.map_err(DataFusionError::Shared),
            Err(_) => Err(unknown()),
        }
    }

    /// The next group of `key`'s queue: the first statement waiting and
    /// those after it of the same definition, up to the group's bounds;
    /// `None` (and the queue gone) when nothing waits.
    fn next_group(&self, key: &str) -> Option<Vec<Waiting>> {
        let mut queues = self.lock();
        let queue = queues.get_mut(key)?;
        let Some(first) = queue.waiting.pop_front() else {
            queues.remove(key);
            return None;
        };
        let mut rows = first.rows;
        let mut group = vec![first];
        while let Some(next) = queue.waiting.front() {
            if group.len() >= GROUP_STATEMENTS
                || rows + next.rows > GROUP_ROWS
                || next.def != group[0].def
            {
                break;
            }
            rows += next.rows;
            group.extend(queue.waiting.pop_front());
        }
        Some(group)
    }
}

/// Writes `key`'s queue group by group until it is empty.
async fn lead(groups: Arc<Groups>, key: String, (catalog, reports): (Arc<Catalog>, Arc<Reports>)) {
    let mut leading = Leading {
        groups: Arc::clone(&groups),
        key: key.clone(),
        done: false,
    };
    while let Some(mut group) = groups.next_group(&key) {
        // A statement whose client went away before its turn is not written.
        group.retain(|w| !w.done.is_closed());
        if group.is_empty() {
            continue;
        }
        let result = write_one(&catalog, &reports, &group).await;
        if result.is_err() && group.len() > 1 {
            // The group changed nothing. What failed it (a worker down
            // under one statement's rows, say) may not concern the others:
            // each goes alone, so a statement fails only for its own rows.
            for w in group {
                let alone = write_one(&catalog, &reports, std::slice::from_ref(&w)).await;
                let _ = w.done.send(alone);
            }
            continue;
        }
        for w in group {
            let _ = w.done.send(result.clone());
        }
    }
    leading.done = true;
}

/// Writes the statements of `group` (all of one definition) as one
/// transaction.
async fn write_one(
    catalog: &Arc<Catalog>,
    reports: &Arc<Reports>,
    group: &[Waiting],
) -> Result<(), Arc<DataFusionError>> {
    let (def, schema) = (group[0].def.clone(), Arc::clone(&group[0].schema));
    let count = group.len() as u64;
    let mut routed = Routed::new();
    for w in group {
        for (partition, batches) in &w.routed {
            routed
                .entry(*partition)
                .or_default()
                .extend(batches.iter().cloned());
        }
    }
    let (catalog, reports) = (Arc::clone(catalog), Arc::clone(reports));
    // Its own task: a panic fails this group, not the queue.
    let written = tokio::spawn(async move {
        write_routed(&catalog, &reports, &def, &schema, routed, count).await
    })
    .await;
    match written {
        Ok(result) => result.map_err(Arc::new),
        Err(_) => Err(Arc::new(unknown())),
    }
}

/// The error of a statement whose write stopped half way (the coordinator
/// stopping, a bug): its decision may have been logged, and then recovery
/// finishes it.
fn unknown() -> DataFusionError {
    DataFusionError::Execution(
        "the coordinator stopped writing this INSERT before it was acknowledged; it may or may \
         not have been written: check before running it again"
            .into(),
    )
}

/// Held by a leader: if it ends other than by emptying its queue (the
/// runtime stopping), the queue goes, and each statement waiting in it
/// gets an error rather than waiting for ever; the next INSERT into the
/// table starts a new leader.
struct Leading {
    groups: Arc<Groups>,
    key: String,
    done: bool,
}

impl Drop for Leading {
    fn drop(&mut self) {
        if !self.done {
            self.groups.lock().remove(&self.key);
        }
    }
}
