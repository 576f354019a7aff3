//! `SET tessera.auto_rebalance = 'on'`: the leader plans and applies a
//! rebalance by itself when the cluster's workers change (one joins, or one
//! is set to drain), or a table's strategy asks for a split or merge (a
//! REBALANCE DYNAMIC partition grew past its split size). A worker that is merely down changes nothing here (its
//! copies stay where they are until it returns or is drained), so a flaky
//! worker never sets data moving back and forth.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use datafusion::common::Result;

use super::Rebalancer;
use crate::catalog::Catalog;
use crate::catalog_state::AdminState;

/// How often the leader looks at its workers without being woken.
const TICK: Duration = Duration::from_secs(2);
/// How long after a rebalance with failed steps it plans again.
const RETRY: Duration = Duration::from_secs(30);

/// Runs the automatic rebalance on the leader until it stops.
pub fn spawn_auto_rebalance(catalog: &Arc<Catalog>, rebalancer: &Arc<Rebalancer>) {
    if catalog.follower().is_some() {
        return;
    }
    let catalog = Arc::clone(catalog);
    let rebalancer = Arc::clone(rebalancer);
    tokio::spawn(async move {
        // The workers the last plan was made for; `None` until one is.
        let mut planned_for: Option<BTreeMap<String, AdminState>> = None;
        let mut retry = Retry::default();
        loop {
            let _ = tokio::time::timeout(TICK, rebalancer.wanted.notified()).await;
            if catalog.closed.load(Ordering::SeqCst) {
                return;
            }
            if !rebalancer.auto() || rebalancer.log.is_running() {
                continue;
            }
            match round(&catalog, &rebalancer, &mut planned_for, &mut retry) {
                Ok(()) => {}
                Err(e) => tracing::info!(error = %e, "the automatic rebalance could not start"),
            }
        }
    });
}

/// Plans and applies when the workers changed since the last plan, or
/// again (a few times, further apart each time) when the last run left
/// failed steps.
fn round(
    catalog: &Arc<Catalog>,
    rebalancer: &Arc<Rebalancer>,
    planned_for: &mut Option<BTreeMap<String, AdminState>>,
    retry: &mut Retry,
) -> Result<()> {
    // The workers as an operator sees them: who joined, and which drain
    // (liveness left out on purpose).
    let now = catalog.member_admin()?;
    let changed = planned_for.as_ref() != Some(&now);
    let failed = rebalancer.log.last_failed();
    let due = if changed {
        *retry = Retry::default();
        true
    } else {
        retry.due(failed)
    };
    let state = catalog.state()?;
    if !due && state.tables.values().all(|t| t.rebalance.is_fixed()) {
        return Ok(());
    }
    let plan = super::plan(&state, &super::roles(catalog)?, None, &rebalancer.held);
    // A table's partitions grew past (or shrank under) what its strategy
    // keeps: split or merge them. One whose split or merge failed is held
    // back (`HeldBack`), so this does not try it again and again.
    let reshape = plan.steps.iter().any(|s| {
        matches!(
            s.operation,
            super::Operation::Split | super::Operation::Merge
        )
    });
    if !(due || reshape) {
        return Ok(());
    }
    if plan.steps.is_empty() {
        *planned_for = Some(now);
        return Ok(());
    }
    tracing::info!(
        steps = plan.steps.len(),
        bytes = plan.moved_bytes(),
        "applying a rebalance (tessera.auto_rebalance is on): the workers changed, or a \
         table's partitions grew or shrank"
    );
    // Refused while another rebalance (REBALANCE APPLY) runs: planned
    // again once it is over.
    super::apply(catalog, rebalancer, plan.steps)?;
    *planned_for = Some(now);
    Ok(())
}

/// Plans again after a run with failed steps: at most `RETRIES` times,
/// `RETRY` apart and twice that each time after.
#[derive(Debug, Default)]
struct Retry {
    tries: u32,
    at: Option<tokio::time::Instant>,
}

/// Plans made again at most after failed runs, until the workers change.
const RETRIES: u32 = 3;

impl Retry {
    fn due(&mut self, failed: bool) -> bool {
        if !failed || self.tries >= RETRIES {
            self.at = None;
            return false;
        }
        let now = tokio::time::Instant::now();
        match self.at {
            None => {
                self.at = Some(now + RETRY * 2u32.pow(self.tries));
                false
            }
            Some(at) if now >= at => {
                self.tries += 1;
                self.at = None;
                true
            }
            Some(_) => false,
        }
    }
}
