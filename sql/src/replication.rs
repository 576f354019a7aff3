//! Copies of each partition: how many a table keeps, how many must hold a
//! write before it is acknowledged, and on which workers they go.

use std::fmt;

use datafusion::common::{Result, plan_err};
use serde::{Deserialize, Serialize};

/// Most copies of a partition a table may keep.
pub const MAX_REPLICAS: u32 = 7;

/// How many of a partition's in-sync copies must hold a write before it
/// is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteQuorum {
    /// Every copy: a write waits for (and fails with) any of them.
    All,
    /// More than half of the copies.
    #[default]
    Majority,
    /// One copy.
    One,
}

impl WriteQuorum {
    /// Copies a write needs, of `replicas`.
    pub fn needed(self, replicas: usize) -> usize {
        match self {
            Self::All => replicas,
            Self::Majority => replicas / 2 + 1,
            Self::One => 1,
        }
        .max(1)
    }

    pub fn parse(word: &str) -> Option<Self> {
        match word.to_ascii_uppercase().as_str() {
            "ALL" => Some(Self::All),
            "MAJORITY" => Some(Self::Majority),
            "ONE" => Some(Self::One),
            _ => None,
        }
    }
}

impl fmt::Display for WriteQuorum {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Self::All => "ALL",
            Self::Majority => "MAJORITY",
            Self::One => "ONE",
        })
    }
}

/// A table's copies: `REPLICAS r [WRITE QUORUM ALL | MAJORITY | ONE]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    pub replicas: u32,
    pub quorum: WriteQuorum,
}

impl Default for Replication {
    fn default() -> Self {
        Self {
            replicas: 1,
            quorum: WriteQuorum::Majority,
        }
    }
}

impl Replication {
    pub fn try_new(replicas: u32, quorum: Option<WriteQuorum>) -> Result<Self> {
        if replicas == 0 || replicas > MAX_REPLICAS {
            return plan_err!("REPLICAS must be between 1 and {MAX_REPLICAS}, got {replicas}");
        }
        Ok(Self {
            replicas,
            quorum: quorum.unwrap_or_default(),
        })
    }

    /// Copies of a partition a write must reach before it is acknowledged.
    pub fn needed(&self) -> usize {
        self.quorum.needed(self.replicas as usize)
    }
}

impl fmt::Display for Replication {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "REPLICAS {} WRITE QUORUM {}", self.replicas, self.quorum)
    }
}

/// The workers of each of `partitions` partitions, leader first:
/// `replicas` distinct workers each. Leaders go round the workers from
/// `offset` (partition i of tables alike lands on the same worker, so joins
/// on their keys stay local), and each further copy goes to the worker
/// holding fewest copies so far (the next one round the ring from the
/// leader on a tie), so every worker leads and holds about as many
/// partitions as any other (a follower copy moves where that choice left
/// one worker two copies ahead of another).
pub fn place(
    partitions: u32,
    replicas: u32,
    workers: &[String],
    offset: usize,
) -> Result<Vec<Vec<String>>> {
    let n = workers.len();
    if replicas as usize > n {
        return plan_err!(
            "REPLICAS {replicas} needs {replicas} workers and {n} {} running; start more \
             workers or ask for fewer copies",
            if n == 1 { "is" } else { "are" }
        );
    }
    let mut held = vec![0usize; n];
    let mut out = Vec::with_capacity(partitions as usize);
    for p in 0..partitions as usize {
        let leader = (p + offset) % n;
        held[leader] += 1;
        let mut copies = vec![leader];
        for _ in 1..replicas {
            let next = (1..n)
                .map(|step| (leader + step) % n)
                .filter(|w| !copies.contains(w))
                .min_by_key(|w| held[*w])
                .expect("fewer copies than workers");
            held[next] += 1;
            copies.push(next);
        }
        out.push(copies);
    }
    // Where the greedy choice left a worker holding two or more copies over
    // another, a follower copy moves from the fuller to the emptier one.
    loop {
        let (most, least) = (0..n).fold((0, 0), |(hi, lo), w| {
            (
                if held[w] > held[hi] { w } else { hi },
                if held[w] < held[lo] { w } else { lo },
            )
        });
        if held[most] <= held[least] + 1 {
            break;
        }
        let movable = out
            .iter_mut()
            .find(|copies| copies[1..].contains(&most) && !copies.contains(&least));
        let Some(copies) = movable else {
            break;
        };
        for w in copies.iter_mut() {
            if *w == most {
                *w = least;
            }
        }
        held[most] -= 1;
        held[least] += 1;
    }
    Ok(out
        .into_iter()
        .map(|copies| copies.into_iter().map(|w| workers[w].clone()).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn workers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("w{i}")).collect()
    }

    #[test]
    fn quorums() {
        assert_eq!(WriteQuorum::Majority.needed(1), 1);
        assert_eq!(WriteQuorum::Majority.needed(2), 2);
        assert_eq!(WriteQuorum::Majority.needed(3), 2);
        assert_eq!(WriteQuorum::All.needed(3), 3);
        assert_eq!(WriteQuorum::One.needed(3), 1);
        assert!(Replication::try_new(0, None).is_err());
        assert!(
            place(4, 3, &workers(2), 0)
                .unwrap_err()
                .to_string()
                .contains("REPLICAS 3")
        );
    }

    proptest! {
        /// Never two copies of a partition on one worker; leaders and
        /// copies spread as evenly as whole partitions allow (no worker
        /// leads or holds more than one over another), which keeps the
        /// most loaded worker within 1.25 × the mean once there are four
        /// partitions per worker or more (with fewer, one extra partition
        /// is already more than a quarter of the mean: 10 partitions on 9
        /// workers means one worker leads 2, 1.8 × the mean).
        #[test]
        fn placement_is_balanced(
            n in 3usize..=9,
            partitions in 8u32..=128,
            replicas in 1u32..=3,
            offset in 0usize..16,
        ) {
            let ws = workers(n);
            let placed = place(partitions, replicas, &ws, offset).unwrap();
            prop_assert_eq!(placed.len(), partitions as usize);
            let mut led = vec![0usize; n];
            let mut held = vec![0usize; n];
            for copies in &placed {
                prop_assert_eq!(copies.len(), replicas as usize);
                let mut distinct = copies.clone();
                distinct.sort();
                distinct.dedup();
                prop_assert_eq!(distinct.len(), copies.len(), "two copies on one worker");
                let index = |w: &String| ws.iter().position(|x| x == w).unwrap();
                led[index(&copies[0])] += 1;
                for w in copies {
                    held[index(w)] += 1;
                }
            }
            for counts in [&led, &held] {
                let (max, min) = (*counts.iter().max().unwrap(), *counts.iter().min().unwrap());
                prop_assert!(max - min <= 1, "{:?}", counts);
                let mean = counts.iter().sum::<usize>() as f64 / n as f64;
                if mean >= 4.0 {
                    prop_assert!(max as f64 / mean <= 1.25, "{:?}", counts);
                }
            }
        }
    }
}
