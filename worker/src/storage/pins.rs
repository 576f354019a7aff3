//! Read pins: a scan under way keeps the files a compaction merged away
//! from being deleted until it is done.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::Storage;
use super::parquet_io::remove_if_present;

/// Scans under way, by the epoch they began in, and files merged away in
/// each epoch: a file retired in epoch `e` is deleted once no scan of an
/// epoch up to `e` is left (later ones read manifests without it).
#[derive(Debug, Default)]
pub(super) struct Readers {
    epoch: u64,
    live: BTreeMap<u64, usize>,
    retired: Vec<(u64, PathBuf)>,
}

/// Keeps the files a scan may read from being deleted by a compaction
/// until it is dropped. Take it before reading the manifest.
#[derive(Debug)]
pub struct ReadPin {
    storage: Arc<Storage>,
    epoch: u64,
}

impl Readers {
    /// Takes out the retired files no live scan can still read.
    fn deletable(&mut self) -> Vec<PathBuf> {
        if self.retired.is_empty() {
            return vec![];
        }
        let oldest = self.live.keys().next().copied().unwrap_or(u64::MAX);
        let (gone, kept) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(e, _)| *e < oldest);
        self.retired = kept;
        gone.into_iter().map(|(_, p)| p).collect()
    }
}

impl Drop for ReadPin {
    fn drop(&mut self) {
        let gone = match self.storage.readers.lock() {
            Ok(mut r) => {
                if let Some(n) = r.live.get_mut(&self.epoch) {
                    *n -= 1;
                    if *n == 0 {
                        r.live.remove(&self.epoch);
                    }
                }
                r.deletable()
            }
            Err(_) => vec![],
        };
        delete_retired(gone);
    }
}

/// Deletes merged-away files; one that cannot be goes at the next start.
fn delete_retired(paths: Vec<PathBuf>) {
    for path in paths {
        if let Err(e) = remove_if_present(&path) {
            tracing::warn!(error = %e, "a merged-away file stays until the next start");
        }
    }
}

impl Storage {
    /// Holds off the deletion of merged-away files while a scan runs.
    pub fn pin(self: &Arc<Self>) -> ReadPin {
        let epoch = match self.readers.lock() {
            Ok(mut r) => {
                let epoch = r.epoch;
                *r.live.entry(epoch).or_default() += 1;
                epoch
            }
            Err(_) => 0,
        };
        ReadPin {
            storage: Arc::clone(self),
            epoch,
        }
    }

    /// Files merged away just now: deleted once earlier scans are done.
    pub(super) fn retire(&self, paths: Vec<PathBuf>) {
        let gone = match self.readers.lock() {
            Ok(mut r) => {
                let epoch = r.epoch;
                r.retired.extend(paths.into_iter().map(|p| (epoch, p)));
                r.epoch += 1;
                r.deletable()
            }
            Err(_) => vec![],
        };
        delete_retired(gone);
    }
}
