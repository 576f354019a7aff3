//! TLS on every connection a process serves or opens (rustls through
//! tonic). A process started with `--tls-cert/--tls-key` serves TLS only;
//! with `--tls-ca` too, it checks the certificates of the members it calls
//! (and, on a worker, demands one from every caller: mutual TLS inside the
//! cluster) and presents its own when it calls them.
//!
//! A client that speaks plaintext to a TLS port is not left with a reset
//! connection: its calls are answered, in plaintext, with an error saying
//! to connect with TLS.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use datafusion::common::Result;
use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::kind::ErrorKind;

/// The files a process's TLS comes from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The process's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA whose certificates the other members of the cluster carry.
    pub ca: Option<PathBuf>,
}

/// A process's certificate and key, and the CA it trusts.
#[derive(Clone, Debug)]
pub struct NodeTls {
    identity: Identity,
    ca: Option<Certificate>,
}

/// Whether a TLS server asks its callers for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// Callers may present one (clients that sign in with a password do not).
    Optional,
    /// Every caller presents one signed by the CA (a worker's callers are
    /// all members of the cluster).
    Required,
}

fn read_pem(path: &Path, what: &str, marker: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| {
        ErrorKind::InvalidArgument.error(format!(
            "cannot read the {what} {}: {e}; make one with `tessera cert`",
            path.display()
        ))
    })?;
    if !String::from_utf8_lossy(&bytes).contains(marker) {
        return Err(ErrorKind::InvalidArgument.error(format!(
            "{} is not a PEM {what} (no '{marker}' in it); make one with `tessera cert`",
            path.display()
        )));
    }
    Ok(bytes)
}

impl NodeTls {
    /// Reads the files, saying which one is missing or wrong.
    pub fn load(files: &TlsFiles) -> Result<Self> {
        let cert = read_pem(&files.cert, "certificate", "-----BEGIN CERTIFICATE-----")?;
        let key = read_pem(&files.key, "private key", "PRIVATE KEY-----")?;
        let ca = files
            .ca
            .as_deref()
            .map(|ca| read_pem(ca, "CA certificate", "-----BEGIN CERTIFICATE-----"))
            .transpose()?;
        Ok(Self {
            identity: Identity::from_pem(cert, key),
            ca: ca.map(Certificate::from_pem),
        })
    }

    /// Whether it trusts a CA (and so can call other members over TLS).
    pub fn has_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// The server side: this certificate; callers' certificates checked
    /// against the CA, if there is one.
    pub fn server(&self, clients: ClientCerts) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(self.identity.clone())
            .timeout(Duration::from_secs(10));
        match &self.ca {
            Some(ca) => config
                .client_ca_root(ca.clone())
                .client_auth_optional(clients == ClientCerts::Optional),
            None => config,
        }
    }

    /// The client side: servers checked against the CA; this certificate
    /// presented when a server asks for one.
    fn client(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().identity(self.identity.clone());
        match &self.ca {
            Some(ca) => config.ca_certificate(ca.clone()),
            None => config,
        }
    }
}

static MEMBER_TLS: OnceLock<NodeTls> = OnceLock::new();

/// Sets the TLS this process uses to call the other members (once).
pub fn set_member_tls(tls: NodeTls) {
    let _ = MEMBER_TLS.set(tls);
}

/// Whether this process calls the other members over TLS.
pub fn has_member_tls() -> bool {
    MEMBER_TLS.get().is_some()
}

/// `host:port` or a URL, as the URL a gRPC channel connects to: Flight's
/// `grpc+tls://` and `grpc://` as `https://` and `http://`; `host:port`
/// with TLS (`tls`) or without.
pub fn url(addr: &str, tls: bool) -> String {
    if let Some((scheme, rest)) = addr.split_once("://") {
        let rest = rest.trim_end_matches('/');
        return match scheme {
            "grpc+tls" => format!("https://{rest}"),
            "grpc" | "grpc+tcp" => format!("http://{rest}"),
            _ => format!("{scheme}://{rest}"),
        };
    }
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

/// `host:port` or a URL, as the URL this process calls a member at:
/// `https://` once it has TLS.
pub fn member_url(addr: &str) -> String {
    url(addr, has_member_tls())
}

/// The client TLS for a channel to `url`: none for `http://`; for
/// `https://`, this process's member TLS, which it must have.
pub(crate) fn client_tls_for(url: &str) -> Result<Option<ClientTlsConfig>> {
    if !url.starts_with("https://") {
        return Ok(None);
    }
    match MEMBER_TLS.get() {
        Some(tls) if tls.has_ca() => Ok(Some(tls.client())),
        _ => Err(ErrorKind::InvalidArgument.error(format!(
            "{url} speaks TLS, and this process has no CA to check its certificate with; start \
             it with --tls-cert, --tls-key and --tls-ca"
        ))),
    }
}

/// What a plaintext client of a TLS port is told.
pub const PLAINTEXT_REFUSED: &str = "this server accepts TLS connections only: clients connect with \
     grpc+tls://HOST:PORT (ADBC, JDBC useEncryption=true) or `tessera shell --tls-ca CA.crt`; \
     coordinators and workers need --tls-cert, --tls-key and --tls-ca";

/// The connections accepted on `listener`, as a stream for tonic. With TLS
/// (`tls` true), only those that open with a TLS handshake; plaintext ones
/// are answered, by a small server of their own, with
/// [`PLAINTEXT_REFUSED`]. The stream ends, and the listener closes, when
/// the server reading it drops it.
pub fn incoming(listener: TcpListener, tls: bool) -> IncomingStream {
    if !tls {
        return Box::pin(crate::service::nodelay_incoming(listener));
    }
    let (tls_tx, tls_rx) = mpsc::channel::<std::io::Result<TcpStream>>(64);
    let (plain_tx, plain_rx) = mpsc::channel::<std::io::Result<TcpStream>>(16);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tls_tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let conn = match accepted {
                Ok((conn, _)) => conn,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            };
            let (tls_tx, plain_tx) = (tls_tx.clone(), plain_tx.clone());
            tokio::spawn(async move {
                let _ = conn.set_nodelay(true);
                let mut first = [0u8; 1];
                let peeked =
                    tokio::time::timeout(Duration::from_secs(10), conn.peek(&mut first)).await;
                match peeked {
                    // A TLS record of type handshake (a ClientHello).
                    Ok(Ok(1)) if first[0] == 0x16 => {
                        let _ = tls_tx.send(Ok(conn)).await;
                    }
                    Ok(Ok(1)) => {
                        let _ = plain_tx.send(Ok(conn)).await;
                    }
                    // Closed, failed or silent: nothing to serve.
                    _ => {}
                }
            });
        }
    });
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .serve_with_incoming(RefusePlaintext, ReceiverStream::new(plain_rx))
            .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "plaintext refusal server stopped");
        }
    });
    Box::pin(ReceiverStream::new(tls_rx))
}

/// Accepted connections, for tonic's `serve_with_incoming_shutdown`.
pub type IncomingStream = Pin<Box<dyn Stream<Item = std::io::Result<TcpStream>> + Send>>;

/// Answers every call with `Unavailable` and [`PLAINTEXT_REFUSED`].
#[derive(Clone, Copy, Debug)]
struct RefusePlaintext;

impl tower::Service<http::Request<Body>> for RefusePlaintext {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<Body>) -> Self::Future {
        std::future::ready(Ok(tonic::Status::unavailable(PLAINTEXT_REFUSED).into_http()))
    }
}
