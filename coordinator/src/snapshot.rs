//! A query's snapshot, carried in its session config from planning to the
//! end of its result stream: every scan of the query reads at it.

use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::execution::SessionState;
use tessera_worker::Snapshot;

use crate::catalog::{Catalog, SnapshotHold};
use crate::query_map::QueryMap;

/// The snapshot of one statement, and the hold that keeps it open for as
/// long as the statement's session config (and its task contexts) live.
#[derive(Debug)]
pub struct QuerySnapshot {
    pub snapshot: Arc<Snapshot>,
    _hold: Arc<SnapshotHold>,
}

/// A snapshot taken for a whole statement, and the partition map at it.
pub type Taken = (Arc<Snapshot>, Arc<SnapshotHold>, QueryMap);

tokio::task_local! {
    /// The snapshot a follower took before planning a statement (which
    /// also caught its catalog up): every query the statement plans reads
    /// at it.
    static TAKEN: Taken;
}

/// Runs `f` with every query it plans reading at `taken`.
pub async fn with_snapshot<F: Future>(taken: Taken, f: F) -> F::Output {
    TAKEN.scope(taken, f).await
}

/// Takes a snapshot for a whole statement.
pub async fn take(catalog: &Catalog) -> Result<Taken> {
    let (snapshot, hold, map) = catalog.take_snapshot().await?;
    Ok((
        Arc::new(snapshot),
        Arc::new(hold),
        QueryMap::new(map.revision, map.tables),
    ))
}

/// A copy of `base` that plans one statement at a snapshot taken now (or
/// the one taken for the statement, see [`with_snapshot`]).
pub async fn session_at_snapshot(base: SessionState, catalog: &Catalog) -> Result<SessionState> {
    let (snapshot, hold, map) =
        match TAKEN.try_with(|(s, h, m)| (Arc::clone(s), Arc::clone(h), m.clone())) {
            Ok(taken) => taken,
            Err(_) => take(catalog).await?,
        };
    let mut state = base;
    state.config_mut().set_extension(Arc::new(QuerySnapshot {
        snapshot,
        _hold: hold,
    }));
    // How far the statement got, counted by its scans and writes.
    if let Some(progress) = crate::progress::current() {
        state.config_mut().set_extension(progress);
    }
    // The partition map every scan of the statement reads, taken with
    // its snapshot.
    state.config_mut().options_mut().extensions.insert(map);
    Ok(state)
}

/// The snapshot a statement planned in `session` reads at; the current one
/// if it has none (a statement planned outside the engine's paths).
pub async fn snapshot_of(session: &dyn Session, catalog: &Catalog) -> Result<Arc<Snapshot>> {
    match session.config().get_extension::<QuerySnapshot>() {
        Some(q) => Ok(Arc::clone(&q.snapshot)),
        None => Ok(Arc::new(catalog.current_snapshot().await?)),
    }
}
