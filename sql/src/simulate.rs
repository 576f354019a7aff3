//! `tessera simulate`: the placement strategies replayed on a key stream,
//! without a cluster. The rows are loaded onto the first workers, then
//! workers join one by one and leave again; after each step the model
//! counts the rows that moved against the least that had to (a joining
//! worker's fair share, 1/(N+1) of the rows; a leaving worker's rows), the
//! skew (max/mean rows per worker), partitions per worker, and how many
//! partitions and workers a range scan and a point read touch.
//!
//! ```text
//! HASH MOD N     worker = hash mod N: a join moves N/(N+1) of the rows
//! FIXED P        P hash ranges; a joining worker steals whole ones until
//!                the count per worker is fair: 1/(N+1) moves
//! DYNAMIC        key ranges split at their median past a size; the
//!                balancer moves whole ranges to even the rows out
//! PROPORTIONAL n n random tokens per worker on the hash ring; a joining
//!                worker's tokens split the ranges they land in
//! ```

mod keys;
mod strategies;

use std::collections::BTreeSet;

use datafusion::common::{Result, plan_err};
use rand::SeedableRng;
use rand::rngs::StdRng;

pub use keys::Keys;
use strategies::{Dynamic, Fixed, HashModN, Placement, Proportional};

/// One placement strategy of the comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    HashModN,
    Fixed(u32),
    /// Split a key range past this many rows.
    Dynamic(u64),
    /// Tokens per worker.
    Proportional(u32),
}

impl Strategy {
    pub fn label(&self) -> String {
        match self {
            Strategy::HashModN => "hash mod n".into(),
            Strategy::Fixed(p) => format!("fixed {p}"),
            Strategy::Dynamic(_) => "dynamic".into(),
            Strategy::Proportional(n) => format!("proportional {n}"),
        }
    }

    /// The strategies `--strategy` names: `all`, or a comma list of
    /// `mod`, `fixed` (64 and 256), `fixed:P`, `dynamic`, `proportional`,
    /// `proportional:n`. `split_rows` is DYNAMIC's split size.
    pub fn parse_list(s: &str, split_rows: u64) -> Result<Vec<Strategy>> {
        let mut out = vec![];
        for name in s.split(',').map(str::trim) {
            let (name, arg) = match name.split_once(':') {
                Some((n, a)) => (n, Some(a)),
                None => (name, None),
            };
            let number = |default: u32| -> Result<u32> {
                match arg {
                    None => Ok(default),
                    Some(a) => match a.parse::<u32>() {
                        Ok(n) if (1..=100_000).contains(&n) => Ok(n),
                        _ => plan_err!("'{a}' is not a count from 1 to 100000 in '{s}'"),
                    },
                }
            };
            match name {
                "all" => out.extend([
                    Strategy::HashModN,
                    Strategy::Fixed(64),
                    Strategy::Fixed(256),
                    Strategy::Dynamic(split_rows),
                    Strategy::Proportional(8),
                ]),
                "mod" | "hash-mod-n" => out.push(Strategy::HashModN),
                "fixed" if arg.is_none() => out.extend([Strategy::Fixed(64), Strategy::Fixed(256)]),
                "fixed" => out.push(Strategy::Fixed(number(64)?)),
                "dynamic" => out.push(Strategy::Dynamic(split_rows)),
                "proportional" => out.push(Strategy::Proportional(number(8)?)),
                other => {
                    return plan_err!(
                        "unknown strategy '{other}'; use all, mod, fixed, fixed:P, dynamic, \
                         proportional or proportional:n"
                    );
                }
            }
        }
        Ok(out)
    }
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct Config {
    pub keys: Keys,
    pub rows: u64,
    /// Workers at the start; workers join up to `to`, then leave down to
    /// `from` again.
    pub from: u32,
    pub to: u32,
    pub strategies: Vec<Strategy>,
    pub seed: u64,
}

/// A step of one strategy's replay (or its total: `event` "total").
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub strategy: String,
    pub step: u32,
    pub event: String,
    /// Workers after the step.
    pub workers: u32,
    pub moved_rows: u64,
    /// The least that had to move.
    pub optimum_rows: u64,
    /// Most rows on one worker over the mean.
    pub max_mean_rows: f64,
    pub partitions: u32,
    pub max_partitions_per_worker: u32,
    /// Mean partitions (workers) a scan of 1% of the key range touches.
    pub range_scan_partitions: f64,
    pub range_scan_workers: f64,
    /// Partitions a point read touches.
    pub point_read_partitions: f64,
}

/// The key stream, its hashes, and the rows of sample range scans.
pub(crate) struct Data {
    /// Keys in arrival order.
    pub keys: Vec<u64>,
    /// `hashes[i]` is the hash of `keys[i]`.
    pub hashes: Vec<u64>,
    /// All hashes, sorted (rows in a hash range by binary search).
    pub sorted_hashes: Vec<u64>,
    /// Row numbers of each sample range scan (1% of the key range each).
    pub scans: Vec<Vec<usize>>,
}

/// How many sample range scans fan-out is averaged over.
const SCANS: usize = 20;

impl Data {
    fn new(keys: Vec<u64>, rng: &mut StdRng) -> Self {
        use rand::Rng;
        let hashes: Vec<u64> = keys.iter().map(|k| keys::hash(*k)).collect();
        let mut sorted_hashes = hashes.clone();
        sorted_hashes.sort_unstable();
        let mut by_key: Vec<usize> = (0..keys.len()).collect();
        by_key.sort_unstable_by_key(|i| keys[*i]);
        let width = (keys.len() / 100).max(1);
        let scans = (0..SCANS)
            .map(|_| {
                let start = rng.random_range(0..keys.len().saturating_sub(width).max(1));
                by_key[start..(start + width).min(keys.len())].to_vec()
            })
            .collect();
        Self {
            keys,
            hashes,
            sorted_hashes,
            scans,
        }
    }

    /// Rows whose hash is in `[start, end)` (`end` None: to 2^64).
    pub fn rows_in(&self, start: u64, end: Option<u64>) -> u64 {
        let a = self.sorted_hashes.partition_point(|h| *h < start);
        let b = match end {
            Some(e) => self.sorted_hashes.partition_point(|h| *h < e),
            None => self.sorted_hashes.len(),
        };
        b.saturating_sub(a) as u64
    }
}

/// Replays `config`: every strategy's steps, each followed by its total.
pub fn simulate(config: &Config) -> Result<Vec<Step>> {
    simulate_with(config, |_| {})
}

/// [`simulate`], calling `done` after each strategy.
pub fn simulate_with(config: &Config, mut done: impl FnMut(&Strategy)) -> Result<Vec<Step>> {
    if config.from == 0 || config.to < config.from {
        return plan_err!(
            "--workers {}..{} must go up from at least 1",
            config.from,
            config.to
        );
    }
    if config.rows == 0 {
        return plan_err!("--rows must be at least 1");
    }
    let mut rng = StdRng::seed_from_u64(config.seed);
    let keys = config.keys.generate(config.rows, &mut rng);
    let data = Data::new(keys, &mut rng);
    let mut out = vec![];
    for (i, strategy) in config.strategies.iter().enumerate() {
        let seed = config.seed.wrapping_add(i as u64 + 1);
        let mut placement: Box<dyn Placement> = match *strategy {
            Strategy::HashModN => Box::new(HashModN::default()),
            Strategy::Fixed(p) => Box::new(Fixed::new(p)),
            Strategy::Dynamic(split) => Box::new(Dynamic::new(split)),
            Strategy::Proportional(n) => Box::new(Proportional::new(n, seed)),
        };
        out.extend(replay(&data, strategy, placement.as_mut(), config));
        done(strategy);
    }
    Ok(out)
}

fn replay(
    data: &Data,
    strategy: &Strategy,
    placement: &mut dyn Placement,
    config: &Config,
) -> Vec<Step> {
    let mut steps = vec![];
    let moved = placement.load(data, config.from);
    steps.push(measure(
        data,
        strategy,
        placement,
        0,
        "load".into(),
        moved,
        0,
    ));
    let mut step = 0;
    for n in config.from..config.to {
        step += 1;
        let optimum = data.keys.len() as u64 / u64::from(n + 1);
        let moved = placement.join(data);
        let event = format!("join w{}", n + 1);
        steps.push(measure(
            data, strategy, placement, step, event, moved, optimum,
        ));
    }
    for n in (config.from..config.to).rev() {
        step += 1;
        let optimum = placement.rows_per_worker(data)[n as usize];
        let moved = placement.leave(data);
        let event = format!("leave w{}", n + 1);
        steps.push(measure(
            data, strategy, placement, step, event, moved, optimum,
        ));
    }
    let last = steps.last().cloned();
    let total = Step {
        strategy: strategy.label(),
        step: step + 1,
        event: "total".into(),
        workers: config.from,
        moved_rows: steps.iter().skip(1).map(|s| s.moved_rows).sum(),
        optimum_rows: steps.iter().skip(1).map(|s| s.optimum_rows).sum(),
        max_mean_rows: steps.iter().map(|s| s.max_mean_rows).fold(0.0, f64::max),
        partitions: last.as_ref().map_or(0, |s| s.partitions),
        max_partitions_per_worker: steps
            .iter()
            .map(|s| s.max_partitions_per_worker)
            .max()
            .unwrap_or(0),
        range_scan_partitions: mean(steps.iter().map(|s| s.range_scan_partitions)),
        range_scan_workers: mean(steps.iter().map(|s| s.range_scan_workers)),
        point_read_partitions: 1.0,
    };
    steps.push(total);
    steps
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / f64::from(n) }
}

fn measure(
    data: &Data,
    strategy: &Strategy,
    placement: &dyn Placement,
    step: u32,
    event: String,
    moved_rows: u64,
    optimum_rows: u64,
) -> Step {
    let rows = placement.rows_per_worker(data);
    let workers = rows.len() as u32;
    let total: u64 = rows.iter().sum();
    let max = rows.iter().copied().max().unwrap_or(0);
    let max_mean_rows = if total == 0 {
        0.0
    } else {
        max as f64 * f64::from(workers) / total as f64
    };
    let parts = placement.partitions_per_worker();
    let (mut touched_parts, mut touched_workers) = (0usize, 0usize);
    for scan in &data.scans {
        let mut p = BTreeSet::new();
        let mut w = BTreeSet::new();
        for row in scan {
            let (partition, worker) = placement.locate(data.keys[*row], data.hashes[*row]);
            p.insert(partition);
            w.insert(worker);
        }
        touched_parts += p.len();
        touched_workers += w.len();
    }
    let scans = data.scans.len().max(1) as f64;
    Step {
        strategy: strategy.label(),
        step,
        event,
        workers,
        moved_rows,
        optimum_rows,
        max_mean_rows,
        partitions: parts.iter().sum(),
        max_partitions_per_worker: parts.iter().copied().max().unwrap_or(0),
        range_scan_partitions: touched_parts as f64 / scans,
        range_scan_workers: touched_workers as f64 / scans,
        point_read_partitions: 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(strategy: Strategy, keys: Keys, rows: u64, from: u32, to: u32) -> Vec<Step> {
        simulate(&Config {
            keys,
            rows,
            from,
            to,
            strategies: vec![strategy],
            seed: 7,
        })
        .unwrap()
    }

    /// On 10^6 uniform keys, HASH MOD N moves N/(N+1) of the rows when a
    /// worker joins and FIXED about 1/(N+1), as the closed forms say.
    #[test]
    fn closed_forms_hold_on_uniform_keys() {
        let rows = 1_000_000u64;
        let steps = run(Strategy::HashModN, Keys::Uniform, rows, 4, 8);
        for s in steps.iter().filter(|s| s.event.starts_with("join")) {
            let n = f64::from(s.workers - 1);
            let moved = s.moved_rows as f64 / rows as f64;
            let expected = n / (n + 1.0);
            assert!(
                (moved / expected - 1.0).abs() < 0.03,
                "{s:?}: {moved} vs {expected}"
            );
        }
        let steps = run(Strategy::Fixed(256), Keys::Uniform, rows, 4, 8);
        for s in steps.iter().filter(|s| s.event.starts_with("join")) {
            let n = f64::from(s.workers - 1);
            let moved = s.moved_rows as f64 / rows as f64;
            let expected = 1.0 / (n + 1.0);
            assert!(
                (moved / expected - 1.0).abs() < 0.05,
                "{s:?}: {moved} vs {expected}"
            );
            assert!(s.max_mean_rows < 1.1, "{s:?}");
        }
    }

    /// Every strategy replays every key distribution: a leaving worker's
    /// rows all move, key ranges keep a range scan on few partitions while
    /// hashing spreads it over all.
    #[test]
    fn every_strategy_keeps_every_row() {
        for keys in [Keys::Uniform, Keys::Zipf(1.1), Keys::Timeseries] {
            let config = Config {
                keys,
                rows: 50_000,
                from: 3,
                to: 6,
                strategies: Strategy::parse_list("all", 2_000).unwrap(),
                seed: 11,
            };
            let steps = simulate(&config).unwrap();
            assert_eq!(steps.iter().filter(|s| s.event == "total").count(), 5);
            for s in steps.iter().filter(|s| s.event != "total") {
                assert!(s.max_mean_rows >= 1.0 - 1e-9, "{s:?}");
                // A leaving worker's rows all move, and no more is lost.
                if s.event.starts_with("leave") {
                    assert!(s.moved_rows >= s.optimum_rows, "{s:?}");
                }
            }
            assert!(
                steps
                    .iter()
                    .filter(|s| s.event == "total")
                    .all(|s| s.workers == 3)
            );
            let dynamic: Vec<&Step> = steps.iter().filter(|s| s.strategy == "dynamic").collect();
            // Key ranges: a range scan touches few partitions; hashing
            // spreads it over all of them.
            let fixed = steps.iter().find(|s| s.strategy == "fixed 64").unwrap();
            assert!(dynamic[0].range_scan_partitions < 5.0, "{:?}", dynamic[0]);
            // (Under Zipf a scan of 1% of the rows may be one hot key.)
            if keys != Keys::Zipf(1.1) {
                assert!(fixed.range_scan_partitions > 60.0, "{fixed:?}");
            }
        }
    }

    #[test]
    fn strategy_lists_parse() {
        assert_eq!(Strategy::parse_list("all", 10).unwrap().len(), 5);
        assert_eq!(
            Strategy::parse_list("mod, fixed:16, proportional:4", 10).unwrap(),
            vec![
                Strategy::HashModN,
                Strategy::Fixed(16),
                Strategy::Proportional(4)
            ]
        );
        assert!(Strategy::parse_list("modulo", 10).is_err());
        assert!(Strategy::parse_list("fixed:0", 10).is_err());
    }
}
