//! A coordinator serving Flight SQL (clients) and membership (workers) on
//! one address: what `tessera coordinator` runs, and the embedded cluster.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::common::{DataFusionError, Result};
use tessera_worker::tls::{ClientCerts, NodeTls, incoming};
use tessera_worker::wire::MAX_MESSAGE_BYTES;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;

use crate::engine::Coordinator;
use crate::flight_auth::{Access, Auth};
use crate::flight_sql::{Serving, TesseraFlightSql, current};
use crate::metastore::{FileMetastore, Metastore};

pub struct CoordinatorServer {
    pub addr: SocketAddr,
    serving: Serving,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl CoordinatorServer {
    /// Serves `coordinator` on `listen` (port 0: any free port) to anyone
    /// who reaches it (the embedded cluster of tests and benchmarks).
    pub async fn start(coordinator: Arc<Coordinator>, listen: SocketAddr) -> Result<Self> {
        Self::start_with(coordinator, listen, Access::Insecure, None).await
    }

    /// Serves `coordinator` on `listen`, letting clients in as `access`
    /// says; with `tls`, over TLS only (callers' certificates are checked
    /// against its CA when they present one).
    pub async fn start_with(
        coordinator: Arc<Coordinator>,
        listen: SocketAddr,
        access: Access,
        tls: Option<&NodeTls>,
    ) -> Result<Self> {
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server
                .tls_config(tls.server(ClientCerts::Optional))
                .map_err(|e| {
                    DataFusionError::Configuration(format!(
                        "the TLS certificate or key is not usable: {e}"
                    ))
                })?;
        }
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            DataFusionError::Configuration(format!(
                "cannot listen on {listen}: {e}; pick another address with --listen"
            ))
        })?;
        let addr = listener.local_addr()?;
        let serving: Serving = Arc::new(std::sync::RwLock::new(coordinator));
        let auth = Auth::new(access, Arc::clone(&serving));
        let service = FlightServiceServer::new(TesseraFlightSql::new(
            Arc::clone(&serving),
            Arc::clone(&auth),
        ))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let service = InterceptedService::new(service, move |request| auth.admit(request));
        let (tx, rx) = oneshot::channel::<()>();
        let tls_on = tls.is_some();
        let task = tokio::spawn(async move {
            let result = server
                .add_service(service)
                .serve_with_incoming_shutdown(incoming(listener, tls_on), async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "coordinator server failed");
            }
        });
        tracing::info!(%addr, "coordinator listening");
        Ok(Self {
            addr,
            serving,
            shutdown: Some(tx),
            task,
        })
    }

    /// The coordinator serving now.
    pub fn coordinator(&self) -> Arc<Coordinator> {
        current(&self.serving)
    }

    /// Serves `next` from now on (a follower that took over the lead) and
    /// stops the one before; statements it is running finish.
    pub fn replace(&self, next: Arc<Coordinator>) {
        let before = match self.serving.write() {
            Ok(mut c) => std::mem::replace(&mut *c, next),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), next),
        };
        before.close();
    }

    /// Stops background work and serving.
    pub async fn stop(mut self) {
        self.coordinator().close();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// The file metastore in `dir` (an older `catalog.json` there is
/// imported once).
pub async fn open_file_metastore(dir: &Path) -> Result<Box<dyn Metastore>> {
    let store = FileMetastore::open(dir)?;
    crate::catalog_state::import_catalog_json(dir, &store).await?;
    Ok(Box::new(store))
}
