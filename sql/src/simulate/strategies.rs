//! The placement strategies the simulator compares. Each holds where its
//! partitions are, and says how many rows a join or a leave moved.
//! Workers are numbered from 0; the last one to join is the first to
//! leave.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::Data;
use crate::hash_partition;

/// A placement: loaded once, then workers join and leave.
pub(crate) trait Placement {
    /// Places the rows on `workers` workers; the rows moved doing so (a
    /// dynamic strategy's balancer spreading split ranges).
    fn load(&mut self, data: &Data, workers: u32) -> u64;
    /// One more worker; the rows moved to make room for it.
    fn join(&mut self, data: &Data) -> u64;
    /// The last worker leaves; the rows moved off it (and any others the
    /// strategy moves meanwhile).
    fn leave(&mut self, data: &Data) -> u64;
    fn rows_per_worker(&self, data: &Data) -> Vec<u64>;
    fn partitions_per_worker(&self) -> Vec<u32>;
    /// The partition (any id unique within this placement) and worker a
    /// row with this key and hash is on.
    fn locate(&self, key: u64, hash: u64) -> (u64, u32);
}

/// `worker = hash mod N`: the counter-example.
#[derive(Default)]
pub(crate) struct HashModN {
    workers: u32,
}

impl HashModN {
    fn moved(data: &Data, from: u32, to: u32) -> u64 {
        let (from, to) = (u64::from(from), u64::from(to));
        data.hashes.iter().filter(|h| *h % from != *h % to).count() as u64
    }
}

impl Placement for HashModN {
    fn load(&mut self, _: &Data, workers: u32) -> u64 {
        self.workers = workers;
        0
    }

    fn join(&mut self, data: &Data) -> u64 {
        self.workers += 1;
        Self::moved(data, self.workers - 1, self.workers)
    }

    fn leave(&mut self, data: &Data) -> u64 {
        self.workers -= 1;
        Self::moved(data, self.workers + 1, self.workers)
    }

    fn rows_per_worker(&self, data: &Data) -> Vec<u64> {
        let mut rows = vec![0; self.workers as usize];
        for h in &data.hashes {
            rows[(*h % u64::from(self.workers)) as usize] += 1;
        }
        rows
    }

    fn partitions_per_worker(&self) -> Vec<u32> {
        vec![1; self.workers as usize]
    }

    fn locate(&self, _: u64, hash: u64) -> (u64, u32) {
        let w = (hash % u64::from(self.workers)) as u32;
        (u64::from(w), w)
    }
}

/// `P` hash ranges for good; whole ones change hands until the count per
/// worker is fair.
pub(crate) struct Fixed {
    partitions: u32,
    owner: Vec<u32>,
    rows: Vec<u64>,
    workers: u32,
}

impl Fixed {
    pub(crate) fn new(partitions: u32) -> Self {
        Self {
            partitions,
            owner: vec![],
            rows: vec![],
            workers: 0,
        }
    }

    /// (partitions, rows) of each worker.
    fn loads(&self) -> Vec<(u32, u64)> {
        let mut loads = vec![(0, 0); self.workers as usize];
        for (p, w) in self.owner.iter().enumerate() {
            loads[*w as usize].0 += 1;
            loads[*w as usize].1 += self.rows[p];
        }
        loads
    }
}

impl Placement for Fixed {
    fn load(&mut self, data: &Data, workers: u32) -> u64 {
        self.workers = workers;
        self.rows = vec![0; self.partitions as usize];
        for h in &data.hashes {
            self.rows[hash_partition(*h, self.partitions) as usize] += 1;
        }
        self.owner = (0..self.partitions).map(|p| p % workers).collect();
        0
    }

    fn join(&mut self, _: &Data) -> u64 {
        let new = self.workers;
        self.workers += 1;
        let fair = self.partitions / self.workers;
        let share = self.rows.iter().sum::<u64>() / u64::from(self.workers);
        let mut moved = 0;
        loop {
            let loads = self.loads();
            let (count, rows) = loads[new as usize];
            if count >= fair {
                return moved;
            }
            // From the worker with most partitions (then most rows), the
            // partition closest in rows to what the new worker still lacks
            // per partition it still takes (so a hot partition does not
            // land on it with a full share besides).
            let Some(donor) = (0..new).max_by_key(|w| loads[*w as usize]) else {
                return moved;
            };
            let want = share.saturating_sub(rows) / u64::from(fair - count);
            let Some(p) = (0..self.owner.len())
                .filter(|p| self.owner[*p] == donor)
                .min_by_key(|p| self.rows[*p].abs_diff(want))
            else {
                return moved;
            };
            self.owner[p] = new;
            moved += self.rows[p];
        }
    }

    fn leave(&mut self, _: &Data) -> u64 {
        let gone = self.workers - 1;
        let mut theirs: Vec<usize> = (0..self.owner.len())
            .filter(|p| self.owner[*p] == gone)
            .collect();
        theirs.sort_by_key(|p| std::cmp::Reverse(self.rows[*p]));
        let mut moved = 0;
        for p in theirs {
            let loads = self.loads();
            let Some(to) = (0..gone).min_by_key(|w| loads[*w as usize]) else {
                break;
            };
            self.owner[p] = to;
            moved += self.rows[p];
        }
        self.workers -= 1;
        moved
    }

    fn rows_per_worker(&self, _: &Data) -> Vec<u64> {
        self.loads().into_iter().map(|(_, r)| r).collect()
    }

    fn partitions_per_worker(&self) -> Vec<u32> {
        self.loads().into_iter().map(|(p, _)| p).collect()
    }

    fn locate(&self, _: u64, hash: u64) -> (u64, u32) {
        let p = hash_partition(hash, self.partitions);
        (u64::from(p), self.owner[p as usize])
    }
}

/// Key ranges that split at their median past a size (the upper half stays
/// on the same worker, as a split does not move data); a balancer then
/// moves whole ranges from the fullest worker to the emptiest.
pub(crate) struct Dynamic {
    split_rows: u64,
    /// Ranges by their first key; the last runs to the end.
    ranges: Vec<Range>,
    workers: u32,
}

struct Range {
    start: u64,
    keys: Vec<u64>,
    worker: u32,
}

/// The balancer stops once the fullest worker is within this of the mean.
const BALANCED: f64 = 1.05;

impl Dynamic {
    pub(crate) fn new(split_rows: u64) -> Self {
        Self {
            split_rows: split_rows.max(2),
            ranges: vec![],
            workers: 0,
        }
    }

    fn range_of(&self, key: u64) -> usize {
        self.ranges
            .partition_point(|r| r.start <= key)
            .saturating_sub(1)
    }

    fn split(&mut self, i: usize) {
        let range = &mut self.ranges[i];
        range.keys.sort_unstable();
        let median = range.keys[range.keys.len() / 2];
        // Every key of the lower half below the median; a range of one key
        // cannot split.
        let mut at = range.keys.partition_point(|k| *k < median);
        if at == 0 {
            at = range.keys.partition_point(|k| *k <= median);
        }
        if at == range.keys.len() {
            return;
        }
        let upper = range.keys.split_off(at);
        let next = Range {
            start: upper[0],
            keys: upper,
            worker: range.worker,
        };
        self.ranges.insert(i + 1, next);
    }

    fn loads(&self) -> Vec<u64> {
        let mut loads = vec![0; self.workers as usize];
        for r in &self.ranges {
            loads[r.worker as usize] += r.keys.len() as u64;
        }
        loads
    }

    /// Moves whole ranges from the fullest worker to the emptiest while
    /// that lowers the fullest and it is above [`BALANCED`]; rows moved.
    fn balance(&mut self) -> u64 {
        let mut moved = 0;
        loop {
            let loads = self.loads();
            let total: u64 = loads.iter().sum();
            let mean = total as f64 / f64::from(self.workers);
            let (Some(donor), Some(to)) = (
                (0..self.workers).max_by_key(|w| loads[*w as usize]),
                (0..self.workers).min_by_key(|w| loads[*w as usize]),
            ) else {
                return moved;
            };
            let gap = loads[donor as usize] - loads[to as usize];
            if (loads[donor as usize] as f64) <= mean * BALANCED {
                return moved;
            }
            // The range closest to half the gap: the pair ends up closest.
            let best = (0..self.ranges.len())
                .filter(|i| self.ranges[*i].worker == donor)
                .filter(|i| (self.ranges[*i].keys.len() as u64) < gap)
                .min_by_key(|i| (self.ranges[*i].keys.len() as u64).abs_diff(gap / 2));
            let Some(i) = best else {
                return moved;
            };
            self.ranges[i].worker = to;
            moved += self.ranges[i].keys.len() as u64;
        }
    }
}

impl Placement for Dynamic {
    fn load(&mut self, data: &Data, workers: u32) -> u64 {
        self.workers = workers;
        self.ranges = vec![Range {
            start: 0,
            keys: vec![],
            worker: 0,
        }];
        for key in &data.keys {
            let i = self.range_of(*key);
            self.ranges[i].keys.push(*key);
            if self.ranges[i].keys.len() as u64 > self.split_rows {
                self.split(i);
            }
        }
        self.balance()
    }

    fn join(&mut self, _: &Data) -> u64 {
        self.workers += 1;
        self.balance()
    }

    fn leave(&mut self, _: &Data) -> u64 {
        let gone = self.workers - 1;
        let mut moved = 0;
        let mut theirs: Vec<usize> = (0..self.ranges.len())
            .filter(|i| self.ranges[*i].worker == gone)
            .collect();
        theirs.sort_by_key(|i| std::cmp::Reverse(self.ranges[*i].keys.len()));
        for i in theirs {
            let loads = self.loads();
            let Some(to) = (0..gone).min_by_key(|w| loads[*w as usize]) else {
                break;
            };
            self.ranges[i].worker = to;
            moved += self.ranges[i].keys.len() as u64;
        }
        self.workers -= 1;
        moved + self.balance()
    }

    fn rows_per_worker(&self, _: &Data) -> Vec<u64> {
        self.loads()
    }

    fn partitions_per_worker(&self) -> Vec<u32> {
        let mut counts = vec![0; self.workers as usize];
        for r in &self.ranges {
            counts[r.worker as usize] += 1;
        }
        counts
    }

    fn locate(&self, key: u64, _: u64) -> (u64, u32) {
        let r = &self.ranges[self.range_of(key)];
        (r.start, r.worker)
    }
}

/// About `n` hash ranges per worker: the first workers start with `n`
/// equal ones each; a joining worker splits `n` randomly chosen ranges at
/// their midpoints and takes one half of each; a leaving worker's ranges
/// merge into the ranges above them. A range is named by its end (a
/// token): a hash belongs to the first token above it, wrapping round.
pub(crate) struct Proportional {
    per_worker: u32,
    tokens: BTreeMap<u64, u32>,
    rng: StdRng,
    workers: u32,
}

impl Proportional {
    pub(crate) fn new(per_worker: u32, seed: u64) -> Self {
        Self {
            per_worker,
            tokens: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
            workers: 0,
        }
    }
}

impl Placement for Proportional {
    fn load(&mut self, _: &Data, workers: u32) -> u64 {
        let n = workers * self.per_worker;
        self.tokens = (0..n)
            .map(|i| (crate::hash_range(i, n).1.unwrap_or(0), i % workers))
            .collect();
        self.workers = workers;
        0
    }

    fn join(&mut self, data: &Data) -> u64 {
        let new = self.workers;
        self.workers += 1;
        let ends: Vec<u64> = self.tokens.keys().copied().collect();
        let count = (self.per_worker as usize).min(ends.len());
        for i in rand::seq::index::sample(&mut self.rng, ends.len(), count) {
            let end = ends[i];
            let start = ends[(i + ends.len() - 1) % ends.len()];
            let middle = start.wrapping_add(end.wrapping_sub(start) / 2);
            // A range of one hash does not split.
            if middle != start {
                self.tokens.insert(middle, new);
            }
        }
        // Everything the new worker holds came from the others.
        self.rows_per_worker(data)[new as usize]
    }

    fn leave(&mut self, data: &Data) -> u64 {
        let gone = self.workers - 1;
        let moved = self.rows_per_worker(data)[gone as usize];
        self.tokens.retain(|_, w| *w != gone);
        self.workers -= 1;
        moved
    }

    fn rows_per_worker(&self, data: &Data) -> Vec<u64> {
        let mut rows = vec![0; self.workers as usize];
        let mut previous = 0u64;
        for (token, w) in &self.tokens {
            rows[*w as usize] += data.rows_in(previous, Some(*token));
            previous = *token;
        }
        // Hashes above the last token wrap round to the first.
        if let Some((_, w)) = self.tokens.iter().next() {
            rows[*w as usize] += data.rows_in(previous, None);
        }
        rows
    }

    fn partitions_per_worker(&self) -> Vec<u32> {
        let mut counts = vec![0; self.workers as usize];
        for w in self.tokens.values() {
            counts[*w as usize] += 1;
        }
        counts
    }

    fn locate(&self, _: u64, hash: u64) -> (u64, u32) {
        let found = self
            .tokens
            .range(hash.saturating_add(1)..)
            .next()
            .or_else(|| self.tokens.iter().next());
        found.map_or((0, 0), |(t, w)| (*t, *w))
    }
}
