//! A table's partitions as slices of its key space, each with an id that
//! is not its position: what lets a partition split or two merge without
//! renumbering the others.
//!
//! ```text
//!  initial (HASH, 4):   [0,q1):0  [q1,q2):1  [q2,q3):2  [q3,2^64):3
//!  split 1 at m:        [0,q1):0  [q1,m):4   [m,q2):5   [q2,q3):2  [q3,2^64):3
//!  merge 4, 5:          [0,q1):0  [q1,q2):6  [q2,q3):2  [q3,2^64):3
//! ```
//!
//! The slices are kept in key order and tile the space: no gap, no
//! overlap. An id is never given twice (`next_id` only grows), so a new
//! partition never meets files a retired one left behind, as a table
//! created again never meets its old files. A scheme's initial layout
//! numbers its partitions 0..n in key order, and looks keys up exactly as
//! [`hash_partition`] and [`range_partition`] do.

use std::cmp::Ordering;

use datafusion::common::{Result, plan_err};
use serde::{Deserialize, Serialize};

use crate::key::KeyValue;
use crate::scheme::{PartitionScheme, hash_range};

/// The half-open slice of key space one partition holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KeyRange {
    /// Every key (a SINGLE table).
    All,
    /// Keys whose partition hash is in `[start, end)`; `end` is `None` for
    /// a slice that ends at 2^64.
    Hash { start: u64, end: Option<u64> },
    /// Keys in `[lo, hi)`; `None` is unbounded (NULL sorts below every
    /// value, so it falls in the slice with no lower bound).
    Range {
        lo: Option<KeyValue>,
        hi: Option<KeyValue>,
    },
}

impl KeyRange {
    /// Whether the slice holds the key whose partition hash is `hash`.
    pub fn holds_hash(&self, hash: u64) -> bool {
        match self {
            KeyRange::All => true,
            KeyRange::Hash { start, end } => *start <= hash && end.is_none_or(|e| hash < e),
            KeyRange::Range { .. } => false,
        }
    }
}

/// Where a partition splits: the first key of its upper half.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitAt {
    /// A hash: the upper half starts at it.
    Hash(u64),
    /// A range key: the upper half starts at it.
    Value(KeyValue),
}

/// A table's partitions in key order, each with its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionLayout {
    parts: Vec<(KeyRange, u32)>,
    /// The id the next new partition gets.
    next_id: u32,
}

impl PartitionLayout {
    /// The layout `scheme` creates: partitions 0..n in key order.
    pub fn initial(scheme: &PartitionScheme) -> Self {
        let parts: Vec<(KeyRange, u32)> = match scheme {
            PartitionScheme::Single => vec![(KeyRange::All, 0)],
            PartitionScheme::Hash { partitions, .. } => (0..*partitions)
                .map(|p| {
                    let (start, end) = hash_range(p, *partitions);
                    (KeyRange::Hash { start, end }, p)
                })
                .collect(),
            PartitionScheme::Range { bounds, .. } => (0..=bounds.len())
                .map(|i| {
                    let lo = i.checked_sub(1).map(|j| bounds[j].clone());
                    let hi = bounds.get(i).cloned();
                    (KeyRange::Range { lo, hi }, i as u32)
                })
                .collect(),
        };
        let next_id = parts.len() as u32;
        Self { parts, next_id }
    }

    /// The layout of `parts` (slices in key order, with their ids); the
    /// next id is past the highest one, which is never given twice: a
    /// split or merge gives ids above every one before, so the highest id
    /// ever given is always among the partitions.
    pub fn from_parts(parts: Vec<(KeyRange, u32)>) -> Result<Self> {
        let next_id = parts.iter().map(|(_, id)| id + 1).max().unwrap_or(0);
        let layout = Self { parts, next_id };
        layout.check()?;
        Ok(layout)
    }

    /// Partitions now.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The partitions' ids, in key order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.parts.iter().map(|(_, id)| *id)
    }

    /// The partitions, in key order.
    pub fn parts(&self) -> &[(KeyRange, u32)] {
        &self.parts
    }

    /// The slice partition `id` holds, if it is a partition now.
    pub fn range_of(&self, id: u32) -> Option<&KeyRange> {
        self.parts.iter().find(|(_, i)| *i == id).map(|(r, _)| r)
    }

    /// The partition holding the key whose partition hash is `hash`.
    pub fn partition_of_hash(&self, hash: u64) -> u32 {
        // The first slice starting above `hash`, less one: the slices
        // tile the space, so the one before holds it.
        let after = self.parts.partition_point(|(r, _)| match r {
            KeyRange::Hash { start, .. } => *start <= hash,
            _ => true,
        });
        self.parts[after.saturating_sub(1)].1
    }

    /// The partition holding the range key `value`.
    pub fn partition_of_value(&self, value: &KeyValue) -> u32 {
        let after = self.parts.partition_point(|(r, _)| match r {
            KeyRange::Range { lo: Some(lo), .. } => lo <= value,
            _ => true,
        });
        self.parts[after.saturating_sub(1)].1
    }

    /// Splits partition `id` at `at` into two new partitions, the lower
    /// half first; their ids are returned. `at` must fall strictly inside
    /// the partition's slice, so neither half is empty of key space.
    pub fn split(&mut self, id: u32, at: SplitAt) -> Result<(u32, u32)> {
        let Some(i) = self.parts.iter().position(|(_, p)| *p == id) else {
            return plan_err!("partition {id} is not a partition of this table now");
        };
        let (lower, upper) = match (&self.parts[i].0, at) {
            (KeyRange::Hash { start, end }, SplitAt::Hash(h))
                if *start < h && end.is_none_or(|e| h < e) =>
            {
                (
                    KeyRange::Hash {
                        start: *start,
                        end: Some(h),
                    },
                    KeyRange::Hash {
                        start: h,
                        end: *end,
                    },
                )
            }
            (KeyRange::Range { lo, hi }, SplitAt::Value(v))
                if v != KeyValue::Null
                    && lo
                        .as_ref()
                        .is_none_or(|lo| lo.partial_cmp(&v) == Some(Ordering::Less))
                    && hi
                        .as_ref()
                        .is_none_or(|hi| v.partial_cmp(hi) == Some(Ordering::Less)) =>
            {
                (
                    KeyRange::Range {
                        lo: lo.clone(),
                        hi: Some(v.clone()),
                    },
                    KeyRange::Range {
                        lo: Some(v),
                        hi: hi.clone(),
                    },
                )
            }
            (range, at) => {
                return plan_err!(
                    "partition {id} ({range:?}) cannot split at {at:?}: the split point must \
                     lie strictly inside its slice of keys"
                );
            }
        };
        let (a, b) = (self.next_id, self.next_id + 1);
        self.next_id += 2;
        self.parts.splice(i..=i, [(lower, a), (upper, b)]);
        Ok((a, b))
    }

    /// Merges partitions `a` and `b`, neighbours in key order (`a` below),
    /// into one new partition; its id is returned.
    pub fn merge(&mut self, a: u32, b: u32) -> Result<u32> {
        let Some(i) = self.parts.iter().position(|(_, p)| *p == a) else {
            return plan_err!("partition {a} is not a partition of this table now");
        };
        if self.parts.get(i + 1).map(|(_, p)| *p) != Some(b) {
            return plan_err!("partitions {a} and {b} are not neighbours in key order ({a} first)");
        }
        let merged = match (&self.parts[i].0, &self.parts[i + 1].0) {
            (KeyRange::Hash { start, .. }, KeyRange::Hash { end, .. }) => KeyRange::Hash {
                start: *start,
                end: *end,
            },
            (KeyRange::Range { lo, .. }, KeyRange::Range { hi, .. }) => KeyRange::Range {
                lo: lo.clone(),
                hi: hi.clone(),
            },
            _ => return plan_err!("partitions {a} and {b} cannot merge"),
        };
        let id = self.next_id;
        self.next_id += 1;
        self.parts.splice(i..=i + 1, [(merged, id)]);
        Ok(id)
    }

    /// Checks that the slices tile the key space in order and that no id
    /// is given twice or at or past `next_id`.
    pub fn check(&self) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for (_, id) in &self.parts {
            if !seen.insert(*id) || *id >= self.next_id {
                return plan_err!("partition id {id} is given twice or was never allocated");
            }
        }
        let tiles = match self.parts.as_slice() {
            [] => false,
            [(KeyRange::All, _)] => true,
            parts => {
                let first_last = matches!(
                    (&parts[0].0, &parts[parts.len() - 1].0),
                    (
                        KeyRange::Hash { start: 0, .. },
                        KeyRange::Hash { end: None, .. }
                    ) | (
                        KeyRange::Range { lo: None, .. },
                        KeyRange::Range { hi: None, .. }
                    )
                );
                first_last
                    && parts.windows(2).all(|w| match (&w[0].0, &w[1].0) {
                        (KeyRange::Hash { end: Some(e), .. }, KeyRange::Hash { start, .. }) => {
                            e == start
                        }
                        (
                            KeyRange::Range { hi: Some(h), .. },
                            KeyRange::Range { lo: Some(l), .. },
                        ) => h == l,
                        _ => false,
                    })
            }
        };
        if !tiles {
            return plan_err!("the partitions do not cover the key space once, in order");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::scheme::{hash_partition, range_partition};

    fn hash(n: u32) -> PartitionScheme {
        PartitionScheme::Hash {
            columns: vec!["k".into()],
            partitions: n,
            cluster_by: vec![],
        }
    }

    fn range(bounds: &[i64]) -> PartitionScheme {
        PartitionScheme::Range {
            column: "k".into(),
            bounds: bounds.iter().map(|b| KeyValue::Int(*b)).collect(),
        }
    }

    proptest! {
        /// The initial layout looks hashes up exactly as the closed form.
        #[test]
        fn initial_hash_layout_is_the_closed_form(n in 1u32..300, hashes in prop::collection::vec(any::<u64>(), 64)) {
            let layout = PartitionLayout::initial(&hash(n));
            prop_assert!(layout.check().is_ok());
            prop_assert_eq!(layout.len(), n as usize);
            for h in hashes.into_iter().chain([0, u64::MAX]) {
                prop_assert_eq!(layout.partition_of_hash(h), hash_partition(h, n));
            }
        }

        /// The initial layout looks range keys up exactly as the bounds do.
        #[test]
        fn initial_range_layout_is_the_bounds(mut bounds in prop::collection::btree_set(-1000i64..1000, 0..20), keys in prop::collection::vec(-1100i64..1100, 64)) {
            bounds.insert(0);
            let bounds: Vec<i64> = bounds.into_iter().collect();
            let scheme = range(&bounds);
            let layout = PartitionLayout::initial(&scheme);
            prop_assert!(layout.check().is_ok());
            let PartitionScheme::Range { bounds: kv, .. } = &scheme else { unreachable!() };
            for k in keys {
                let v = KeyValue::Int(k);
                prop_assert_eq!(layout.partition_of_value(&v), range_partition(kv, &v));
            }
            prop_assert_eq!(layout.partition_of_value(&KeyValue::Null), 0);
        }

        /// Splits and merges keep the space tiled, give ids once, move
        /// only the keys of the partitions they touch, and send each key
        /// to the partition whose slice holds it.
        #[test]
        fn splits_and_merges_keep_every_key_placed_once(
            n in 1u32..16,
            steps in prop::collection::vec((any::<bool>(), any::<u64>(), any::<u64>()), 1..40),
            hashes in prop::collection::vec(any::<u64>(), 64),
        ) {
            let mut layout = PartitionLayout::initial(&hash(n));
            let mut ever = std::collections::BTreeSet::new();
            ever.extend(layout.ids());
            for (split, pick, at) in steps {
                let before = layout.clone();
                let i = (pick % layout.len() as u64) as usize;
                let (touched, made): (Vec<u32>, Vec<u32>) = if split {
                    let (range, id) = layout.parts()[i].clone();
                    let KeyRange::Hash { start, end } = range else { unreachable!() };
                    let width = end.map_or(u128::from(u64::MAX) + 1, u128::from) - u128::from(start);
                    if width < 2 {
                        continue;
                    }
                    let h = start + 1 + (u128::from(at) % (width - 1)) as u64;
                    let (a, b) = layout.split(id, SplitAt::Hash(h)).unwrap();
                    (vec![id], vec![a, b])
                } else {
                    if i + 1 >= layout.len() {
                        continue;
                    }
                    let (a, b) = (layout.parts()[i].1, layout.parts()[i + 1].1);
                    (vec![a, b], vec![layout.merge(a, b).unwrap()])
                };
                prop_assert!(layout.check().is_ok());
                for id in &made {
                    prop_assert!(ever.insert(*id), "id {} given twice", id);
                }
                for h in hashes.iter().copied().chain([0, u64::MAX]) {
                    let (old, new) = (before.partition_of_hash(h), layout.partition_of_hash(h));
                    if touched.contains(&old) {
                        prop_assert!(made.contains(&new));
                    } else {
                        prop_assert_eq!(old, new);
                    }
                    prop_assert!(layout.range_of(new).unwrap().holds_hash(h));
                }
            }
        }
    }

    #[test]
    fn a_range_partition_splits_inside_its_slice_only() {
        let mut layout = PartitionLayout::initial(&range(&[10, 20]));
        assert!(layout.split(1, SplitAt::Value(KeyValue::Int(10))).is_err());
        assert!(layout.split(1, SplitAt::Value(KeyValue::Int(20))).is_err());
        assert!(layout.split(0, SplitAt::Value(KeyValue::Null)).is_err());
        assert!(layout.split(1, SplitAt::Hash(15)).is_err());
        assert_eq!(
            layout.split(1, SplitAt::Value(KeyValue::Int(15))).unwrap(),
            (3, 4)
        );
        layout.check().unwrap();
        let at = |k: i64| layout.partition_of_value(&KeyValue::Int(k));
        assert_eq!(
            (at(9), at(10), at(14), at(15), at(19), at(20)),
            (0, 3, 3, 4, 4, 2)
        );
        assert_eq!(layout.ids().collect::<Vec<_>>(), vec![0, 3, 4, 2]);
        assert!(
            layout.merge(4, 3).is_err(),
            "the lower neighbour comes first"
        );
        assert_eq!(layout.merge(3, 4).unwrap(), 5);
        assert_eq!(layout.ids().collect::<Vec<_>>(), vec![0, 5, 2]);
        assert_eq!(
            layout.range_of(5),
            Some(&KeyRange::Range {
                lo: Some(KeyValue::Int(10)),
                hi: Some(KeyValue::Int(20))
            })
        );
        assert!(
            layout.split(1, SplitAt::Value(KeyValue::Int(12))).is_err(),
            "1 is gone"
        );
    }

    #[test]
    fn a_single_table_is_one_slice() {
        let layout = PartitionLayout::initial(&PartitionScheme::Single);
        layout.check().unwrap();
        assert_eq!(layout.partition_of_hash(7), 0);
        assert_eq!(layout.partition_of_value(&KeyValue::Int(7)), 0);
    }
}
