//! Paces partition copies into a worker to a rate in bytes per second,
//! shared by every copy running into it at once (`SET
//! tessera.rebalance_rate`): moves and catch-ups leave bandwidth to queries.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// When the next chunk may be read, over all copies into this worker.
#[derive(Debug, Default)]
pub struct Pacer {
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    /// Waits until `bytes` more may be copied at `rate` bytes per second
    /// (0: no limit). The first chunk goes at once; each one after waits
    /// for the time the ones before take at `rate`.
    pub async fn take(&self, bytes: u64, rate: u64) {
        if rate == 0 {
            return;
        }
        let start = {
            let Ok(mut next) = self.next.lock() else {
                return;
            };
            let now = Instant::now();
            let start = next.map_or(now, |n| n.max(now));
            *next = Some(start + Duration::from_secs_f64(bytes as f64 / rate as f64));
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[tokio::test(start_paused = true)]
    async fn copies_share_the_rate() {
        let pacer = std::sync::Arc::new(Pacer::default());
        let began = Instant::now();
        // Two copies of 8 chunks of 1 MiB each at 2 MiB/s: 16 MiB take 8 s
        // together (the last chunk is granted at 7.5 s).
        let copies: Vec<_> = (0..2)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move {
                    for _ in 0..8 {
                        pacer.take(MB, 2 * MB).await;
                    }
                })
            })
            .collect();
        for c in copies {
            c.await.unwrap();
        }
        assert_eq!(began.elapsed(), Duration::from_millis(7500));
    }

    #[tokio::test(start_paused = true)]
    async fn no_rate_never_waits() {
        let pacer = Pacer::default();
        let began = Instant::now();
        for _ in 0..100 {
            pacer.take(64 * MB, 0).await;
        }
        assert_eq!(began.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pacer_does_not_bank_time() {
        let pacer = Pacer::default();
        pacer.take(MB, MB).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let began = Instant::now();
        pacer.take(MB, MB).await;
        pacer.take(MB, MB).await;
        assert_eq!(began.elapsed(), Duration::from_secs(1));
    }
}
