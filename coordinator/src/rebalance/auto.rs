//! `SET tessera.auto_rebalance = 'on'`: the leader plans and applies a
//! rebalance by itself when the cluster's workers change: one joins, or one
//! is set to drain. A worker that is merely down changes nothing here (its
//! copies stay where they are until it returns or is drained), so a flaky
//! worker never sets data moving back and forth.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use datafusion::common::Result;

use crate::catalog::Catalog;
use crate::catalog_state::AdminState;

/// How often the leader looks at its workers without being woken.
const TICK: Duration = Duration::from_secs(2);
/// How long after a rebalance with failed steps it plans again.
const RETRY: Duration = Duration::from_secs(30);

/// The workers as an operator sees them: who joined, and which drain.
/// Liveness is left out on purpose.
fn members(catalog: &Catalog) -> Result<BTreeMap<String, AdminState>> {
    Ok(catalog
        .state()?
        .members
        .into_iter()
        .map(|(id, m)| (id, m.admin))
        .collect())
}

/// Runs the automatic rebalance on the leader until it stops.
pub fn spawn_auto_rebalance(catalog: &Arc<Catalog>) {
    if catalog.follower().is_some() {
        return;
    }
    let catalog = Arc::clone(catalog);
    tokio::spawn(async move {
        // The workers the last plan was made for; `None` until one is.
        let mut planned_for: Option<BTreeMap<String, AdminState>> = None;
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let _ = tokio::time::timeout(TICK, catalog.rebalance_wanted.notified()).await;
            if catalog.closed.load(Ordering::SeqCst) {
                return;
            }
            if !catalog.auto_rebalance.load(Ordering::SeqCst) || catalog.rebalances.is_running() {
                continue;
            }
            match round(&catalog, &mut planned_for, &mut retry_at) {
                Ok(()) => {}
                Err(e) => tracing::info!(error = %e, "the automatic rebalance could not plan"),
            }
        }
    });
}

/// Plans and applies when the workers changed since the last plan (or
/// when the last run left failed steps and its retry is due).
fn round(
    catalog: &Arc<Catalog>,
    planned_for: &mut Option<BTreeMap<String, AdminState>>,
    retry_at: &mut Option<tokio::time::Instant>,
) -> Result<()> {
    let now = members(catalog)?;
    if catalog.rebalances.last_failed() && retry_at.is_none() {
        *retry_at = Some(tokio::time::Instant::now() + RETRY);
    }
    let retry = retry_at.is_some_and(|at| tokio::time::Instant::now() >= at);
    if planned_for.as_ref() == Some(&now) && !retry {
        return Ok(());
    }
    let plan = super::plan(&catalog.state()?, &super::roles(catalog)?, None);
    *planned_for = Some(now);
    *retry_at = None;
    if plan.steps.is_empty() {
        return Ok(());
    }
    tracing::info!(
        steps = plan.steps.len(),
        bytes = plan.moved_bytes(),
        "the workers changed: applying a rebalance (tessera.auto_rebalance is on)"
    );
    super::apply(catalog, plan.steps)
}
