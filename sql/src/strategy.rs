//! How a table's partitions change as workers come and go and the data
//! grows: `REBALANCE FIXED | DYNAMIC [SPLIT SIZE 's'] [MERGE SIZE 's'] |
//! PROPORTIONAL [PER WORKER n]`, in `CREATE TABLE` or `ALTER TABLE t SET
//! REBALANCE ...`.

use std::fmt;

use datafusion::common::{Result, plan_err};
use datafusion::sql::sqlparser::tokenizer::Token;
use serde::{Deserialize, Serialize};

use crate::scheme::PartitionScheme;
use crate::size::{format_bytes, parse_bytes};

/// A DYNAMIC partition past this many bytes splits, unless the table says.
pub const DEFAULT_SPLIT_BYTES: u64 = 256_000_000;
/// Neighbours of DYNAMIC partitions both under this many bytes merge.
pub const DEFAULT_MERGE_BYTES: u64 = 16_000_000;
/// Partitions per worker a PROPORTIONAL table keeps, unless it says.
pub const DEFAULT_PER_WORKER: u32 = 8;
/// The most partitions per worker PROPORTIONAL may ask for.
pub const MAX_PER_WORKER: u32 = 256;

/// A table's rebalancing strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "strategy")]
pub enum Strategy {
    /// The partition count never changes; whole partitions move.
    #[default]
    Fixed,
    /// A partition past `split_bytes` splits (at its median key, or the
    /// middle of its hash slice); neighbours both under `merge_bytes`
    /// merge.
    Dynamic { split_bytes: u64, merge_bytes: u64 },
    /// About `per_worker` partitions per worker: a joining worker splits
    /// that many hash slices and takes one half of each.
    Proportional { per_worker: u32 },
}

impl Strategy {
    pub fn is_fixed(&self) -> bool {
        *self == Strategy::Fixed
    }

    /// Parses a strategy from the words after `REBALANCE`; returns it and
    /// how many words it took.
    pub fn parse(words: &[&Token]) -> Result<(Strategy, usize)> {
        let word = |at: usize, w: &str| {
            words.get(at).is_some_and(
                |t| matches!(t, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w)),
            )
        };
        let size = |at: usize, what: &str| -> Result<u64> {
            match words.get(at) {
                Some(Token::SingleQuotedString(s)) => parse_bytes(s),
                Some(Token::Number(n, _)) => parse_bytes(n),
                _ => plan_err!("{what} SIZE takes a size in quotes, such as '256MB'"),
            }
        };
        if word(0, "FIXED") {
            return Ok((Strategy::Fixed, 1));
        }
        if word(0, "DYNAMIC") {
            let (mut split_bytes, mut merge_bytes) = (DEFAULT_SPLIT_BYTES, DEFAULT_MERGE_BYTES);
            let mut at = 1;
            loop {
                if word(at, "SPLIT") && word(at + 1, "SIZE") {
                    split_bytes = size(at + 2, "SPLIT")?;
                    at += 3;
                } else if word(at, "MERGE") && word(at + 1, "SIZE") {
                    merge_bytes = size(at + 2, "MERGE")?;
                    at += 3;
                } else {
                    break;
                }
            }
            if split_bytes == 0 {
                return plan_err!("SPLIT SIZE must be more than 0 bytes");
            }
            if merge_bytes.saturating_mul(2) > split_bytes {
                return plan_err!(
                    "MERGE SIZE ({}) must be at most half the SPLIT SIZE ({}), or a merged \
                     partition could split again at once",
                    format_bytes(merge_bytes),
                    format_bytes(split_bytes)
                );
            }
            return Ok((
                Strategy::Dynamic {
                    split_bytes,
                    merge_bytes,
                },
                at,
            ));
        }
        if word(0, "PROPORTIONAL") {
            if !word(1, "PER") {
                return Ok((
                    Strategy::Proportional {
                        per_worker: DEFAULT_PER_WORKER,
                    },
                    1,
                ));
            }
            let n = match (word(2, "WORKER"), words.get(3)) {
                (true, Some(Token::Number(n, _))) => n.parse::<u32>().ok(),
                _ => None,
            };
            return match n {
                Some(per_worker) if (1..=MAX_PER_WORKER).contains(&per_worker) => {
                    Ok((Strategy::Proportional { per_worker }, 4))
                }
                _ => plan_err!(
                    "PROPORTIONAL PER WORKER takes a number of partitions per worker from 1 to \
                     {MAX_PER_WORKER}: PROPORTIONAL PER WORKER 8"
                ),
            };
        }
        plan_err!(
            "REBALANCE takes FIXED, DYNAMIC [SPLIT SIZE '256MB'] [MERGE SIZE '16MB'] or \
             PROPORTIONAL [PER WORKER 8]"
        )
    }

    /// Refuses a strategy the table's partitioning cannot follow.
    pub fn check(&self, table: &str, scheme: &PartitionScheme) -> Result<()> {
        match (self, scheme) {
            (Strategy::Fixed, _) => Ok(()),
            (_, PartitionScheme::Single) => plan_err!(
                "'{table}' has no PARTITION BY, so it has one partition and nothing to split; \
                 REBALANCE {self} needs PARTITION BY HASH or RANGE"
            ),
            (Strategy::Proportional { .. }, PartitionScheme::Range { .. }) => plan_err!(
                "REBALANCE PROPORTIONAL splits hash slices, and '{table}' is range-partitioned; \
                 use REBALANCE DYNAMIC for RANGE tables"
            ),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Fixed => write!(f, "FIXED"),
            Strategy::Dynamic {
                split_bytes,
                merge_bytes,
            } => write!(
                f,
                "DYNAMIC SPLIT SIZE '{}' MERGE SIZE '{}'",
                format_bytes(*split_bytes),
                format_bytes(*merge_bytes)
            ),
            Strategy::Proportional { per_worker } => {
                write!(f, "PROPORTIONAL PER WORKER {per_worker}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;

    fn parse(text: &str) -> Result<(Strategy, usize)> {
        let tokens = Tokenizer::new(&GenericDialect {}, text).tokenize().unwrap();
        let words: Vec<&Token> = tokens
            .iter()
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .collect();
        Strategy::parse(&words)
    }

    #[test]
    fn strategies_parse_and_read_back() {
        assert_eq!(parse("fixed").unwrap(), (Strategy::Fixed, 1));
        assert_eq!(
            parse("DYNAMIC").unwrap(),
            (
                Strategy::Dynamic {
                    split_bytes: DEFAULT_SPLIT_BYTES,
                    merge_bytes: DEFAULT_MERGE_BYTES
                },
                1
            )
        );
        assert_eq!(
            parse("DYNAMIC MERGE SIZE '1MB' SPLIT SIZE '64MiB' AS").unwrap(),
            (
                Strategy::Dynamic {
                    split_bytes: 64 << 20,
                    merge_bytes: 1_000_000
                },
                7
            )
        );
        assert_eq!(
            parse("PROPORTIONAL PER WORKER 4").unwrap(),
            (Strategy::Proportional { per_worker: 4 }, 4)
        );
        assert_eq!(
            parse("proportional").unwrap(),
            (Strategy::Proportional { per_worker: 8 }, 1)
        );
        for s in [
            Strategy::Fixed,
            Strategy::Dynamic {
                split_bytes: 100_000,
                merge_bytes: 1000,
            },
            Strategy::Proportional { per_worker: 3 },
        ] {
            let text = s.to_string();
            let (back, taken) = parse(&text).unwrap();
            assert_eq!(back, s, "{text}");
            assert_eq!(taken, text.split_whitespace().count(), "{text}");
        }
        for bad in [
            "",
            "EVEN",
            "DYNAMIC SPLIT SIZE",
            "DYNAMIC SPLIT SIZE 'lots'",
            "DYNAMIC SPLIT SIZE '0'",
            "DYNAMIC SPLIT SIZE '10MB' MERGE SIZE '6MB'",
            "PROPORTIONAL PER WORKER 0",
            "PROPORTIONAL PER WORKER 1000",
            "PROPORTIONAL PER 4",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
