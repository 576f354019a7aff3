//! An embedded cluster: one coordinator serving Flight SQL plus N workers,
//! each its own gRPC server on a loopback port, all in this process but
//! talking only over their sockets. What `tessera serve` and the tests run.
//! Workers join the coordinator and heartbeat as separate `tessera worker`
//! processes do.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use std::time::Duration;

use tessera_worker::membership::{MemberHello, Membership, read_id, unix_now_ms, write_id};
use tessera_worker::{Storage, WorkerHandle, start_worker};

use crate::engine::Coordinator;
use crate::server::{CoordinatorServer, open_file_metastore};

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
    /// A worker not heard from for this long is down.
    pub lease: Duration,
    /// Who may call the coordinator.
    pub access: crate::flight_auth::Access,
    /// The first admin's password, if users sign in and there are none yet
    /// (`None`: one is generated, see [`Cluster::generated_password`]).
    pub first_password: Option<String>,
    /// Serve Flight SQL over TLS with this certificate (the workers, in
    /// this process and on loopback, are reached in plaintext).
    pub tls: Option<tessera_worker::tls::NodeTls>,
    /// Where clients may read (EXTERNAL TABLE) and write (COPY TO) files.
    pub files: crate::files::FileDirs,
}

/// A running cluster.
pub struct Cluster {
    pub addr: SocketAddr,
    pub workers: Vec<WorkerHandle>,
    coordinator: Arc<Coordinator>,
    data_dir: PathBuf,
    server: Option<CoordinatorServer>,
    /// With TLS to clients: the coordinator again, in plaintext on a
    /// loopback port, where this process's own workers send their
    /// heartbeats (they carry the cluster secret like any member).
    members: Option<CoordinatorServer>,
    /// Each worker's heartbeats, by id.
    heartbeats: BTreeMap<String, tokio::task::JoinHandle<()>>,
    /// The first admin's password, when this start made it up.
    pub generated_password: Option<String>,
    /// Whether clients connect with TLS.
    tls: bool,
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
        // Every member lives in this process: a secret of its own keeps
        // other processes out.
        tessera_worker::secret::ensure_cluster_secret()?;
        let mut workers = vec![];
        let worker_addr = SocketAddr::new(config.listen.ip(), 0);
        for i in 0..config.workers {
            let dir = config.data_dir.join(worker_id(i));
            let storage = Storage::open(&dir)?;
            // Worker `i` of an embedded cluster is `worker-i`.
            if read_id(&dir)?.is_none() {
                write_id(&dir, &worker_id(i))?;
            }
            workers.push(start_worker(&worker_id(i), worker_addr, storage).await?);
        }
        let members: BTreeMap<String, String> = workers
            .iter()
            .map(|w| (w.id.clone(), w.url.clone()))
            .collect();
        let metastore = open_file_metastore(&config.data_dir.join("coordinator")).await?;
        let coordinator =
            Arc::new(Coordinator::open(metastore, members.clone(), config.lease).await?);
        coordinator.set_file_dirs(config.files.clone());

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

        // Users exist before anyone can try to sign in.
        let generated_password = match config.access {
            crate::flight_auth::Access::SignIn { .. } => {
                coordinator
                    .ensure_admin(config.first_password.as_deref())
                    .await?
            }
            crate::flight_auth::Access::Insecure => None,
        };
        let server = CoordinatorServer::start_with(
            Arc::clone(&coordinator),
            config.listen,
            config.access,
            config.tls.as_ref(),
        )
        .await?;
        let addr = server.addr;
        let members = match config.tls {
            Some(_) => Some(
                CoordinatorServer::start_with(
                    Arc::clone(&coordinator),
                    SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 0),
                    config.access,
                    None,
                )
                .await?,
            ),
            None => None,
        };
        tracing::info!(%addr, workers = workers.len(), "coordinator listening");
        let mut cluster = Self {
            addr,
            workers,
            coordinator,
            data_dir: config.data_dir,
            server: Some(server),
            members,
            heartbeats: BTreeMap::new(),
            generated_password,
            tls: config.tls.is_some(),
        };
        let started: Vec<(String, String)> = cluster
            .workers
            .iter()
            .map(|w| (w.id.clone(), w.url.clone()))
            .collect();
        for (id, url) in started {
            cluster.join(&id, &url).await?;
        }
        Ok(cluster)
    }

    /// Worker `id` at `url` joins the coordinator and heartbeats from now on.
    async fn join(&mut self, id: &str, url: &str) -> Result<()> {
        let mut member = Membership {
            coordinators: vec![match &self.members {
                Some(m) => format!("http://{}", m.addr),
                None => self.url(),
            }],
            dir: self.data_dir.join(id),
            hello: MemberHello {
                id: Some(id.to_string()),
                url: url.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_at_ms: unix_now_ms(),
            },
        };
        let reply = member.join().await?;
        let task = tokio::spawn(member.run(Some(reply)));
        if let Some(old) = self.heartbeats.insert(id.to_string(), task) {
            old.abort();
        }
        Ok(())
    }

    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    /// The Flight SQL address clients connect to, as a URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops one worker, as if its process died; the others keep running.
    /// Returns its id and address, to start it again.
    pub async fn stop_worker(&mut self, index: usize) -> Option<(String, SocketAddr)> {
        if index >= self.workers.len() {
            return None;
        }
        let old = self.workers.remove(index);
        let stopped = (old.id.clone(), old.addr);
        if let Some(beats) = self.heartbeats.remove(&old.id) {
            beats.abort();
        }
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
        self.join(id, &url).await
    }

    /// Stops the coordinator and every worker.
    pub async fn stop(mut self) {
        for (_, beats) in std::mem::take(&mut self.heartbeats) {
            beats.abort();
        }
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        if let Some(members) = self.members.take() {
            members.stop().await;
        }
        for w in self.workers.drain(..) {
            w.stop().await;
        }
    }
}
