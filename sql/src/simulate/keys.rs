//! Key streams for the simulator: uniform, Zipf-skewed, or time-ordered.

use std::str::FromStr;

use datafusion::common::{DataFusionError, Result};
use rand::Rng;
use rand::rngs::StdRng;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// How the simulated keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Keys {
    /// Random 64-bit keys.
    Uniform,
    /// Keys drawn from as many distinct ones as rows with Zipf's law of
    /// this exponent (a few hot keys hold much of the data), scattered
    /// over the key range.
    Zipf(f64),
    /// Increasing keys, as timestamps of appended events.
    Timeseries,
}

impl FromStr for Keys {
    type Err = DataFusionError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "uniform" => Ok(Keys::Uniform),
            "timeseries" => Ok(Keys::Timeseries),
            _ => match s.strip_prefix("zipf:").map(str::parse::<f64>) {
                Some(Ok(exponent)) if exponent > 0.0 && exponent <= 10.0 => {
                    Ok(Keys::Zipf(exponent))
                }
                Some(_) => Err(DataFusionError::Plan(format!(
                    "'{s}': a Zipf exponent is a number above 0 and at most 10, as zipf:1.1"
                ))),
                None => Err(DataFusionError::Plan(format!(
                    "unknown key distribution '{s}'; use uniform, zipf:1.1 or timeseries"
                ))),
            },
        }
    }
}

/// Spreads Zipf ranks over the key range (a bijection on u64: an odd
/// multiplier), so hot keys are not all at one end.
const SCATTER: u64 = 0x9E37_79B9_7F4A_7C15;

impl Keys {
    /// `rows` keys in arrival order.
    pub(crate) fn generate(&self, rows: u64, rng: &mut StdRng) -> Vec<u64> {
        match *self {
            Keys::Uniform => (0..rows).map(|_| rng.random::<u64>()).collect(),
            Keys::Timeseries => (0..rows).collect(),
            Keys::Zipf(exponent) => {
                let mut cumulative = Vec::with_capacity(rows as usize);
                let mut total = 0.0;
                for rank in 1..=rows {
                    total += (rank as f64).powf(-exponent);
                    cumulative.push(total);
                }
                (0..rows)
                    .map(|_| {
                        let u = rng.random::<f64>() * total;
                        let rank = cumulative.partition_point(|c| *c < u) as u64 + 1;
                        rank.wrapping_mul(SCATTER)
                    })
                    .collect()
            }
        }
    }
}

/// The hash a HASH-partitioned table would place the key by.
pub(crate) fn hash(key: u64) -> u64 {
    xxh3_64_with_seed(&key.to_be_bytes(), crate::HASH_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn distributions_parse_and_skew() {
        assert_eq!("zipf:1.1".parse::<Keys>().unwrap(), Keys::Zipf(1.1));
        assert!("zipf:-1".parse::<Keys>().is_err());
        assert!("normal".parse::<Keys>().is_err());
        let mut rng = StdRng::seed_from_u64(1);
        let keys = Keys::Zipf(1.1).generate(100_000, &mut rng);
        let hottest = keys.iter().filter(|k| **k == SCATTER).count() as f64;
        // Rank 1 holds 1/H(100000, 1.1) of the rows.
        let h: f64 = (1..=100_000).map(|r| f64::from(r).powf(-1.1)).sum();
        let expected = 100_000.0 / h;
        assert!(
            (hottest / expected - 1.0).abs() < 0.05,
            "{hottest} vs {expected}"
        );
        let ts = Keys::Timeseries.generate(10, &mut rng);
        assert!(ts.windows(2).all(|w| w[0] < w[1]));
    }
}
