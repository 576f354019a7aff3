//! What every [`Metastore`] must do, as one suite: reads see writes,
//! compare-and-swap refuses stale revisions and writes nothing then, a
//! transaction is all or nothing, ranges stay within their prefix, watches
//! deliver changes in order, concurrent read-modify-write loses no update,
//! counters hand out disjoint ranges, and a reopened store holds the same.
//! The file store runs it in its unit tests; etcd will run the same.

// A test suite: a property that does not hold panics, with what it saw.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::Result;
use futures::StreamExt;

use super::{Compare, Metastore, Op, reserve, update_key};

fn put(key: &str, value: &str) -> Op {
    Op::Put(key.to_string(), value.to_string())
}

fn at(key: &str, revision: u64) -> Compare {
    Compare {
        key: key.to_string(),
        revision,
    }
}

/// Runs the suite. `open` opens the store under test; called again, it must
/// open the same data (a restart). The store starts empty.
///
/// # Panics
/// On the first property that does not hold.
pub async fn conformance<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Box<dyn Metastore>>>,
{
    let store: Arc<dyn Metastore> = Arc::from(open().await.expect("store opens"));

    // Reads see writes; a key's revision is that of its last write.
    assert!(store.get("t/a").await.unwrap().is_none());
    let r1 = store
        .commit(&[at("t/a", 0)], &[put("t/a", "1")])
        .await
        .unwrap()
        .expect("create an absent key");
    let a = store.get("t/a").await.unwrap().unwrap();
    assert_eq!((a.value.as_str(), a.revision), ("1", r1));

    // Compare-and-swap: a stale revision writes nothing.
    assert_eq!(
        store
            .commit(&[at("t/a", 0)], &[put("t/a", "again")])
            .await
            .unwrap(),
        None,
        "created a key that exists"
    );
    let r2 = store
        .commit(&[at("t/a", r1)], &[put("t/a", "2")])
        .await
        .unwrap()
        .expect("swap at the current revision");
    assert!(r2 > r1, "revisions grow: {r1} then {r2}");
    assert_eq!(
        store
            .commit(&[at("t/a", r1)], &[put("t/a", "stale")])
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.get("t/a").await.unwrap().unwrap().value, "2");

    // All or nothing: a failed compare on one key writes none of the ops.
    assert_eq!(
        store
            .commit(
                &[at("t/a", r2), at("t/missing", 7)],
                &[put("t/a", "3"), put("t/b", "3")]
            )
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.get("t/a").await.unwrap().unwrap().value, "2");
    assert!(store.get("t/b").await.unwrap().is_none());
    let r3 = store
        .commit(
            &[],
            &[put("t/b", "b"), put("t/c", "c"), Op::Delete("t/a".into())],
        )
        .await
        .unwrap()
        .unwrap();
    assert!(store.get("t/a").await.unwrap().is_none());
    for key in ["t/b", "t/c"] {
        assert_eq!(store.get(key).await.unwrap().unwrap().revision, r3);
    }
    // A deleted key compares as absent again.
    assert!(
        store
            .commit(&[at("t/a", 0)], &[put("t/a", "back")])
            .await
            .unwrap()
            .is_some()
    );

    // Ranges: the prefix only, in key order.
    store
        .commit(&[], &[put("t", "x"), put("t0", "x"), put("s/z", "x")])
        .await
        .unwrap()
        .unwrap();
    let keys: Vec<String> = store.range("t/").await.unwrap().into_keys().collect();
    assert_eq!(keys, ["t/a", "t/b", "t/c"]);

    // Watches: changes under the prefix, in order, with their revisions.
    let mut watch = store.watch("w/").await.unwrap();
    let w1 = store
        .commit(&[], &[put("w/1", "one")])
        .await
        .unwrap()
        .unwrap();
    store
        .commit(&[], &[put("x/1", "other")])
        .await
        .unwrap()
        .unwrap();
    let w2 = store
        .commit(&[], &[Op::Delete("w/1".into())])
        .await
        .unwrap()
        .unwrap();
    for (key, value, revision) in [("w/1", Some("one"), w1), ("w/1", None, w2)] {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("a watch event within 10 s")
            .expect("the watch goes on");
        assert_eq!(event.key, key);
        assert_eq!(event.value.as_deref(), value);
        assert_eq!(event.revision, revision);
    }

    // Concurrent read-modify-write loses no update.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for _ in 0..25 {
                    update_key(store.as_ref(), "n", |v| {
                        let n: u64 = v.map_or(Ok(0), str::parse).unwrap();
                        Ok((Some((n + 1).to_string()), ()))
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.get("n").await.unwrap().unwrap().value, "200");

    // Counters hand out disjoint ranges, from the floor on.
    let first = reserve(store.as_ref(), "ids", 10, 1000).await.unwrap();
    let second = reserve(store.as_ref(), "ids", 10, 0).await.unwrap();
    assert_eq!((first, second), (1000, 1010));

    // A reopened store holds the same keys and revisions, and goes on
    // from there.
    let before = store.range("").await.unwrap();
    let last = before.values().map(|v| v.revision).max().unwrap_or(0);
    drop(watch);
    drop(store);
    let store = open().await.expect("store reopens");
    assert_eq!(store.range("").await.unwrap(), before);
    let next = store
        .commit(&[], &[put("after", "x")])
        .await
        .unwrap()
        .unwrap();
    assert!(
        next > last,
        "revision {next} after a reopen is not past {last}"
    );
}
