//! The first phase of a write: every piece staged and durable on enough
//! of its copies, or nothing left staged.

use std::collections::BTreeMap;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::Result;
use futures::future::join_all;
use tessera_worker::wire::{PieceHeader, PrepareRequest};
use tessera_worker::{DataFile, StagedWrite, WorkerClient, is_worker_failure};

use super::{Piece, abort, name_worker};
use crate::catalog::WriteTarget;
use crate::catalog_state::CatalogState;
use crate::copies::{Failures, settle_copies, short_of_quorum};

/// A transaction's pieces staged and durable on enough of their copies,
/// not decided yet: the first phase of a write.
pub(crate) struct Prepared {
    pub txn: u64,
    /// Worker id → what it staged.
    pub writes: BTreeMap<String, Vec<StagedWrite>>,
    /// Worker id → URL, of the workers in `writes`.
    pub urls: BTreeMap<String, String>,
    /// Each piece's file, as its first copy wrote it (every copy holds the
    /// same rows), in the order of the pieces.
    pub files: Vec<DataFile>,
    targets: Vec<WriteTarget>,
    /// Each piece's copies that took it.
    holders: Vec<Vec<String>>,
}

impl Prepared {
    /// Settles the copies that took each piece against the map, as the
    /// transaction is decided (copies that missed it leave the in-sync set).
    pub fn settle(&self, s: &mut CatalogState) -> Result<()> {
        for (target, held) in self.targets.iter().zip(&self.holders) {
            settle_copies(s, target, held)?;
        }
        Ok(())
    }

    /// Drops what the workers staged.
    pub async fn abort(&self) {
        abort(self.txn, self.urls.values()).await;
    }
}

/// Stages `pieces` as transaction `txn` on their copies (phase 1): all of
/// them on enough copies, or nothing stays staged.
pub(crate) async fn prepare_pieces(txn: u64, pieces: Vec<Piece>) -> Result<Prepared> {
    // Keyed by worker id: URLs change across restarts, ids do not.
    let mut urls: BTreeMap<String, String> = BTreeMap::new();
    // Workers a piece should reach and cannot: why, and whether because
    // they could not be reached.
    let mut failed = Failures::new();
    // One prepare per worker, carrying all its pieces (a partition's rows
    // and its LOCAL index entries travel together; each copy of a
    // partition gets the same pieces): worker → (piece number, where, rows).
    let mut by_worker: BTreeMap<String, Vec<(usize, PieceHeader, RecordBatch)>> = BTreeMap::new();
    let mut shares = vec![];
    for (i, piece) in pieces.into_iter().enumerate() {
        for replica in &piece.target.replicas {
            match replica {
                Ok(part) => {
                    urls.insert(part.worker_id.clone(), part.url.clone());
                    by_worker.entry(part.worker_id.clone()).or_default().push((
                        i,
                        PieceHeader {
                            table: piece.location.clone(),
                            partition: piece.partition,
                        },
                        piece.batch.clone(),
                    ));
                }
                Err((worker, why)) => {
                    failed.insert(worker.clone(), (why.clone(), true));
                }
            }
        }
        shares.push(Share {
            location: piece.location,
            target: piece.target,
        });
    }
    let request = PrepareRequest { txn };
    let prepares = by_worker.into_iter().map(|(worker, pieces)| {
        let url = urls.get(&worker).cloned().unwrap_or_default();
        let request = &request;
        async move {
            let order: Vec<usize> = pieces.iter().map(|(i, ..)| *i).collect();
            let pieces = pieces.into_iter().map(|(_, h, b)| (h, b)).collect();
            let prepared = async {
                let client = WorkerClient::connect(&url)?;
                client.prepare(request, pieces).await
            };
            let files = match prepared.await {
                Ok(files) if files.len() == order.len() => files,
                Ok(files) => {
                    let why = format!(
                        "worker {worker} at {url} prepared {} pieces of {}",
                        files.len(),
                        order.len()
                    );
                    return (worker, Err((why, false)));
                }
                Err(e) => {
                    let unreachable = is_worker_failure(&e);
                    let why = name_worker(&worker, &url, e).to_string();
                    return (worker, Err((why, unreachable)));
                }
            };
            (worker, Ok(order.into_iter().zip(files).collect::<Vec<_>>()))
        }
    });
    // Phase 1: every piece durable on its in-sync copies.
    let mut files: Vec<BTreeMap<String, DataFile>> = vec![BTreeMap::new(); shares.len()];
    for (worker, result) in join_all(prepares).await {
        match result {
            Ok(prepared) => {
                for (i, f) in prepared {
                    files[i].insert(worker.clone(), f);
                }
            }
            Err(why) => {
                failed.insert(worker, why);
            }
        }
    }
    // Each piece on enough copies, or nothing changes.
    for (share, held) in shares.iter().zip(&files) {
        if held.len() < share.target.needed {
            abort(txn, urls.values()).await;
            return Err(short_of_quorum(&share.target, held.len(), &failed));
        }
    }
    let mut writes: BTreeMap<String, Vec<StagedWrite>> = BTreeMap::new();
    for (share, held) in shares.iter().zip(&files) {
        for worker in held.keys() {
            writes.entry(worker.clone()).or_default().push(StagedWrite {
                txn,
                table: share.location.clone(),
                partition: share.target.partition,
            });
        }
    }
    // The failed workers may have staged some pieces: they go.
    let failed_urls: Vec<String> = failed.keys().filter_map(|w| urls.get(w).cloned()).collect();
    abort(txn, failed_urls.iter()).await;
    urls.retain(|w, _| writes.contains_key(w));
    let first: Vec<DataFile> = files
        .iter()
        .filter_map(|held| held.values().next().cloned())
        .collect();
    let holders: Vec<Vec<String>> = files.iter().map(|h| h.keys().cloned().collect()).collect();
    let targets: Vec<WriteTarget> = shares.into_iter().map(|s| s.target).collect();
    Ok(Prepared {
        txn,
        writes,
        urls,
        files: first,
        targets,
        holders,
    })
}

/// One piece of a write as its copies take it.
struct Share {
    location: String,
    /// The partition and the in-sync copies it goes to.
    target: WriteTarget,
}
