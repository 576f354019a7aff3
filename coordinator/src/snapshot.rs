//! A query's snapshot, carried in its session config from planning to the
//! end of its result stream: every scan of the query reads at it.

use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::execution::SessionState;
use tessera_worker::Snapshot;

use crate::catalog::{Catalog, SnapshotPin};

/// The snapshot of one statement, and the pin that holds it open for as
/// long as the statement's session config (and its task contexts) live.
#[derive(Debug)]
pub struct QuerySnapshot {
    pub snapshot: Arc<Snapshot>,
    _pin: SnapshotPin,
}

/// A copy of `base` that plans one statement at a snapshot taken now.
pub fn session_at_snapshot(base: SessionState, catalog: &Catalog) -> Result<SessionState> {
    let (snapshot, pin) = catalog.snapshot()?;
    let mut state = base;
    state.config_mut().set_extension(Arc::new(QuerySnapshot {
        snapshot: Arc::new(snapshot),
        _pin: pin,
    }));
    Ok(state)
}

/// The snapshot a statement planned in `session` reads at; one taken now
/// if it has none (a statement planned outside the engine's paths).
pub fn snapshot_of(session: &dyn Session, catalog: &Catalog) -> Result<Arc<Snapshot>> {
    match session.config().get_extension::<QuerySnapshot>() {
        Some(q) => Ok(Arc::clone(&q.snapshot)),
        None => Ok(Arc::new(catalog.latest_snapshot()?)),
    }
}
