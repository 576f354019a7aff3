//! The Flight action `tessera.progress`: how far a caller's tagged
//! statement got.

use datafusion::common::{DataFusionError, Result};

use super::Coordinator;
use crate::progress::{ACTION, MAX_TAG, ProgressRequest, report};
use crate::query_log::Caller;

impl Coordinator {
    /// Answers a `tessera.progress` action of `by` (its JSON body): the
    /// progress of `by`'s running statement with the tag asked for.
    pub async fn answer_progress(&self, by: &Caller, body: &[u8]) -> Result<Vec<u8>> {
        let asked: ProgressRequest = serde_json::from_slice(body).map_err(|e| {
            tessera_worker::ErrorKind::InvalidArgument.error(format!(
                "{ACTION}: the body must be JSON {{\"tag\": ...}}: {e}"
            ))
        })?;
        // Cut as the tag header is (see `flight_auth::caller`).
        let tag: String = asked.tag.chars().take(MAX_TAG).collect();
        let report = match self.query_log().progress_of(&tag, by) {
            Some((progress, elapsed)) => report(self.catalog(), &progress, elapsed).await,
            None => Default::default(),
        };
        serde_json::to_vec(&report).map_err(|e| DataFusionError::Internal(format!("{ACTION}: {e}")))
    }
}
