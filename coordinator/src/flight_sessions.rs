//! Each client's session: its `SET` options are its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;
use tonic::{Request, Status};

use crate::engine::Coordinator;

/// A client's session, made by the coordinator serving it then (a new
/// leader starts new sessions).
struct Session {
    coordinator: Arc<Coordinator>,
    context: SessionContext,
    used: Instant,
}

/// A session nobody used for this long is dropped.
const SESSION_IDLE: Duration = Duration::from_secs(3600);

/// Who a call comes from: its bearer token if it has one, else its
/// connection (one per client: ADBC, JDBC and the shell each hold one).
fn client_key(
    metadata: &tonic::metadata::MetadataMap,
    peer: Option<std::net::SocketAddr>,
) -> String {
    if let Some(auth) = metadata.get("authorization").and_then(|v| v.to_str().ok())
        && let Some(token) = auth.strip_prefix("Bearer ")
    {
        return format!("token {token}");
    }
    peer.map_or_else(|| "unknown".to_string(), |p| format!("connection {p}"))
}

/// The sessions of a coordinator's clients, by client.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// The session of the client `request` comes from, served by
    /// `coordinator`.
    pub fn of<T>(
        &self,
        request: &Request<T>,
        coordinator: &Arc<Coordinator>,
    ) -> Result<SessionContext, Status> {
        let key = client_key(request.metadata(), request.remote_addr());
        let mut sessions = self
            .open
            .lock()
            .map_err(|_| Status::internal("sessions poisoned"))?;
        sessions.retain(|_, s| s.used.elapsed() < SESSION_IDLE);
        let session = sessions.entry(key).or_insert_with(|| Session {
            coordinator: Arc::clone(coordinator),
            context: coordinator.new_session(),
            used: Instant::now(),
        });
        if !Arc::ptr_eq(&session.coordinator, coordinator) {
            session.coordinator = Arc::clone(coordinator);
            session.context = coordinator.new_session();
        }
        session.used = Instant::now();
        Ok(session.context.clone())
    }
}
