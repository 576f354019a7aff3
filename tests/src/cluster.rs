//! `TestCluster`: the one harness every integration test uses.
//!
//! ```ignore
//! let cluster = TestCluster::builder().workers(3).start().await;
//! let rows = cluster.query("SELECT 1").await?;
//! let cluster = cluster.restart().await; // same data dir, new processes' state
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::common::Result;
use futures::TryStreamExt;
use tempfile::TempDir;
use tessera_coordinator::{Cluster, ClusterConfig};
use tonic::transport::{Channel, Endpoint};

pub struct TestClusterBuilder {
    workers: usize,
    data_dir: Option<PathBuf>,
}

impl TestClusterBuilder {
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Use this data dir instead of a fresh temporary one.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    pub async fn start(self) -> TestCluster {
        let (tmp, dir) = match self.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().expect("temp dir");
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let cluster = start_cluster(&dir, self.workers)
            .await
            .expect("test cluster starts");
        TestCluster {
            cluster: Some(cluster),
            workers: self.workers,
            stopped: vec![],
            dir,
            _tmp: tmp,
            session: Default::default(),
        }
    }
}

async fn start_cluster(dir: &Path, workers: usize) -> Result<Cluster> {
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
    Cluster::start(ClusterConfig {
        listen,
        workers,
        data_dir: dir.to_path_buf(),
        lease: tessera_coordinator::DEFAULT_LEASE,
        access: tessera_coordinator::Access::Insecure,
        first_password: None,
        tls: None,
        // Tests read and write files of their own under the cluster's dir.
        files: tessera_coordinator::FileDirs::new(&[dir.to_path_buf()], &[dir.to_path_buf()])?,
    })
    .await
}

pub struct TestCluster {
    cluster: Option<Cluster>,
    workers: usize,
    /// Workers stopped to be started again: id and address.
    stopped: Vec<(String, SocketAddr)>,
    dir: PathBuf,
    _tmp: Option<TempDir>,
    /// The connection `query` uses: one client session, as a user's
    /// shell or script holds (SET carries over from one query to the next).
    session: std::sync::Mutex<Option<FlightSqlServiceClient<Channel>>>,
}

impl TestCluster {
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder {
            workers: 3,
            data_dir: None,
        }
    }

    pub fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("cluster is running")
    }

    pub fn url(&self) -> String {
        self.cluster().url()
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// A Flight SQL client connected to the coordinator.
    pub async fn client(&self) -> FlightSqlServiceClient<Channel> {
        let channel = Endpoint::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect to coordinator");
        FlightSqlServiceClient::new(channel)
    }

    /// Runs one statement through Flight SQL, in this test's session (one
    /// connection, shared by concurrent queries); the error is the
    /// server's text.
    pub async fn query(&self, sql: &str) -> std::result::Result<Vec<RecordBatch>, String> {
        let held = self.session.lock().expect("session lock").clone();
        let mut client = match held {
            Some(client) => client,
            None => {
                let client = self.client().await;
                *self.session.lock().expect("session lock") = Some(client.clone());
                client
            }
        };
        run_query(&mut client, sql).await
    }

    /// Runs statements in order; panics with the first one that fails.
    pub async fn run_all(&self, statements: &[&str]) {
        for sql in statements {
            if let Err(e) = self.query(sql).await {
                panic!("{sql}: {e}");
            }
        }
    }

    /// Stops everything and starts a new cluster on the same data dir.
    pub async fn restart(mut self) -> TestCluster {
        if let Some(c) = self.cluster.take() {
            c.stop().await;
        }
        self.cluster = Some(
            start_cluster(&self.dir, self.workers)
                .await
                .expect("restart"),
        );
        // A new server: a new connection, and a new session.
        *self.session.lock().expect("session lock") = None;
        self
    }

    pub async fn stop(mut self) {
        if let Some(c) = self.cluster.take() {
            c.stop().await;
        }
    }
}

/// Runs one statement through Flight SQL on the coordinator at `url` (for
/// tasks that run while the test holds the cluster to stop or restart
/// parts of it).
pub async fn query_url(url: &str, sql: &str) -> std::result::Result<Vec<RecordBatch>, String> {
    let channel = Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    run_query(&mut FlightSqlServiceClient::new(channel), sql).await
}

pub(crate) async fn run_query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> std::result::Result<Vec<RecordBatch>, String> {
    let text = tessera_datasets::flight_error_text;
    let info = client.execute(sql.to_string(), None).await.map_err(text)?;
    let mut out = vec![];
    for ep in info.endpoint {
        let Some(ticket) = ep.ticket else { continue };
        let batches: Vec<RecordBatch> = client
            .do_get(ticket)
            .await
            .map_err(text)?
            .try_collect()
            .await
            .map_err(text)?;
        out.extend(batches);
    }
    Ok(out)
}

impl TestCluster {
    /// Stops worker `index` (its server closes; the data stays on disk).
    pub async fn stop_worker(&mut self, index: usize) {
        let cluster = self.cluster.as_mut().expect("cluster is running");
        if let Some(stopped) = cluster.stop_worker(index).await {
            self.stopped.push(stopped);
        }
    }

    /// Starts the workers stopped with [`TestCluster::stop_worker`] again,
    /// on their data dirs; each rejoins.
    pub async fn start_stopped_workers(&mut self) {
        let cluster = self.cluster.as_mut().expect("cluster is running");
        for (id, addr) in self.stopped.drain(..) {
            cluster
                .start_worker_again(&id, addr)
                .await
                .expect("worker restarts and rejoins");
        }
    }
}
