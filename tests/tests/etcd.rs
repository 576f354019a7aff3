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
