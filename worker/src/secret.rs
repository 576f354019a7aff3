//! Members only: every call inside a cluster (coordinator to worker,
//! worker to worker, worker to coordinator for membership) carries the
//! cluster's shared secret in a gRPC header, and every receiver checks it,
//! in constant time, before anything else runs. A call without it gets
//! `Unauthenticated`, a log line, and changes nothing.
//!
//! The secret is one per process: read from `--cluster-secret-file`, or,
//! for `tessera serve` (whose workers are its own), made at random.

use std::sync::OnceLock;

use datafusion::common::Result;
use subtle::ConstantTimeEq;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::kind::ErrorKind;

/// The header carrying the secret.
pub const SECRET_HEADER: &str = "x-tessera-cluster-secret";

/// Shortest secret accepted.
const MIN_LEN: usize = 16;

static SECRET: OnceLock<http::HeaderValue> = OnceLock::new();

/// Sets this process's cluster secret (once; setting the same again is a
/// no-op).
pub fn set_cluster_secret(secret: &str) -> Result<()> {
    let secret = secret.trim();
    if secret.len() < MIN_LEN || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ErrorKind::InvalidArgument.error(format!(
            "a cluster secret must be at least {MIN_LEN} printable ASCII characters without \
             spaces; make one with `head -c 32 /dev/urandom | base64 > cluster.secret`"
        )));
    }
    let mut value = http::HeaderValue::from_str(secret)
        .map_err(|e| ErrorKind::InvalidArgument.error(format!("cluster secret: {e}")))?;
    value.set_sensitive(true);
    let set = SECRET.get_or_init(|| value.clone());
    if !bool::from(set.as_bytes().ct_eq(value.as_bytes())) {
        return Err(ErrorKind::InvalidArgument
            .error("this process already has another cluster secret".to_string()));
    }
    Ok(())
}

/// Reads the secret from `path` (`--cluster-secret-file`) and sets it.
pub fn set_cluster_secret_file(path: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ErrorKind::InvalidArgument.error(format!(
            "cannot read the cluster secret from {}: {e}",
            path.display()
        ))
    })?;
    set_cluster_secret(&text)
}

/// Makes up a random secret unless one is set: for a cluster whose
/// members all live in this process.
pub fn ensure_cluster_secret() -> Result<()> {
    SECRET.get_or_init(|| {
        let random = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        // 64 hex digits: always a valid header value.
        let mut value =
            http::HeaderValue::from_str(&random).unwrap_or(http::HeaderValue::from_static("-"));
        value.set_sensitive(true);
        value
    });
    Ok(())
}

/// Whether calls are checked (a secret is set).
pub fn has_cluster_secret() -> bool {
    SECRET.get().is_some()
}

fn add_secret(mut req: http::Request<Body>) -> http::Request<Body> {
    if let Some(secret) = SECRET.get() {
        req.headers_mut().insert(SECRET_HEADER, secret.clone());
    }
    req
}

/// A channel whose every call carries the secret.
pub type MemberChannel =
    tower::util::MapRequest<Channel, fn(http::Request<Body>) -> http::Request<Body>>;

pub fn member_channel(channel: Channel) -> MemberChannel {
    tower::ServiceExt::map_request(channel, add_secret as fn(_) -> _)
}

/// Whether `metadata` carries this process's secret (a secret is set, and
/// the call presents it): a call from another process of the cluster.
pub fn presents_secret(metadata: &MetadataMap) -> bool {
    let Some(secret) = SECRET.get() else {
        return false;
    };
    metadata
        .get(SECRET_HEADER)
        .is_some_and(|v| bool::from(v.as_bytes().ct_eq(secret.as_bytes())))
}

/// Whether `metadata` carries this process's secret (always, if none is
/// set); logs a refusal.
pub fn check_metadata(
    metadata: &MetadataMap,
    peer: Option<std::net::SocketAddr>,
) -> Result<(), Status> {
    let Some(secret) = SECRET.get() else {
        return Ok(());
    };
    let presented = metadata
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(presented.ct_eq(secret.as_bytes())) {
        return Ok(());
    }
    let peer = peer.map_or_else(|| "an unknown peer".to_string(), |p| p.to_string());
    tracing::warn!(%peer, "refused a call without this cluster's secret");
    Err(Status::unauthenticated(format!(
        "refused: the call from {peer} does not carry this cluster's secret; start the process \
         with the same --cluster-secret-file as the rest of the cluster"
    )))
}

/// The server-side check, as a tonic interceptor.
pub fn check_secret(req: Request<()>) -> Result<Request<()>, Status> {
    check_metadata(req.metadata(), req.remote_addr())?;
    Ok(req)
}
