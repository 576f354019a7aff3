//! How far a running statement got: the rows its scans are expected to
//! read (the write path's counts of the partitions they keep), what they
//! read so far on each worker, and the rows it wrote. A client names its
//! statement with a tag of its choosing (the `x-tessera-query-tag` header
//! of the call that runs it) and asks for the progress with the Flight
//! action `tessera.progress`; the shell draws it as a progress bar.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::join_all;
use serde::{Deserialize, Serialize};
use tessera_worker::WorkerClient;

use crate::catalog::Catalog;

/// The header a client tags a statement with.
pub const TAG_HEADER: &str = "x-tessera-query-tag";
/// Characters of a tag that count.
pub const MAX_TAG: usize = 64;
/// The Flight action that reports a tagged statement's progress.
pub const ACTION: &str = "tessera.progress";
/// How long a worker may take to say what it read.
const ASK_WORKER: Duration = Duration::from_secs(1);

/// What one running statement counted so far on the coordinator; its
/// scans count on the workers, under `query_id`.
#[derive(Debug, Default)]
pub struct Progress {
    pub query_id: String,
    /// Rows its scans are expected to read.
    pub rows_expected: AtomicU64,
    /// Rows handed to its writes.
    pub rows_written: AtomicU64,
}

impl Progress {
    pub fn new(query_id: &str) -> Self {
        Self {
            query_id: query_id.to_string(),
            ..Default::default()
        }
    }

    pub fn expect(&self, rows: u64) {
        self.rows_expected.fetch_add(rows, Ordering::Relaxed);
    }

    pub fn wrote(&self, rows: u64) {
        self.rows_written.fetch_add(rows, Ordering::Relaxed);
    }
}

tokio::task_local! {
    static CURRENT: Arc<Progress>;
}

/// Runs `f` (the planning, and for statements with effects the running,
/// of one statement) counting towards `progress`.
pub async fn counting<F: Future>(progress: Arc<Progress>, f: F) -> F::Output {
    CURRENT.scope(progress, f).await
}

/// The progress of the statement being planned now, if it is counted.
pub fn current() -> Option<Arc<Progress>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// The body of a `tessera.progress` action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgressRequest {
    pub tag: String,
}

/// The answer: all zero and `running: false` once the statement ended
/// (or if no statement of the caller has the tag).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressReport {
    pub running: bool,
    pub query_id: String,
    pub elapsed_ms: u64,
    pub rows_expected: u64,
    pub rows_scanned: u64,
    pub bytes_scanned: u64,
    pub rows_written: u64,
}

/// Sums what the workers say `progress`'s scans read with what the
/// coordinator counted. A worker that does not answer within a second
/// adds nothing (the report is a moment's view, asked again soon).
pub async fn report(catalog: &Catalog, progress: &Progress, elapsed: Duration) -> ProgressReport {
    let members = catalog.members().unwrap_or_default();
    let asks = members.into_values().map(|url| {
        let query = vec![progress.query_id.clone()];
        async move {
            let asked = async { WorkerClient::connect(&url)?.progress(query).await };
            match tokio::time::timeout(ASK_WORKER, asked).await {
                Ok(Ok(counts)) => counts.into_iter().next().unwrap_or_default(),
                _ => Default::default(),
            }
        }
    });
    let mut out = ProgressReport {
        running: true,
        query_id: progress.query_id.clone(),
        elapsed_ms: elapsed.as_millis() as u64,
        rows_expected: progress.rows_expected.load(Ordering::Relaxed),
        rows_written: progress.rows_written.load(Ordering::Relaxed),
        ..Default::default()
    };
    for count in join_all(asks).await {
        out.rows_scanned += count.rows;
        out.bytes_scanned += count.bytes;
    }
    out
}
