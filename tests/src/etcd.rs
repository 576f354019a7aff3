//! A real etcd for tests: Debian's `etcd` (installed by
//! `scripts/setup-system.sh`) on free loopback ports over a temporary data
//! dir, killed when dropped. A test that cannot start it fails: nothing
//! stands in for etcd.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_coordinator::EtcdMetastore;

pub struct Etcd {
    child: Child,
    /// `etcd://127.0.0.1:PORT`, without a namespace.
    pub url: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The etcd binary: `$TESSERA_ETCD`, else `etcd` on the PATH.
fn etcd_binary() -> PathBuf {
    std::env::var_os("TESSERA_ETCD").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

impl Etcd {
    /// Starts etcd and waits until it answers (at most 30 s).
    ///
    /// # Panics
    /// If etcd is not installed or does not come up.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let client = free_port();
        let peer = free_port();
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log file");
        let child = Command::new(etcd_binary())
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .arg("--max-txn-ops=4096")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): run scripts/setup-system.sh to install etcd, or set \
                     TESSERA_ETCD to its path",
                    etcd_binary().display()
                )
            });
        let etcd = Self {
            child,
            url: format!("etcd://127.0.0.1:{client}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match EtcdMetastore::connect(&etcd.url).await {
                Ok(_) => return etcd,
                Err(e) if Instant::now() > deadline => {
                    let log = std::fs::read_to_string(etcd._dir.path().join("etcd.log"))
                        .unwrap_or_default();
                    panic!("etcd did not come up within 30 s: {e}\n{log}");
                }
                // etcd is still starting: ask again.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The URL of a namespace of its own in this etcd.
    pub fn namespace(&self, ns: &str) -> String {
        format!("{}/{ns}", self.url)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
