//! The metastore on a real etcd passes the same conformance suite as the
//! file store.

use tessera_coordinator::{EtcdMetastore, Metastore, conformance};
use tessera_tests::Etcd;

#[tokio::test]
async fn etcd_metastore_passes_the_conformance_suite() {
    let etcd = Etcd::start().await;
    let url = etcd.namespace("conformance");
    conformance(move || {
        let url = url.clone();
        async move { Ok(Box::new(EtcdMetastore::connect(&url).await?) as Box<dyn Metastore>) }
    })
    .await;
}

#[tokio::test]
async fn namespaces_keep_clusters_apart_and_a_dead_etcd_is_named() {
    let etcd = Etcd::start().await;
    let a = EtcdMetastore::connect(&etcd.namespace("a")).await.unwrap();
    let b = EtcdMetastore::connect(&etcd.namespace("b")).await.unwrap();
    a.commit(&[], &[tessera_coordinator::Op::Put("k".into(), "1".into())])
        .await
        .unwrap()
        .unwrap();
    assert!(b.get("k").await.unwrap().is_none());
    assert!(b.range("").await.unwrap().is_empty());
    let url = etcd.url.clone();
    drop(etcd);
    let e = a.get("k").await.unwrap_err().to_string();
    assert!(
        e.contains("etcd at http://127.0.0.1:") && e.contains("not answering"),
        "{e}"
    );
    let e = EtcdMetastore::connect(&url).await.unwrap_err().to_string();
    assert!(e.contains("check that etcd runs"), "{e}");
}

/// Polls `check` until it holds; fails after `limit`.
async fn eventually(what: &str, limit: std::time::Duration, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_followers_queries_read_at_snapshots_pinned_on_the_leader() {
    use futures::TryStreamExt;
    use std::sync::Arc;
    use std::time::Duration;
    use tessera_coordinator::{Coordinator, CoordinatorServer, DEFAULT_LEASE, Follower};

    let etcd = Etcd::start().await;
    let url = etcd.namespace("follow");
    // The leader's key names the address it serves on.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let store = EtcdMetastore::connect(&url).await.unwrap();
    store
        .lead(&addr.to_string(), Duration::from_secs(5), |_| {}, || {})
        .await
        .unwrap();
    let leading = Coordinator::open(Box::new(store.clone()), Default::default(), DEFAULT_LEASE)
        .await
        .unwrap();
    let server = CoordinatorServer::start(Arc::new(leading), addr)
        .await
        .unwrap();
    let leader = Arc::clone(server.coordinator().catalog());
    let follower = Follower::new(EtcdMetastore::connect(&url).await.unwrap(), "127.0.0.1:1");
    let following = Coordinator::open_follower(follower, DEFAULT_LEASE)
        .await
        .unwrap();

    // Pinned on the leader from planning until the result is dropped.
    assert_eq!(leader.open_snapshots(), 0);
    let planned = following.plan("SELECT 1 AS one").await.unwrap();
    assert_eq!(leader.open_snapshots(), 1);
    let batches: Vec<_> = planned.execute().unwrap().try_collect().await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    drop(batches);
    eventually("the pin let go", Duration::from_secs(10), || {
        leader.open_snapshots() == 0
    })
    .await;

    // A switch of background work set through the follower is the leader's.
    assert!(!server.coordinator().compaction_paused());
    following
        .run("SET tessera.compaction = 'paused'")
        .await
        .unwrap();
    assert!(server.coordinator().compaction_paused());

    // A follower's query still open does not hold up the leader's stop.
    let held = following.plan("SELECT 2").await.unwrap();
    assert_eq!(leader.open_snapshots(), 1);
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("the leader stops while a follower's query holds a snapshot");
    drop(held);
    store.resign().await;
    let e = following.run("SELECT 3").await.unwrap_err().to_string();
    assert!(e.contains("no coordinator leads the cluster"), "{e}");
    following.close();
}

#[tokio::test]
async fn a_new_leader_keeps_the_snapshots_of_queries_running_on_followers() {
    use std::sync::Arc;
    use std::time::Duration;
    use tessera_coordinator::{Coordinator, CoordinatorServer, DEFAULT_LEASE, Follower};

    let etcd = Etcd::start().await;
    let url = etcd.namespace("takeover");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let lead = |addr: std::net::SocketAddr| {
        let url = url.clone();
        async move {
            let store = EtcdMetastore::connect(&url).await.unwrap();
            store
                .lead(&addr.to_string(), Duration::from_secs(5), |_| {}, || {})
                .await
                .unwrap();
            let coordinator =
                Coordinator::open(Box::new(store.clone()), Default::default(), DEFAULT_LEASE)
                    .await
                    .unwrap();
            let server = CoordinatorServer::start(Arc::new(coordinator), addr)
                .await
                .unwrap();
            (store, server)
        }
    };
    let (store_a, server_a) = lead(free()).await;
    let follower = Follower::new(EtcdMetastore::connect(&url).await.unwrap(), "127.0.0.1:1");
    let following = Coordinator::open_follower(follower, DEFAULT_LEASE)
        .await
        .unwrap();
    // A query planned under leader a, its rows not read yet.
    let running = following.plan("SELECT 1").await.unwrap();
    assert_eq!(server_a.coordinator().catalog().open_snapshots(), 1);
    server_a.stop().await;
    store_a.resign().await;

    // b takes over: it merges nothing at first, and the follower pins its
    // running query's snapshot on it.
    let (store_b, server_b) = lead(free()).await;
    let b = Arc::clone(server_b.coordinator().catalog());
    assert_eq!(
        b.compaction_bound().unwrap(),
        0,
        "a new leader merges nothing at first"
    );
    eventually("the follower's pin on b", Duration::from_secs(10), || {
        b.open_snapshots() == 1
    })
    .await;
    drop(running);
    eventually("the pin on b let go", Duration::from_secs(10), || {
        b.open_snapshots() == 0
    })
    .await;
    // New queries read at b's snapshots.
    let planned = following.plan("SELECT 2").await.unwrap();
    assert_eq!(b.open_snapshots(), 1);
    drop(planned);
    following.close();
    server_b.stop().await;
    store_b.resign().await;
}
