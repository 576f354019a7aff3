use super::*;

#[test]
fn the_log_keeps_the_last_queries() {
    let log = Arc::new(QueryLog::default());
    for i in 0..(KEEP + 5) {
        log.begin(&format!("SELECT {i}")).finish(Ok(1));
    }
    let all = log.snapshot();
    assert_eq!(all.len(), KEEP);
    assert_eq!(all[0].sql, "SELECT 5");
    assert_eq!(all[0].seq, 6);
    assert!(all[0].query_id.ends_with("-6"), "{}", all[0].query_id);
    assert_eq!(all[KEEP - 1].status, "ok");
    let batch = queries_batch(&all).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(batch.num_rows(), KEEP);
}

#[tokio::test]
async fn running_queries_are_listed_seen_and_cancelled_by_their_owner() {
    let log = Arc::new(QueryLog::default());
    let user = |name: &str, admin: bool| Caller {
        user: Some(name.to_string()),
        client: Some("127.0.0.1:5".into()),
        admin,
        run: 0,
        tag: None,
    };
    let recorder = as_caller(user("ana", false), async { log.begin("SELECT 1") }).await;
    let running = log.running();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].status, "running");
    assert_eq!(running[0].user.as_deref(), Some("ana"));
    let id = running[0].query_id.clone();

    assert!(log.visible(&user("bo", false)).is_empty());
    assert_eq!(log.visible(&user("root", true)).len(), 1);
    let e = log.cancel(&id, &user("bo", false)).unwrap_err();
    assert!(e.to_string().contains("not yours"), "{e}");
    assert!(!recorder.cancel.is_cancelled());
    log.cancel(&id, &user("ana", false)).unwrap();
    assert!(recorder.cancel.is_cancelled());
    assert!(log.cancel("nope-1", &user("root", true)).is_err());

    // Dropped before its end: logged as cancelled, no longer running.
    drop(recorder);
    assert!(log.running().is_empty());
    assert_eq!(log.snapshot()[0].status, "cancelled");
}
