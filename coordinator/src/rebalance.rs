//! Rebalancing, planned then applied. The plan evens out the copies of
//! each table's partitions (and of its GLOBAL indexes' partitions) over
//! the workers that are up and active: a copy on a draining or
//! decommissioned worker moves off it; then, per table, whole copies move
//! from the worker holding most to the one holding fewest until the counts
//! differ by at most one (the FIXED strategy: the partition count never
//! changes); a partition with more copies than the table asks for (a move
//! cut short) loses the extra one. A worker that is merely down moves
//! nothing. The choice of partition goes by the placement alone, so tables
//! placed alike (co-located for joins) move partition i together.
//!
//! Before the moves, a table whose strategy changes its partitions has
//! them split or merged (see [`reshape`]): REBALANCE DYNAMIC splits a
//! partition past its split size and merges neighbours both under the
//! merge size (never below one partition per worker); REBALANCE
//! PROPORTIONAL splits its largest partitions until it has its partitions
//! per worker for every worker (and merges its smallest neighbours when
//! workers left), and the moves then hand the halves to the workers
//! holding fewest. The plan names the ids a split or merge will make (ids
//! only grow, so they are known), and the moves after it use them.
//!
//! ```text
//! move p from A to B:  add B as a copy out of sync ─► catch it up (files
//!   copied from an in-sync copy; writes held back a moment at the end)
//!   ─► switch: B takes A's place (new epoch, one compare-and-swap, with
//!   the table's writes held back for it) ─► A's files go once no running
//!   query may read them
//! ```

mod apply;
mod auto;
mod log;
mod reshape;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_sql::{PartitionPlacement, Placements};

use crate::catalog_state::CatalogState;

pub use apply::apply;
pub use auto::spawn_auto_rebalance;
pub use log::{RebalanceLog, show_schema};

/// The rebalancer's runtime state (the engine owns it): its switches and
/// the record of the running (or last) rebalance.
#[derive(Debug, Default)]
pub struct Rebalancer {
    /// `SET tessera.rebalance_rate`, which every catch-up obeys.
    pub copy_rate: Arc<crate::catch_up::CopyRate>,
    /// `SET tessera.auto_rebalance = 'on'`.
    pub(crate) auto: AtomicBool,
    /// Wakes the automatic rebalance (a worker joined or drains, or it
    /// was switched on).
    pub(crate) wanted: tokio::sync::Notify,
    /// The steps of the running (or last) rebalance.
    pub(crate) log: RebalanceLog,
    /// Partitions the plan leaves whole for now.
    pub(crate) held: HeldBack,
}

impl Rebalancer {
    /// Whether `SET tessera.auto_rebalance = 'on'` holds.
    pub fn auto(&self) -> bool {
        self.auto.load(Ordering::SeqCst)
    }

    pub fn set_auto(&self, on: bool) {
        self.auto.store(on, Ordering::SeqCst);
        self.wanted.notify_one();
    }

    /// The workers changed: the automatic rebalance looks again.
    pub fn wake(&self) {
        self.wanted.notify_one();
    }
}

/// Partitions the plan does not split or merge for now: one whose split
/// or merge failed, or a split's half that took nearly all the rows (a
/// hot key), so that the automatic rebalance does not try it again and
/// again.
#[derive(Debug, Default)]
pub struct HeldBack(Mutex<BTreeMap<(u64, u32), Hold>>);

#[derive(Debug, Clone, Copy)]
enum Hold {
    /// Until the partition holds this many bytes.
    Grown(u64),
    /// Until then.
    Until(Instant),
}

impl HeldBack {
    /// Holds `table`'s `partition` until it holds twice `bytes`.
    pub fn until_grown(&self, table: u64, partition: u32, bytes: u64) {
        if let Ok(mut held) = self.0.lock() {
            held.insert(
                (table, partition),
                Hold::Grown(bytes.saturating_mul(2).max(1)),
            );
        }
    }

    /// Holds `table`'s `partition` for `wait`.
    pub fn for_a_while(&self, table: u64, partition: u32, wait: Duration) {
        if let Ok(mut held) = self.0.lock() {
            held.insert((table, partition), Hold::Until(Instant::now() + wait));
        }
    }

    /// Forgets partitions no longer in the map (merged or split away, or
    /// of a table dropped).
    fn forget_gone(&self, state: &CatalogState) {
        let Ok(mut held) = self.0.lock() else {
            return;
        };
        held.retain(|(table, partition), _| {
            state.tables.values().any(|t| {
                t.id == *table
                    && state
                        .map
                        .tables
                        .get(&t.name)
                        .is_some_and(|p| p.by_id(*partition).is_some())
            })
        });
    }

    /// Whether `table`'s `partition`, of `bytes` now, is held.
    pub fn holds(&self, table: u64, partition: u32, bytes: u64) -> bool {
        let Ok(mut held) = self.0.lock() else {
            return false;
        };
        let holds = match held.get(&(table, partition)) {
            None => return false,
            Some(Hold::Grown(at)) => bytes < *at,
            Some(Hold::Until(at)) => Instant::now() < *at,
        };
        if !holds {
            held.remove(&(table, partition));
        }
        holds
    }
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A copy goes from one worker to another.
    Move,
    /// A copy beyond the table's count goes.
    DropCopy,
    /// The partition becomes two (`Step::makes`), on its copies.
    Split,
    /// The partition and its upper neighbour (`Step::with`) become one
    /// (`Step::makes`), on the partition's copies.
    Merge,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Move => "move",
            Operation::DropCopy => "drop copy",
            Operation::Split => "split",
            Operation::Merge => "merge",
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The partition map entry: a table, or a GLOBAL index's partitions.
    pub map_key: String,
    /// The table it belongs to, and its id when planned.
    pub table: String,
    pub table_id: u64,
    pub partition: u32,
    pub operation: Operation,
    pub bytes: u64,
    pub from: String,
    pub to: Option<String>,
    /// A merge's other partition.
    pub with: Option<u32>,
    /// The partitions a split or merge makes.
    pub makes: Vec<u32>,
    /// Of `bytes`, those that go from one worker to another: a move's, or
    /// those of a merge's upper partition when its copies are elsewhere.
    pub crossing: u64,
}

/// How evenly the workers hold the data: most over mean, of bytes and of
/// copies.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Skew {
    pub bytes: f64,
    pub partitions: f64,
}

/// The steps, and the skew before and after them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub before: Skew,
    pub after: Skew,
    /// The least that must move for every eligible worker to hold a fair
    /// share of the bytes (and nothing to stay on a draining one).
    pub optimum_bytes: u64,
}

impl Step {
    /// The partitions a split or merge makes, as a list (`None` for other
    /// steps).
    pub fn new_partitions(&self) -> Option<String> {
        let ids: Vec<String> = self.makes.iter().map(u32::to_string).collect();
        (!ids.is_empty()).then(|| ids.join(", "))
    }
}

impl Plan {
    pub fn moved_bytes(&self) -> u64 {
        self.steps.iter().map(|s| s.crossing).sum()
    }
}

/// How each worker is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Up and active: takes copies.
    Eligible,
    /// Draining or decommissioned: copies move off it.
    Drain,
    /// Down: nothing moves because of it.
    Down,
}

/// What each worker is to the planner: up and active ones take copies,
/// draining and decommissioned ones give theirs away, down ones are left
/// as they are.
pub fn roles(
    catalog: &crate::catalog::Catalog,
) -> datafusion::common::Result<BTreeMap<String, Role>> {
    use crate::membership::WorkerState;
    let mut roles = BTreeMap::new();
    for id in catalog.members()?.keys() {
        let role = match catalog.membership().state(id)? {
            WorkerState::Up | WorkerState::Suspect => Role::Eligible,
            WorkerState::Draining | WorkerState::Decommissioned => Role::Drain,
            WorkerState::Down => Role::Down,
        };
        roles.insert(id.clone(), role);
    }
    Ok(roles)
}

/// Plans the moves for every table (or `only` one) of `state`, given what
/// each worker is.
/// `held` partitions are not split or merged.
pub fn plan(
    state: &CatalogState,
    roles: &BTreeMap<String, Role>,
    only: Option<&str>,
    held: &HeldBack,
) -> Plan {
    let mut optimum_bytes = 0;
    let mut after: BTreeMap<String, Vec<PartitionPlacement>> = state.map.tables.clone();
    let mut sizes = Sizes::new(state);
    let mut steps = vec![];
    let eligible: Vec<&String> = roles
        .iter()
        .filter(|(_, r)| **r == Role::Eligible)
        .map(|(w, _)| w)
        .collect();
    held.forget_gone(state);
    // A table's partition count follows the workers it is kept on: those
    // up and those merely down (a worker that is down for a while must
    // not make tables merge, and split again when it is back).
    let kept_on = roles.values().filter(|r| **r != Role::Drain).count();
    for (key, placements) in after.iter_mut() {
        let Some(owner) = crate::catalog::owner_of(state, key) else {
            continue;
        };
        if only.is_some_and(|t| t != owner.name) {
            continue;
        }
        let wanted = owner.replication.replicas as usize;
        optimum_bytes += lacking(&sizes, key, placements, roles, wanted.max(1));
        let step = |partition: u32, operation, from: &str, to: Option<&str>, sizes: &Sizes| {
            let bytes = sizes.of(key, partition);
            Step {
                map_key: key.clone(),
                table: owner.name.clone(),
                table_id: owner.id,
                partition,
                operation,
                bytes,
                from: from.to_string(),
                to: to.map(String::from),
                with: None,
                makes: vec![],
                crossing: if operation == Operation::Move {
                    bytes
                } else {
                    0
                },
            }
        };
        let count = |placements: &[PartitionPlacement], w: &str| {
            placements
                .iter()
                .filter(|p| p.replicas.iter().any(|r| r == w))
                .count()
        };
        // Copies beyond the table's count: one out of sync, else one on a
        // worker that is down or draining, else the last (never the
        // leader while another copy is left).
        for p in placements.iter_mut() {
            while p.replicas.len() > wanted.max(1) {
                let away = p
                    .replicas
                    .iter()
                    .rev()
                    .find(|w| roles.get(*w).is_none_or(|r| *r != Role::Eligible));
                let gone = p
                    .out_of_sync
                    .last()
                    .or(away)
                    .or(p.replicas.last())
                    .cloned()
                    .unwrap_or_default();
                p.replicas.retain(|w| *w != gone);
                p.out_of_sync.retain(|w| *w != gone);
                steps.push(step(p.id, Operation::DropCopy, &gone, None, &sizes));
            }
        }
        // Splits and merges the table's strategy asks for.
        if *key == owner.name && reshape::may_reshape(state, owner) {
            let up = eligible.iter().map(|w| (*w).clone()).collect();
            for change in reshape::plan(owner, placements, &mut sizes, kept_on, held, up) {
                let mut s = step(
                    change.partition,
                    change.operation,
                    &change.from,
                    None,
                    &sizes,
                );
                s.bytes = change.bytes;
                s.with = change.with;
                s.crossing = change.crossing;
                s.makes = change.makes;
                steps.push(s);
            }
        }
        // Off draining workers: to the eligible one with fewest copies of
        // this table that does not hold the partition.
        for i in 0..placements.len() {
            let draining: Vec<String> = placements[i]
                .replicas
                .iter()
                .filter(|w| roles.get(*w) == Some(&Role::Drain))
                .cloned()
                .collect();
            for from in draining {
                let to = eligible
                    .iter()
                    .filter(|w| !placements[i].replicas.contains(w))
                    .min_by_key(|w| count(placements, w))
                    .map(|w| (*w).clone());
                let Some(to) = to else {
                    continue;
                };
                replace(&mut placements[i], &from, &to);
                let id = placements[i].id;
                steps.push(step(id, Operation::Move, &from, Some(&to), &sizes));
            }
        }
        // Even the counts: from the eligible worker holding most to the one
        // holding fewest, the highest-numbered partition it can take.
        loop {
            let most = eligible.iter().max_by_key(|w| count(placements, w));
            let fewest = eligible.iter().min_by_key(|w| count(placements, w));
            let (Some(most), Some(fewest)) = (most, fewest) else {
                break;
            };
            if count(placements, most) <= count(placements, fewest) + 1 {
                break;
            }
            let Some(i) = (0..placements.len())
                .filter(|i| {
                    let r = &placements[*i].replicas;
                    r.contains(most) && !r.contains(fewest)
                })
                .max_by_key(|i| placements[*i].id)
            else {
                break;
            };
            replace(&mut placements[i], most, fewest);
            let id = placements[i].id;
            steps.push(step(id, Operation::Move, most, Some(fewest), &sizes));
        }
    }
    Plan {
        steps,
        before: skew(&sizes, &state.map.tables, roles),
        after: skew(&sizes, &after, roles),
        optimum_bytes,
    }
}

/// The bytes of every partition: as the catalog counts them, and as a
/// planned split or merge will leave them.
pub(crate) struct Sizes<'a> {
    state: &'a CatalogState,
    planned: BTreeMap<(String, u32), u64>,
}

impl<'a> Sizes<'a> {
    fn new(state: &'a CatalogState) -> Self {
        Sizes {
            state,
            planned: BTreeMap::new(),
        }
    }

    pub(crate) fn of(&self, key: &str, partition: u32) -> u64 {
        match self.planned.get(&(key.to_string(), partition)) {
            Some(b) => *b,
            None => self.state.partition_stats(key, partition).bytes,
        }
    }

    pub(crate) fn set(&mut self, key: &str, partition: u32, bytes: u64) {
        self.planned.insert((key.to_string(), partition), bytes);
    }
}

/// `to` takes `from`'s place among the copies (a leader stays leader).
fn replace(p: &mut PartitionPlacement, from: &str, to: &str) {
    for w in p.replicas.iter_mut() {
        if w == from {
            *w = to.to_string();
        }
    }
    p.out_of_sync.retain(|w| w != from);
}

/// The skew of `placements` over the eligible workers and those still
/// holding something.
fn skew(
    sizes: &Sizes,
    placements: &BTreeMap<String, Vec<PartitionPlacement>>,
    roles: &BTreeMap<String, Role>,
) -> Skew {
    let mut bytes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut copies: BTreeMap<&str, u64> = BTreeMap::new();
    for (w, role) in roles {
        if *role == Role::Eligible {
            bytes.insert(w, 0);
            copies.insert(w, 0);
        }
    }
    for (key, parts) in placements {
        for p in parts {
            for w in &p.replicas {
                *bytes.entry(w).or_default() += sizes.of(key, p.id);
                *copies.entry(w).or_default() += 1;
            }
        }
    }
    let ratio = |m: &BTreeMap<&str, u64>| {
        let total: u64 = m.values().sum();
        let max = m.values().copied().max().unwrap_or(0);
        if total == 0 {
            1.0
        } else {
            max as f64 * m.len() as f64 / total as f64
        }
    };
    Skew {
        bytes: ratio(&bytes),
        partitions: ratio(&copies),
    }
}

/// What the eligible workers lack of a fair share of `key`'s bytes: the
/// least that must move to them.
fn lacking(
    sizes: &Sizes,
    key: &str,
    placements: &[PartitionPlacement],
    roles: &BTreeMap<String, Role>,
    wanted: usize,
) -> u64 {
    let eligible: Vec<&String> = roles
        .iter()
        .filter(|(_, r)| **r == Role::Eligible)
        .map(|(w, _)| w)
        .collect();
    let held = |w: &str| -> u64 {
        placements
            .iter()
            .filter(|p| p.replicas.iter().any(|r| r == w))
            .map(|p| sizes.of(key, p.id))
            .sum()
    };
    // The copies to share out: those the table asks for, not counting
    // copies on workers that are down (they stay where they are).
    let total: u64 = placements
        .iter()
        .map(|p| {
            let movable = p
                .replicas
                .iter()
                .filter(|w| roles.get(*w).is_some_and(|r| *r != Role::Down))
                .count()
                .min(wanted);
            sizes.of(key, p.id) * movable as u64
        })
        .sum();
    let fair = total.checked_div(eligible.len() as u64).unwrap_or(0);
    eligible.iter().map(|w| fair.saturating_sub(held(w))).sum()
}

#[cfg(test)]
mod tests;
