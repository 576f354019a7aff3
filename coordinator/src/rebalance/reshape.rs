//! The splits and merges a table's strategy asks for, planned on the
//! plan's copy of its placements: REBALANCE DYNAMIC splits what is past
//! its split size and merges neighbours both under its merge size, never
//! below one partition per worker; REBALANCE PROPORTIONAL splits its
//! largest partitions (the widest hash slices among equals) until it has
//! its partitions per worker for every worker, and merges its smallest
//! neighbours when there are more. Ids only grow (see
//! [`tessera_sql::PartitionLayout`]), so the plan knows the ids each change
//! makes, and the moves after it name them.

use std::collections::BTreeSet;

use tessera_sql::{KeyRange, PartitionLayout, PartitionPlacement, Strategy, TableDef};

use super::{HeldBack, Operation, Sizes};
use crate::catalog_state::CatalogState;

/// One split or merge, as planned.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Change {
    pub operation: Operation,
    pub partition: u32,
    /// A merge's upper neighbour.
    pub with: Option<u32>,
    /// The partitions it makes.
    pub makes: Vec<u32>,
    /// The leader of the partition's copies.
    pub from: String,
    /// What it reads and writes.
    pub bytes: u64,
    /// What goes from one worker to another: a merge's upper neighbour,
    /// when its copies are elsewhere.
    pub crossing: u64,
}

/// Whether `table`'s partitions may split or merge: its strategy changes
/// them, and it has no GLOBAL ASYNC index (whose outbox would have to
/// follow) and no index still being built.
pub(super) fn may_reshape(state: &CatalogState, table: &TableDef) -> bool {
    !table.rebalance.is_fixed()
        && state
            .indexes
            .values()
            .filter(|i| i.table == table.name)
            .all(|i| i.kind != tessera_sql::IndexKind::GlobalAsync && i.is_ready())
}

/// Plans `table`'s splits and merges for the `workers` it is kept on, and
/// makes them in `placements` (in key order) and `sizes`; `held`
/// partitions, and those with a copy on a worker not `up`, stay as they
/// are.
pub(super) fn plan(
    table: &TableDef,
    placements: &mut Vec<PartitionPlacement>,
    sizes: &mut Sizes,
    workers: usize,
    held: &HeldBack,
    up: BTreeSet<String>,
) -> Vec<Change> {
    if workers == 0 {
        return vec![];
    }
    let held = |p: &PartitionPlacement, sizes: &Sizes| {
        held.holds(table.id, p.id, sizes.of(&table.name, p.id))
    };
    let mut sim = Sim {
        key: table.name.clone(),
        initial: PartitionLayout::initial(&table.scheme),
        next_id: placements.iter().map(|p| p.id + 1).max().unwrap_or(0),
        up,
        made: vec![],
        changes: vec![],
    };
    match table.rebalance {
        Strategy::Fixed => {}
        Strategy::Dynamic {
            split_bytes,
            merge_bytes,
        } => {
            let mut i = 0;
            while i < placements.len() {
                if sizes.of(&sim.key, placements[i].id) > split_bytes
                    && sim.may_split(&placements[i])
                    && !held(&placements[i], sizes)
                {
                    sim.split(placements, sizes, i);
                    i += 2;
                } else {
                    i += 1;
                }
            }
            let mut i = 0;
            while i + 1 < placements.len() && placements.len() > workers {
                let small = |p: &PartitionPlacement| {
                    sizes.of(&sim.key, p.id) < merge_bytes && !sim.made_here(p) && !held(p, sizes)
                };
                if small(&placements[i])
                    && small(&placements[i + 1])
                    && sim.may_merge(&placements[i], &placements[i + 1])
                {
                    sim.merge(placements, sizes, i);
                }
                i += 1;
            }
        }
        Strategy::Proportional { per_worker } => {
            let target = per_worker as usize * workers;
            while placements.len() < target {
                let largest = (0..placements.len())
                    .filter(|i| sim.may_split(&placements[*i]) && !held(&placements[*i], sizes))
                    .max_by_key(|i| {
                        let p = &placements[*i];
                        (
                            sizes.of(&sim.key, p.id),
                            sim.width(p),
                            std::cmp::Reverse(p.id),
                        )
                    });
                let Some(i) = largest else {
                    break;
                };
                sim.split(placements, sizes, i);
            }
            while placements.len() > target.max(1) {
                let smallest = (0..placements.len().saturating_sub(1))
                    .filter(|i| {
                        let (a, b) = (&placements[*i], &placements[*i + 1]);
                        sim.may_merge(a, b) && !held(a, sizes) && !held(b, sizes)
                    })
                    .min_by_key(|i| {
                        sizes.of(&sim.key, placements[*i].id)
                            + sizes.of(&sim.key, placements[*i + 1].id)
                    });
                let Some(i) = smallest else {
                    break;
                };
                sim.merge(placements, sizes, i);
            }
        }
    }
    sim.changes
}

/// The plan's running state for one table.
struct Sim {
    key: String,
    /// Slices of partitions that have none of their own in the map.
    initial: PartitionLayout,
    next_id: u32,
    /// The workers up and active.
    up: BTreeSet<String>,
    /// Partitions made in this plan.
    made: Vec<u32>,
    changes: Vec<Change>,
}

impl Sim {
    fn made_here(&self, p: &PartitionPlacement) -> bool {
        self.made.contains(&p.id)
    }

    fn range(&self, p: &PartitionPlacement) -> Option<KeyRange> {
        p.range
            .clone()
            .or_else(|| self.initial.range_of(p.id).cloned())
    }

    /// Hashes in a HASH partition's slice (0 for a RANGE one).
    fn width(&self, p: &PartitionPlacement) -> u128 {
        match self.range(p) {
            Some(KeyRange::Hash { start, end }) => {
                end.map_or(1u128 << 64, u128::from) - u128::from(start)
            }
            _ => 0,
        }
    }

    /// In sync everywhere, and a HASH slice of two hashes or more (a
    /// RANGE partition's keys are only known when it splits).
    /// Every copy in sync on a worker that is up: one that cannot be read
    /// or written now would only make the change fail.
    fn all_up(&self, p: &PartitionPlacement) -> bool {
        p.out_of_sync.is_empty() && p.replicas.iter().all(|w| self.up.contains(w))
    }

    fn may_split(&self, p: &PartitionPlacement) -> bool {
        self.all_up(p)
            && match self.range(p) {
                Some(KeyRange::Hash { .. }) => self.width(p) >= 2,
                Some(KeyRange::Range { .. }) => true,
                _ => false,
            }
    }

    fn may_merge(&self, a: &PartitionPlacement, b: &PartitionPlacement) -> bool {
        self.all_up(a) && self.all_up(b)
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.made.push(id);
        id
    }

    fn split(&mut self, placements: &mut Vec<PartitionPlacement>, sizes: &mut Sizes, i: usize) {
        let parent = placements[i].clone();
        let bytes = sizes.of(&self.key, parent.id);
        // A HASH slice splits at its middle; a RANGE one's halves are
        // known once it splits at its median (the slices here then stay
        // unknown: only counts and sizes are planned on).
        let halves = match self.range(&parent) {
            Some(KeyRange::Hash { start, end }) => {
                let middle = ((u128::from(start) + end.map_or(1u128 << 64, u128::from)) / 2) as u64;
                [
                    Some(KeyRange::Hash {
                        start,
                        end: Some(middle),
                    }),
                    Some(KeyRange::Hash { start: middle, end }),
                ]
            }
            _ => [None, None],
        };
        let (lower, upper) = (self.take_id(), self.take_id());
        let child = |id: u32, range: Option<KeyRange>| PartitionPlacement {
            id,
            replicas: parent.replicas.clone(),
            out_of_sync: vec![],
            range,
        };
        let [l, u] = halves;
        placements.splice(i..=i, [child(lower, l), child(upper, u)]);
        sizes.set(&self.key, lower, bytes / 2);
        sizes.set(&self.key, upper, bytes - bytes / 2);
        self.changes.push(Change {
            operation: Operation::Split,
            partition: parent.id,
            with: None,
            makes: vec![lower, upper],
            from: parent.leader().to_string(),
            bytes,
            crossing: 0,
        });
    }

    fn merge(&mut self, placements: &mut Vec<PartitionPlacement>, sizes: &mut Sizes, i: usize) {
        let (a, b) = (placements[i].clone(), placements[i + 1].clone());
        let (a_bytes, b_bytes) = (sizes.of(&self.key, a.id), sizes.of(&self.key, b.id));
        let range = match (self.range(&a), self.range(&b)) {
            (Some(KeyRange::Hash { start, .. }), Some(KeyRange::Hash { end, .. })) => {
                Some(KeyRange::Hash { start, end })
            }
            _ => None,
        };
        let id = self.take_id();
        placements.splice(
            i..=i + 1,
            [PartitionPlacement {
                id,
                replicas: a.replicas.clone(),
                out_of_sync: vec![],
                range,
            }],
        );
        sizes.set(&self.key, id, a_bytes + b_bytes);
        let mut held_a = a.replicas.clone();
        let mut held_b = b.replicas.clone();
        held_a.sort();
        held_b.sort();
        self.changes.push(Change {
            operation: Operation::Merge,
            partition: a.id,
            with: Some(b.id),
            makes: vec![id],
            from: a.leader().to_string(),
            bytes: a_bytes + b_bytes,
            crossing: if held_a == held_b { 0 } else { b_bytes },
        });
    }
}
