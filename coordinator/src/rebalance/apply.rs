//! Applying a rebalance plan in the background, a step at a time (its
//! record is in `log.rs`). `REBALANCE CANCEL` stops it after the running step (a move cut short rolls its new copy
//! back). A move's progress is in the partition map at every moment, so
//! a coordinator that dies mid-move leaves the old copy serving: the new
//! one is an extra copy that a later plan drops, or finishes moving.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::common::{DataFusionError, Result};
use tessera_sql::Placements;
use tessera_worker::ErrorKind;

use super::log::{RebalanceLog, Record, State};
use super::{Operation, Rebalancer, Step};
use crate::catalog::Catalog;
use crate::membership::WorkerState;
use crate::reshape::{Reshape, reshape_in_task};

/// How long a move waits for its new copy to catch up.
const CATCH_UP_WAIT: Duration = Duration::from_secs(600);
/// How long a switch waits for the table's writes in flight, each try.
const SWITCH_WAIT: Duration = Duration::from_millis(500);
/// How long a switch tries before the move is given up.
const SWITCH_DEADLINE: Duration = Duration::from_secs(60);

/// Starts applying `steps` in the background; refused while a rebalance
/// runs.
pub fn apply(catalog: &Arc<Catalog>, rebalancer: &Arc<Rebalancer>, steps: Vec<Step>) -> Result<()> {
    let log = &rebalancer.log;
    if log.running.swap(true, Ordering::SeqCst) {
        return Err(ErrorKind::FailedPrecondition.error(
            "a rebalance is running; SHOW REBALANCE shows its steps and REBALANCE CANCEL \
             stops it",
        ));
    }
    log.cancel.store(false, Ordering::SeqCst);
    if let Ok(mut records) = log.steps.lock() {
        *records = steps
            .iter()
            .map(|step| Record {
                step: step.clone(),
                state: State::Pending,
                bytes_copied: 0,
                seconds: 0.0,
            })
            .collect();
    }
    let catalog = Arc::clone(catalog);
    let rebalancer = Arc::clone(rebalancer);
    tokio::spawn(async move {
        let log = &rebalancer.log;
        // Cleared however the task ends (a panic included): a step left
        // running is marked failed.
        let _done = Running(log);
        // Tables whose split or merge made other partitions than planned:
        // their later steps may name partitions that are others now, and
        // are skipped. The partitions a failed split or merge would have
        // made: steps that name them are skipped.
        // Tables with a split or merge that changed nothing: the ids of
        // their later ones would be others, so those are skipped too.
        let mut diverged = BTreeSet::new();
        let mut unmade = BTreeSet::new();
        let mut held_up = BTreeSet::new();
        for (i, step) in steps.into_iter().enumerate() {
            if log.cancel.load(Ordering::SeqCst) || catalog.closed.load(Ordering::SeqCst) {
                log.set(i, |r| r.state = State::Cancelled);
                continue;
            }
            let names_unmade = [Some(step.partition), step.with]
                .into_iter()
                .flatten()
                .any(|p| unmade.contains(&(step.map_key.clone(), p)));
            let reshapes = matches!(step.operation, Operation::Split | Operation::Merge);
            if diverged.contains(&step.map_key)
                || names_unmade
                || reshapes && held_up.contains(&step.map_key)
            {
                let why = "an earlier split or merge of the table did not go as planned; \
                           EXPLAIN REBALANCE plans again";
                log.set(i, |r| r.state = State::Skipped(why.into()));
                if reshapes {
                    unmade.extend(step.makes.iter().map(|p| (step.map_key.clone(), *p)));
                }
                continue;
            }
            log.set(i, |r| r.state = State::Running);
            let started = Instant::now();
            let outcome = match step.operation {
                Operation::Move => move_copy(&catalog, &rebalancer, &step, i).await,
                Operation::DropCopy => drop_copy(&catalog, &step).await,
                Operation::Split | Operation::Merge => {
                    match reshape(&catalog, &rebalancer, &step, i).await {
                        Reshaped::AsPlanned => Ok(State::Done),
                        Reshaped::Not(outcome) => {
                            unmade.extend(step.makes.iter().map(|p| (step.map_key.clone(), *p)));
                            held_up.insert(step.map_key.clone());
                            outcome
                        }
                        Reshaped::Otherwise(e) => {
                            diverged.insert(step.map_key.clone());
                            Err(e)
                        }
                    }
                }
            };
            let state = match outcome {
                Ok(state) => state,
                Err(e) => {
                    tracing::warn!(table = %step.table, partition = step.partition, error = %e, "a rebalance step failed");
                    State::Failed(e.strip_backtrace().to_string())
                }
            };
            log.set(i, |r| {
                r.state = state;
                r.seconds = started.elapsed().as_secs_f64();
            });
        }
    });
    Ok(())
}

/// Marks the rebalance finished when dropped.
struct Running<'a>(&'a RebalanceLog);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let log = self.0;
        if let Ok(mut steps) = log.steps.lock() {
            for r in steps.iter_mut().filter(|r| r.state == State::Running) {
                r.state = State::Failed("the rebalance stopped during this step".into());
            }
        }
        log.running.store(false, Ordering::SeqCst);
    }
}

/// Whether `step` still applies to the partition as it is now: the table
/// is the one planned and `from` holds a copy.
fn still_there(s: &crate::catalog_state::CatalogState, step: &Step) -> Option<String> {
    if crate::catalog::owner_of(s, &step.map_key).map(|t| t.id) != Some(step.table_id) {
        return Some(format!("'{}' was dropped or replaced", step.table));
    }
    let Some(placement) = s
        .map
        .tables
        .get(&step.map_key)
        .and_then(|p| p.by_id(step.partition))
    else {
        return Some(format!(
            "partition {} is no longer a partition of '{}' (it split or merged)",
            step.partition, step.table
        ));
    };
    if !placement.replicas.contains(&step.from) {
        return Some(format!("{} no longer holds the partition", step.from));
    }
    None
}

/// Adds `to` as a copy, catches it up, switches it in for `from` and
/// drops `from`'s files once no query may read them.
async fn move_copy(
    catalog: &Arc<Catalog>,
    rebalancer: &Rebalancer,
    step: &Step,
    i: usize,
) -> Result<State> {
    let Some(to) = step.to.clone() else {
        return Ok(State::Skipped("no target".into()));
    };
    let (key, partition) = (step.map_key.clone(), step.partition);
    // 1. The new copy, out of sync. One already there is taken over only
    // if it is an extra copy out of sync (a move cut short).
    let skipped = catalog
        .update(|s| {
            if let Some(why) = still_there(s, step) {
                return Ok(Some(why));
            }
            let wanted = wanted(s, &key);
            let Some(p) = placement_mut(s, &key, partition) else {
                return Ok(Some("the partition is gone".into()));
            };
            if p.replicas.contains(&to) {
                let extra = p.replicas.len() > wanted && !p.is_in_sync(&to);
                return Ok((!extra).then(|| format!("{to} holds the partition already")));
            }
            p.replicas.push(to.clone());
            p.out_of_sync.push(to.clone());
            s.map.epoch += 1;
            Ok(None)
        })
        .await?;
    if let Some(why) = skipped {
        return Ok(State::Skipped(why));
    }
    // 2. Caught up: files copied from an in-sync copy, then in sync.
    let deadline = Instant::now() + CATCH_UP_WAIT;
    loop {
        let state = catalog.state()?;
        if let Some(why) = still_there(&state, step) {
            roll_back(catalog, step, &to).await?;
            return Ok(State::Skipped(why));
        }
        let in_sync = state
            .map
            .tables
            .get(&key)
            .and_then(|p| p.by_id(partition))
            .is_some_and(|p| p.is_in_sync(&to));
        if in_sync {
            break;
        }
        if rebalancer.log.cancel.load(Ordering::SeqCst) {
            roll_back(catalog, step, &to).await?;
            return Ok(State::Cancelled);
        }
        if catalog.membership().state(&to)? == WorkerState::Down {
            roll_back(catalog, step, &to).await?;
            return Err(ErrorKind::Unavailable.error(format!(
                "{to} went down before its copy caught up; the old copy stays (REBALANCE \
                 APPLY again once it is back)"
            )));
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            roll_back(catalog, step, &to).await?;
            return Err(ErrorKind::Unavailable.error(format!(
                "the copy on {to} did not catch up within {} s; the old copy stays",
                CATCH_UP_WAIT.as_secs()
            )));
        };
        let rate = &rebalancer.copy_rate;
        let caught = crate::catch_up::catch_up(catalog, &key, step.table_id, partition, &to, rate);
        match tokio::time::timeout(left, caught).await {
            Ok(Ok(Some(done))) => rebalancer
                .log
                .set(i, |r| r.bytes_copied += done.installed.bytes),
            Ok(Ok(None)) | Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(Err(e)) => {
                tracing::info!(%to, partition, error = %e, "a moving copy is not caught up yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // 3. The switch, with the table's writes held back for it (those in
    // flight finish first; none then misses the new copy or goes to the
    // old one alone). Not while a long write (a bulk upload) runs, which
    // every writer would wait behind.
    let gate = catalog.gate(&step.table)?;
    let deadline = Instant::now() + SWITCH_DEADLINE;
    let _alone = loop {
        if !catalog.long_write(&step.table, SWITCH_WAIT)?
            && let Ok(alone) =
                tokio::time::timeout(SWITCH_WAIT, Arc::clone(&gate).write_owned()).await
        {
            break alone;
        }
        let cancelled = rebalancer.log.cancel.load(Ordering::SeqCst);
        if cancelled || Instant::now() > deadline {
            roll_back(catalog, step, &to).await?;
            if cancelled {
                return Ok(State::Cancelled);
            }
            return Err(ErrorKind::Unavailable.error(format!(
                "the table's writes could not be held back for the switch within {} s (a long \
                 write?); the old copy stays",
                SWITCH_DEADLINE.as_secs()
            )));
        }
        tokio::time::sleep(SWITCH_WAIT).await;
    };
    let up = catalog.membership().state(&to)? == WorkerState::Up;
    let switched = catalog
        .update(|s| {
            if let Some(why) = still_there(s, step) {
                return Ok(Err(why));
            }
            let Some(p) = placement_mut(s, &key, partition) else {
                return Ok(Err("the partition is gone".into()));
            };
            if !p.is_in_sync(&to) || !up {
                return Ok(Err(format!("the copy on {to} is not in sync and up")));
            }
            // `to` takes `from`'s place (a leader stays leader).
            p.replicas.retain(|w| *w != to);
            for w in p.replicas.iter_mut() {
                if *w == step.from {
                    *w = to.clone();
                }
            }
            p.out_of_sync.retain(|w| *w != step.from);
            crate::copies::forget_pending(s, &key, partition, std::slice::from_ref(&step.from));
            s.map.epoch += 1;
            Ok(Ok(()))
        })
        .await?;
    drop(_alone);
    if let Err(why) = switched {
        roll_back(catalog, step, &to).await?;
        return Ok(State::Skipped(why));
    }
    // 4. The old copy's files, once no running query may read them.
    retire(catalog, step, &step.from);
    Ok(State::Done)
}

/// How a split or merge step went.
enum Reshaped {
    AsPlanned,
    /// It changed nothing (skipped, or failed before its decision).
    Not(Result<State>),
    /// It made other partitions than planned.
    Otherwise(DataFusionError),
}

/// How long a partition whose split or merge failed is left whole.
const HOLD_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// Splits or merges the step's partition (see [`crate::reshape`]); it
/// must make the partitions the plan named, which later steps move. A
/// partition that cannot split (one key) or whose split leaves nearly
/// all rows in one half (a hot key) is held back until it has doubled;
/// one whose change failed otherwise, for a minute.
async fn reshape(
    catalog: &Arc<Catalog>,
    rebalancer: &Rebalancer,
    step: &Step,
    i: usize,
) -> Reshaped {
    let state = match catalog.state() {
        Ok(s) => s,
        Err(e) => return Reshaped::Not(Err(e)),
    };
    if let Some(why) = still_there(&state, step) {
        return Reshaped::Not(Ok(State::Skipped(why)));
    }
    let how = match (step.operation, step.with) {
        (Operation::Merge, Some(b)) => Reshape::Merge {
            a: step.partition,
            b,
        },
        _ => Reshape::Split {
            partition: step.partition,
            at: None,
        },
    };
    let held = &rebalancer.held;
    let done = match reshape_in_task(catalog, &step.table, Some(step.table_id), how).await {
        Ok(done) => done,
        Err(e) => {
            let text = e.to_string();
            let parts = [Some(step.partition), step.with].into_iter().flatten();
            if text.contains("another split or merge of") {
                // Not this step's failure: the next plan has it again.
            } else if text.contains("fewer than two distinct keys")
                || text.contains("a single hash")
            {
                held.until_grown(step.table_id, step.partition, step.bytes);
            } else {
                for p in parts {
                    held.for_a_while(step.table_id, p, HOLD_AFTER_FAILURE);
                }
            }
            return Reshaped::Not(Err(e));
        }
    };
    let made: Vec<u32> = done.children.iter().map(|c| c.id).collect();
    let written: u64 = done.children.iter().map(|c| c.bytes).sum();
    rebalancer.log.set(i, |r| r.bytes_copied += written);
    if made != step.makes {
        return Reshaped::Otherwise(ErrorKind::FailedPrecondition.error(format!(
            "it made partitions {made:?} and the plan named {:?} (the table's partitions \
             changed while the rebalance ran); its later steps are skipped, EXPLAIN REBALANCE \
             plans again",
            step.makes
        )));
    }
    if step.operation == Operation::Split {
        for child in &done.children {
            if child.bytes.saturating_mul(8) > written.saturating_mul(7) {
                held.until_grown(step.table_id, child.id, child.bytes);
            }
        }
    }
    Reshaped::AsPlanned
}

/// The placement of `key`'s `partition`, to change.
fn placement_mut<'a>(
    s: &'a mut crate::catalog_state::CatalogState,
    key: &str,
    partition: u32,
) -> Option<&'a mut tessera_sql::PartitionPlacement> {
    s.map
        .tables
        .get_mut(key)
        .and_then(|p| p.by_id_mut(partition))
}

/// The copies the table owning `key` asks for.
fn wanted(s: &crate::catalog_state::CatalogState, key: &str) -> usize {
    crate::catalog::owner_of(s, key)
        .map_or(1, |t| t.replication.replicas as usize)
        .max(1)
}

/// Takes a move's new copy out again while it is out of sync (the old
/// one never left). One in sync stays, an extra copy a later plan drops:
/// it may hold writes the old copy missed.
async fn roll_back(catalog: &Arc<Catalog>, step: &Step, to: &str) -> Result<()> {
    let (key, partition) = (step.map_key.clone(), step.partition);
    let removed = catalog
        .update(|s| {
            if still_there(s, step).is_some() {
                return Ok(false);
            }
            let Some(p) = placement_mut(s, &key, partition) else {
                return Ok(false);
            };
            if !p.replicas.iter().any(|w| w == to) || p.is_in_sync(to) {
                return Ok(false);
            }
            p.replicas.retain(|w| w != to);
            p.out_of_sync.retain(|w| w != to);
            crate::copies::forget_pending(s, &key, partition, &[to.to_string()]);
            s.map.epoch += 1;
            Ok(true)
        })
        .await?;
    if removed {
        retire(catalog, step, to);
    }
    Ok(())
}

/// Takes a copy beyond the table's count out (never the last in-sync
/// one).
async fn drop_copy(catalog: &Arc<Catalog>, step: &Step) -> Result<State> {
    let (key, partition) = (step.map_key.clone(), step.partition);
    let membership = catalog.membership();
    let dropped = catalog
        .update(|s| {
            if let Some(why) = still_there(s, step) {
                return Ok(Err(why));
            }
            let wanted = wanted(s, &key);
            let Some(p) = placement_mut(s, &key, partition) else {
                return Ok(Err("the partition is gone".into()));
            };
            // Another copy in sync on a worker that is up stays.
            let kept = p
                .in_sync()
                .filter(|w| *w != step.from)
                .any(|w| membership.state(w).is_ok_and(|s| s == WorkerState::Up));
            if p.replicas.len() <= wanted || !kept {
                return Ok(Err("the partition has no copy to spare".into()));
            }
            p.replicas.retain(|w| *w != step.from);
            p.out_of_sync.retain(|w| *w != step.from);
            crate::copies::forget_pending(s, &key, partition, std::slice::from_ref(&step.from));
            s.map.epoch += 1;
            Ok(Ok(()))
        })
        .await?;
    if let Err(why) = dropped {
        return Ok(State::Skipped(why));
    }
    retire(catalog, step, &step.from);
    Ok(State::Done)
}

/// `worker`'s copy of the step's partition, taken out of the map: its
/// files go once no running query may read them.
fn retire(catalog: &Arc<Catalog>, step: &Step, worker: &str) {
    let copy = (step.map_key.clone(), step.partition, worker.to_string());
    crate::copies::drop_files_later(catalog, step.table_id, vec![copy]);
}
