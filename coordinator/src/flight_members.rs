//! Calls only members of the cluster make to a coordinator (with the
//! cluster's secret): workers joining and heartbeating, followers taking
//! and pinning snapshots (see [`crate::follow`]).

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::Action;
use futures::{Stream, StreamExt};
use tessera_worker::membership::{HEARTBEAT_ACTION, JOIN_ACTION, MemberHello};
use tonic::{Request, Status};

use crate::engine::Coordinator;
use crate::flight_common::status;
use crate::follow::{PIN_ACTION, PinRequest, SNAPSHOT_ACTION, SnapshotReply, SnapshotRequest};
use crate::panic_guard::guarded;

pub type ActionStream =
    Pin<Box<dyn Stream<Item = Result<arrow_flight::Result, Status>> + Send + 'static>>;

/// One member's call.
pub async fn member_action(
    coordinator: Arc<Coordinator>,
    request: Request<Action>,
) -> Result<ActionStream, Status> {
    // Members only: every one of these carries the cluster's secret.
    tessera_worker::secret::check_metadata(request.metadata(), request.remote_addr())?;
    let action = request.into_inner();
    if action.r#type == SNAPSHOT_ACTION {
        return snapshot_for_follower(&coordinator, &action.body);
    }
    if action.r#type == PIN_ACTION {
        return pin_for_follower(&coordinator, &action.body);
    }
    if let Some(follower) = coordinator.follower() {
        if !matches!(action.r#type.as_str(), JOIN_ACTION | HEARTBEAT_ACTION) {
            return Err(Status::invalid_argument(format!(
                "unknown action '{}'",
                action.r#type
            )));
        }
        // The leader keeps membership; a worker may know only this one.
        let body = follower.forward_action(action).await.map_err(status)?;
        let result = arrow_flight::Result { body };
        return Ok(Box::pin(futures::stream::iter([Ok(result)])));
    }
    let hello: MemberHello = serde_json::from_slice(&action.body).map_err(|e| {
        Status::invalid_argument(format!(
            "'{}' carries no worker description ({e})",
            action.r#type
        ))
    })?;
    let reply = match action.r#type.as_str() {
        JOIN_ACTION => {
            let joined = guarded(async move { coordinator.join(hello).await })
                .await
                .map_err(status)?;
            serde_json::to_vec(&joined)
        }
        HEARTBEAT_ACTION => serde_json::to_vec(&coordinator.heartbeat(&hello).map_err(status)?),
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown action '{other}'"
            )));
        }
    }
    .map_err(|e| Status::internal(format!("membership reply: {e}")))?;
    let result = arrow_flight::Result { body: reply.into() };
    Ok(Box::pin(futures::stream::iter([Ok(result)])))
}

/// A follower's running query's snapshot, taken from the leader before
/// this one, pinned here while the call stays open.
fn pin_for_follower(coordinator: &Coordinator, body: &[u8]) -> Result<ActionStream, Status> {
    if coordinator.follower().is_some() {
        return Err(Status::unavailable(
            "this coordinator is taking over the lead of the cluster; retry in a moment",
        ));
    }
    let request: PinRequest = serde_json::from_slice(body)
        .map_err(|e| Status::invalid_argument(format!("unreadable pin request ({e})")))?;
    let catalog = coordinator.catalog();
    let pin = catalog.pin_xmin(request.xmin).map_err(status)?;
    Ok(held_open(catalog, pin, arrow_flight::Result::default()))
}

/// A call's answer `first`, then nothing until the caller drops the call
/// or this coordinator stops: `hold` is kept as long.
fn held_open<H: Send + 'static>(
    catalog: &crate::catalog::Catalog,
    hold: H,
    first: arrow_flight::Result,
) -> ActionStream {
    let mut stopped = catalog.stopped.subscribe();
    let rest = futures::stream::once(async move {
        let _ = stopped.wait_for(|s| *s).await;
        drop(hold);
    })
    .filter_map(|()| std::future::ready(None));
    Box::pin(futures::stream::iter([Ok(first)]).chain(rest))
}

/// A snapshot for a follower's query, with the leader's catalog revision
/// and members. Pinned: the call stays open, and the snapshot with it,
/// until the follower drops it or this coordinator stops.
fn snapshot_for_follower(coordinator: &Coordinator, body: &[u8]) -> Result<ActionStream, Status> {
    let request: SnapshotRequest = if body.is_empty() {
        SnapshotRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            Status::invalid_argument(format!(
                "unreadable snapshot request ({e}); run the same Tessera version on every \
                 coordinator"
            ))
        })?
    };
    let catalog = coordinator.catalog();
    if coordinator.follower().is_some() {
        // A follower that just won the lead answers so until it leads.
        return Err(Status::unavailable(
            "this coordinator is taking over the lead of the cluster; retry in a moment",
        ));
    }
    if let Some(target) = request.fresh {
        coordinator.applier().want_fresh(target);
    }
    let (snapshot, pin, layout_epoch) = catalog.snapshot().map_err(status)?;
    let reply = SnapshotReply {
        snapshot,
        revision: catalog.revision(),
        layout_epoch: Some(layout_epoch),
        members: catalog.membership().wire().map_err(status)?,
        sequence: catalog.next_reply_sequence(),
        from: String::new(),
    };
    let encoded =
        serde_json::to_vec(&reply).map_err(|e| Status::internal(format!("snapshot reply: {e}")))?;
    let first = arrow_flight::Result {
        body: encoded.into(),
    };
    if !request.pin {
        drop(pin);
        return Ok(Box::pin(futures::stream::iter([Ok(first)])));
    }
    Ok(held_open(catalog, pin, first))
}
