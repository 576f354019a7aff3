//! An embedded cluster: one coordinator serving Flight SQL plus N workers,
//! each its own gRPC server on a loopback port, all in this process but
//! talking only over their sockets. What `tessera serve` and the tests run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::common::{DataFusionError, Result};
use tessera_worker::wire::MAX_MESSAGE_BYTES;
use tessera_worker::{Storage, WorkerHandle, nodelay_incoming, start_worker};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::engine::Coordinator;
use crate::flight_sql::TesseraFlightSql;
use crate::metastore::FileMetastore;

/// How to start an embedded cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Where the coordinator serves Flight SQL.
    pub listen: SocketAddr,
    /// Number of workers, each on its own free loopback port.
    pub workers: usize,
    /// Coordinator catalog in `<data_dir>/coordinator`, worker `i`'s
    /// partitions in `<data_dir>/worker-i`.
    pub data_dir: PathBuf,
}

/// A running cluster.
pub struct Cluster {
    pub addr: SocketAddr,
    pub workers: Vec<WorkerHandle>,
    coordinator: Arc<Coordinator>,
    data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

fn worker_id(i: usize) -> String {
    format!("worker-{i}")
}

impl Cluster {
    pub async fn start(config: ClusterConfig) -> Result<Self> {
        if config.workers == 0 {
            return Err(DataFusionError::Configuration(
                "--workers must be at least 1".to_string(),
            ));
        }
        let mut workers = vec![];
        let worker_addr = SocketAddr::new(config.listen.ip(), 0);
        for i in 0..config.workers {
            let storage = Storage::open(config.data_dir.join(worker_id(i)))?;
            workers.push(start_worker(&worker_id(i), worker_addr, storage).await?);
        }
        let members: BTreeMap<String, String> = workers
            .iter()
            .map(|w| (w.id.clone(), w.url.clone()))
            .collect();
        let dir = config.data_dir.join("coordinator");
        let metastore = FileMetastore::open(&dir)?;
        crate::catalog_state::import_catalog_json(&dir, &metastore).await?;
        let coordinator = Arc::new(Coordinator::open(Box::new(metastore), members.clone()).await?);

        // Every partition must have a running owner.
        let state = coordinator.catalog().state()?;
        let missing: Vec<&str> = state
            .map
            .tables
            .values()
            .flatten()
            .map(|p| p.leader())
            .filter(|w| !members.contains_key(*w))
            .collect();
        if let Some(w) = missing.first() {
            let needed = missing
                .iter()
                .filter_map(|w| w.strip_prefix("worker-")?.parse::<usize>().ok())
                .max()
                .map_or(config.workers, |i| i + 1);
            return Err(DataFusionError::Configuration(format!(
                "the data dir {} has partitions on {w}, but only {} workers were started; \
                 start with --workers {needed} or more",
                config.data_dir.display(),
                config.workers,
            )));
        }

        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            DataFusionError::Configuration(format!(
                "cannot listen on {}: {e}; pick another address with --listen",
                config.listen
            ))
        })?;
        let addr = listener.local_addr()?;
        let service = FlightServiceServer::new(TesseraFlightSql::new(Arc::clone(&coordinator)))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(nodelay_incoming(listener), async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "coordinator server failed");
            }
        });
        tracing::info!(%addr, workers = workers.len(), "coordinator listening");
        Ok(Self {
            addr,
            workers,
            coordinator,
            data_dir: config.data_dir,
            shutdown: Some(tx),
            server,
        })
    }

    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    /// The Flight SQL address clients connect to, as a URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops one worker, as if its process died; the others keep running.
    /// Returns its id and address, to start it again.
    pub async fn stop_worker(&mut self, index: usize) -> Option<(String, SocketAddr)> {
        if index >= self.workers.len() {
            return None;
        }
        let old = self.workers.remove(index);
        let stopped = (old.id.clone(), old.addr);
        old.stop().await;
        Some(stopped)
    }

    /// Starts a stopped worker again on its data dir, at the same address
    /// if it is free (else another): it rejoins, and the coordinator
    /// resolves the writes it missed.
    pub async fn start_worker_again(&mut self, id: &str, addr: SocketAddr) -> Result<()> {
        let storage = Storage::open(self.data_dir.join(id))?;
        let handle = match start_worker(id, addr, Arc::clone(&storage)).await {
            Ok(h) => h,
            Err(_) => start_worker(id, SocketAddr::new(addr.ip(), 0), storage).await?,
        };
        let url = handle.url.clone();
        self.workers.push(handle);
        self.workers.sort_by(|a, b| a.id.cmp(&b.id));
        self.coordinator.worker_rejoined(id, &url).await
    }

    /// Stops the coordinator and every worker.
    pub async fn stop(mut self) {
        self.coordinator.close();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.server.await;
        for w in self.workers.drain(..) {
            w.stop().await;
        }
    }
}
