//! The metastore in etcd: every key under one namespace (so clusters, and
//! tests, can share an etcd), a key's revision is etcd's `mod_revision`, a
//! commit is one etcd transaction, a watch is an etcd watch from the
//! revision current when it was asked for.
//!
//! `etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]`; the namespace defaults
//! to `tessera`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::{DataFusionError, Result};
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tessera_worker::ErrorKind;

use super::{Compare, Metastore, Op, Versioned, WatchEvent};

/// How long one etcd call may take before the statement that needed it
/// fails (etcd answers in milliseconds when it has a quorum).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct EtcdMetastore {
    client: Client,
    endpoints: Vec<String>,
    /// Prepended to every key: `<namespace>/`.
    prefix: String,
    /// Once this coordinator leads: the leader key's create revision.
    /// Every write then also compares it, so a coordinator that lost the
    /// lead (its lease expired) cannot write any more.
    fence: Arc<OnceLock<i64>>,
    /// The lease the leader key lives under, once this coordinator leads.
    lease: Arc<OnceLock<i64>>,
}

enum Campaign {
    Won(i64),
    Held { by: String, from_revision: i64 },
}

/// The key whose holder leads the cluster (outside the catalog's keys).
pub const LEADER_KEY: &str = "leader";

impl std::fmt::Debug for EtcdMetastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdMetastore({:?}, {})", self.endpoints, self.prefix)
    }
}

/// The endpoints and namespace of an `etcd://` URL.
pub fn parse_etcd_url(url: &str) -> Result<(Vec<String>, String)> {
    let bad = |why: &str| {
        ErrorKind::InvalidArgument.error(format!(
            "--metastore {url}: {why}; write etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]"
        ))
    };
    let rest = url
        .strip_prefix("etcd://")
        .ok_or_else(|| bad("not an etcd:// URL"))?;
    let (hosts, namespace) = match rest.split_once('/') {
        Some((h, ns)) => (h, ns.trim_matches('/')),
        None => (rest, ""),
    };
    let endpoints: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("http://{h}"))
        .collect();
    if endpoints.is_empty() {
        return Err(bad("no etcd endpoint"));
    }
    if let Some(h) = hosts.split(',').find(|h| !h.contains(':')) {
        return Err(bad(&format!("endpoint '{h}' has no port")));
    }
    let namespace = if namespace.is_empty() {
        "tessera"
    } else {
        namespace
    };
    Ok((endpoints, namespace.to_string()))
}

impl EtcdMetastore {
    /// Connects to the etcd cluster `url` names (`etcd://...`).
    pub async fn connect(url: &str) -> Result<Self> {
        let (endpoints, namespace) = parse_etcd_url(url)?;
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        let connect = Client::connect(endpoints.clone(), Some(options));
        let client = tokio::time::timeout(CALL_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable_etcd(&endpoints, "connecting timed out"))?
            .map_err(|e| unreachable_etcd(&endpoints, &e.to_string()))?;
        let store = Self {
            client,
            endpoints,
            prefix: format!("{namespace}/"),
            fence: Arc::new(OnceLock::new()),
            lease: Arc::new(OnceLock::new()),
        };
        // Fail now, with the address, if nobody answers there.
        store.current_revision().await?;
        Ok(store)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// One etcd call, within [`CALL_TIMEOUT`], its error made actionable.
    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unreachable_etcd(&self.endpoints, &format!("{what}: {e}"))),
            Err(_) => Err(unreachable_etcd(
                &self.endpoints,
                &format!("{what} took over {} s", CALL_TIMEOUT.as_secs()),
            )),
        }
    }

    /// Waits until this coordinator leads the cluster: the leader key is
    /// created under a lease of `ttl`, kept alive from then on; while
    /// another coordinator holds it, `waiting` is called with its holder
    /// and this one waits for the key to go. etcd being away meanwhile is
    /// waited out. Should the lease be lost, every later write fails
    /// (fencing) and `lost` is called.
    pub async fn lead(
        &self,
        holder: &str,
        ttl: Duration,
        waiting: impl Fn(&str),
        lost: impl FnOnce() + Send + 'static,
    ) -> Result<()> {
        let ttl_s = i64::try_from(ttl.as_secs_f64().ceil() as u64)
            .unwrap_or(60)
            .max(1);
        let ttl = Duration::from_secs(ttl_s as u64);
        let mut told = None;
        loop {
            match self.campaign(holder, ttl_s).await {
                Ok(Campaign::Won(lease)) => {
                    self.keep_alive(lease, ttl, lost).await?;
                    return Ok(());
                }
                Ok(Campaign::Held { by, from_revision }) => {
                    if told.as_deref() != Some(by.as_str()) {
                        waiting(&by);
                        told = Some(by);
                    }
                    if let Err(e) = self.wait_for_leader_to_go(from_revision).await {
                        tracing::warn!(error = %e, "watching the leader failed; campaigning again");
                        tokio::time::sleep(ttl / 4).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot campaign for the lead yet; retrying");
                    tokio::time::sleep(ttl / 4).await;
                }
            }
        }
    }

    /// One attempt to create the leader key under a new lease.
    async fn campaign(&self, holder: &str, ttl_s: i64) -> Result<Campaign> {
        let key = self.key(LEADER_KEY);
        let mut client = self.client.clone();
        let lease = self
            .call("granting a lease", client.lease_grant(ttl_s, None))
            .await?
            .id();
        let txn = Txn::new()
            .when([EtcdCompare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                key.as_str(),
                holder,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let mut kv = self.client.kv_client();
        let resp = self.call("campaigning", kv.txn(txn)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            let _ = self.fence.set(revision);
            let _ = self.lease.set(lease);
            return Ok(Campaign::Won(lease));
        }
        let _ = client.lease_revoke(lease).await;
        let by = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| kv.value_str().unwrap_or("?").to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "(gone already)".to_string());
        Ok(Campaign::Held {
            by,
            from_revision: revision + 1,
        })
    }

    /// Returns once the leader key is deleted at or after `from_revision`
    /// (its holder's lease ended, or it resigned), or the watch ends.
    async fn wait_for_leader_to_go(&self, from_revision: i64) -> Result<()> {
        let mut watcher = self.client.watch_client();
        let mut events = self
            .call(
                "watching the leader",
                watcher.watch(
                    self.key(LEADER_KEY),
                    Some(WatchOptions::new().with_start_revision(from_revision)),
                ),
            )
            .await?;
        while let Some(resp) = events.next().await {
            let resp = resp.map_err(|e| unreachable_etcd(&self.endpoints, &e.to_string()))?;
            if resp.canceled()
                || resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
            {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Who leads the cluster now (what the leader passed to [`Self::lead`]),
    /// if anyone does.
    pub async fn leader(&self) -> Result<Option<String>> {
        Ok(Metastore::get(self, LEADER_KEY).await?.map(|v| v.value))
    }

    /// Gives up the lead (a clean stop): a standby takes over at once.
    pub async fn resign(&self) {
        if let Some(lease) = self.lease.get() {
            let mut client = self.client.clone();
            let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(*lease)).await;
        }
    }

    /// Keeps lease `lease` alive in the background, a third of `ttl` apart,
    /// opening the keep-alive stream again after a broken connection; calls
    /// `lost` once etcd says the lease ended, or nothing renewed it for
    /// `ttl`.
    async fn keep_alive(
        &self,
        lease: i64,
        ttl: Duration,
        lost: impl FnOnce() + Send + 'static,
    ) -> Result<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let beat = (ttl / 3).max(Duration::from_millis(100));
            let mut last_ok = std::time::Instant::now();
            let mut stream = None;
            loop {
                if stream.is_none() {
                    let mut client = this.client.clone();
                    stream = tokio::time::timeout(beat, client.lease_keep_alive(lease))
                        .await
                        .ok()
                        .and_then(|r| r.ok());
                }
                let renewed = match stream.as_mut() {
                    Some((keeper, responses)) => {
                        keeper.keep_alive().await.is_ok()
                            && match tokio::time::timeout(beat, responses.message()).await {
                                Ok(Ok(Some(r))) if r.ttl() > 0 => true,
                                Ok(Ok(Some(_))) => {
                                    // etcd says the lease is gone.
                                    lost();
                                    return;
                                }
                                _ => false,
                            }
                    }
                    None => false,
                };
                if renewed {
                    last_ok = std::time::Instant::now();
                } else {
                    stream = None;
                    if last_ok.elapsed() >= ttl {
                        lost();
                        return;
                    }
                }
                tokio::time::sleep(beat).await;
            }
        });
        Ok(())
    }

    async fn current_revision(&self) -> Result<u64> {
        let mut kv = self.client.kv_client();
        let key = self.key("");
        let resp = self
            .call(
                "reading the revision",
                kv.get(key, Some(GetOptions::new().with_count_only())),
            )
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision().max(0) as u64))
    }

    fn versioned(&self, kv: &KeyValue) -> Result<(String, Versioned)> {
        let key = kv.key_str().map_err(|e| corrupt(&e))?;
        let key = key.strip_prefix(&self.prefix).unwrap_or(key).to_string();
        let value = kv.value_str().map_err(|e| corrupt(&e))?.to_string();
        Ok((
            key,
            Versioned {
                value,
                revision: kv.mod_revision().max(0) as u64,
            },
        ))
    }
}

fn unreachable_etcd(endpoints: &[String], why: &str) -> DataFusionError {
    ErrorKind::Unavailable.error(format!(
        "the metastore (etcd at {}) is not answering ({why}); check that etcd runs there and has \
         a quorum, then retry",
        endpoints.join(",")
    ))
}

fn corrupt(e: &etcd_client::Error) -> DataFusionError {
    DataFusionError::Execution(format!(
        "a metastore key in etcd is not UTF-8 ({e}); something other than Tessera wrote under \
         its namespace"
    ))
}

#[async_trait]
impl Metastore for EtcdMetastore {
    fn shared(&self) -> bool {
        true
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        let mut kv = self.client.kv_client();
        let resp = self.call("a read", kv.get(self.key(key), None)).await?;
        resp.kvs()
            .first()
            .map(|kv| self.versioned(kv).map(|(_, v)| v))
            .transpose()
    }

    async fn range(&self, prefix: &str) -> Result<BTreeMap<String, Versioned>> {
        let mut kv = self.client.kv_client();
        let resp = self
            .call(
                "a range read",
                kv.get(self.key(prefix), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        resp.kvs().iter().map(|kv| self.versioned(kv)).collect()
    }

    async fn commit(&self, compares: &[Compare], ops: &[Op]) -> Result<Option<u64>> {
        let mut when: Vec<EtcdCompare> = compares
            .iter()
            .map(|c| match c.revision {
                // Absent: never created (or deleted since).
                0 => EtcdCompare::create_revision(self.key(&c.key), CompareOp::Equal, 0),
                r => EtcdCompare::mod_revision(
                    self.key(&c.key),
                    CompareOp::Equal,
                    i64::try_from(r).unwrap_or(i64::MAX),
                ),
            })
            .collect();
        if let Some(fence) = self.fence.get() {
            when.push(EtcdCompare::create_revision(
                self.key(LEADER_KEY),
                CompareOp::Equal,
                *fence,
            ));
        }
        let then: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => TxnOp::put(self.key(k), v.as_str(), None),
                Op::Delete(k) => TxnOp::delete(self.key(k), None),
            })
            .collect();
        let mut kv = self.client.kv_client();
        let resp = self
            .call("a write", kv.txn(Txn::new().when(when).and_then(then)))
            .await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        Ok(Some(
            resp.header().map_or(0, |h| h.revision().max(0) as u64),
        ))
    }

    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>> {
        // From the revision current now: a write that returned before this
        // call is not reported, every later one is.
        let start = self.current_revision().await? + 1;
        let mut client = self.client.watch_client();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(i64::try_from(start).unwrap_or(i64::MAX));
        let stream = self
            .call(
                "starting a watch",
                client.watch(self.key(prefix), Some(options)),
            )
            .await?;
        let this = self.clone();
        // The stream ends when etcd's does (an error, a watch etcd cancelled,
        // e.g. after compacting the revisions it was to start from):
        // readers start a new watch then.
        let events = stream
            .take_while(|r| std::future::ready(matches!(r, Ok(resp) if !resp.canceled())))
            .flat_map(move |r| {
                let events: Vec<WatchEvent> = r
                    .map(|resp| {
                        resp.events()
                            .iter()
                            .filter_map(|e| {
                                let (key, v) = this.versioned(e.kv()?).ok()?;
                                Some(WatchEvent {
                                    key,
                                    value: (e.event_type() == EventType::Put).then_some(v.value),
                                    revision: v.revision,
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                futures::stream::iter(events)
            });
        Ok(events.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_endpoints_and_a_namespace() {
        let (e, ns) = parse_etcd_url("etcd://127.0.0.1:2379,10.0.0.2:2379/prod").unwrap();
        assert_eq!(e, ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]);
        assert_eq!(ns, "prod");
        assert_eq!(parse_etcd_url("etcd://h:1").unwrap().1, "tessera");
        for bad in ["http://h:1", "etcd://", "etcd://host/ns"] {
            assert!(parse_etcd_url(bad).is_err(), "{bad}");
        }
    }
}
