use super::*;

/// Every part of the state survives its keys, and a change writes only
/// the keys it touches.
#[test]
fn keys_round_trip_and_diffs_are_small() {
    let mut s = CatalogState::default();
    s.map.epoch = 3;
    s.external_tables.insert("e".into(), "CREATE ...".into());
    s.decided.insert(
        42,
        BTreeMap::from([(
            "worker-0".to_string(),
            vec![StagedWrite {
                txn: 42,
                table: "t.1".into(),
                partition: 2,
            }],
        )]),
    );
    s.tables_created = 2;
    s.indexes_created = 1;
    s.stats.insert(
        "a/b".into(),
        BTreeMap::from([(
            0,
            SizeEstimate {
                rows: 5,
                bytes: 9,
                writes: 1,
            },
        )]),
    );
    s.stats_deltas.insert(
        42,
        BTreeMap::from([(
            "a/b".to_string(),
            PartsDelta {
                owner: 3,
                parts: BTreeMap::from([(
                    0,
                    SizeEstimate {
                        rows: 1,
                        bytes: 2,
                        writes: 1,
                    },
                )]),
            },
        )]),
    );
    s.index_stats.insert(
        "i".into(),
        IndexStats {
            entries: 4,
            ..Default::default()
        },
    );
    s.members.insert(
        "worker-7".into(),
        MemberRecord {
            url: "http://127.0.0.3:7000".into(),
            admin: AdminState::Draining,
        },
    );
    let ops = CatalogState::default().diff(&s).unwrap();
    let mut entries = BTreeMap::new();
    for (n, op) in ops.iter().enumerate() {
        if let Op::Put(k, v) = op {
            entries.insert(
                k.clone(),
                Versioned {
                    value: v.clone(),
                    revision: n as u64 + 1,
                },
            );
        }
    }
    assert_eq!(CatalogState::from_keys(&entries).unwrap(), s);

    let mut next = s.clone();
    next.decided.remove(&42);
    next.stats
        .get_mut("a/b")
        .unwrap()
        .insert(1, SizeEstimate::default());
    let ops = s.diff(&next).unwrap();
    let keys: Vec<&str> = ops.iter().map(Op::key).collect();
    assert_eq!(keys, ["decided/00000000000000000042", "stats/a/b"]);
    let mut applied = s.clone();
    for op in &ops {
        match op {
            Op::Put(k, v) => applied.apply(k, Some(v)).unwrap(),
            Op::Delete(k) => applied.apply(k, None).unwrap(),
        }
    }
    assert_eq!(applied, next);
}

/// A write's counts are seen before they are folded into `stats`,
/// and the same after; a dropped table's pending counts go with it,
/// and those of a table replaced since (another id) never count.
#[test]
fn pending_counts_are_seen_folded_and_dropped() {
    let count = |rows, bytes| SizeEstimate {
        rows,
        bytes,
        writes: 1,
    };
    let mut s = CatalogState::default();
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let schema = Schema::new(vec![Field::new("k", DataType::Int64, false)]);
    let scheme = tessera_sql::PartitionScheme::Hash {
        columns: vec!["k".into()],
        partitions: 2,
        cluster_by: vec![],
    };
    for (id, name) in [(1, "t"), (2, "u")] {
        let def = TableDef::try_new(name, id, &schema, scheme.clone()).unwrap();
        s.tables.insert(name.into(), def);
    }
    s.stats
        .insert("t".into(), BTreeMap::from([(0, count(10, 100))]));
    let delta = |owner, p, n| PartsDelta {
        owner,
        parts: BTreeMap::from([(p, count(n, 10 * n))]),
    };
    for (txn, p) in [(7, 0), (8, 1)] {
        s.stats_deltas.insert(
            txn,
            BTreeMap::from([
                ("t".to_string(), delta(1, p, 1)),
                ("u".to_string(), delta(2, 0, 2)),
            ]),
        );
    }
    // Of an earlier table 'u' (id 9), dropped: never counted.
    s.stats_deltas
        .insert(3, BTreeMap::from([("u".to_string(), delta(9, 0, 50))]));
    let seen = |s: &CatalogState| {
        (
            s.partition_stats("t", 0),
            s.partition_stats("t", 1),
            s.table_stats("u"),
        )
    };
    let before = seen(&s);
    assert_eq!(
        before.0,
        SizeEstimate {
            rows: 11,
            bytes: 110,
            writes: 2
        }
    );
    assert_eq!(before.1, count(1, 10));
    assert_eq!(
        before.2,
        Some(BTreeMap::from([(
            0,
            SizeEstimate {
                rows: 4,
                bytes: 40,
                writes: 2
            }
        )]))
    );
    let mut folded = s.clone();
    folded.fold_stats_deltas([3, 7]);
    assert_eq!(folded.stats_deltas.keys().collect::<Vec<_>>(), [&8]);
    assert_eq!(seen(&folded), before);
    folded.fold_stats_deltas_of("u");
    assert_eq!(folded.stats_deltas[&8].keys().collect::<Vec<_>>(), ["t"]);
    assert_eq!(seen(&folded), before);

    let removed = s.remove_stats("t").unwrap();
    assert_eq!(removed[&0].rows, 11);
    assert_eq!(s.table_stats("t"), None);
    assert_eq!(s.stats_deltas.len(), 3);
    s.remove_stats("u");
    assert!(s.stats_deltas.is_empty());
}

/// A data dir of an earlier version: its catalog.json moves into the
/// metastore once, and the old file stays, renamed.
#[tokio::test]
async fn catalog_json_is_imported_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = CatalogState {
        tables_created: 4,
        ..Default::default()
    };
    old.external_tables
        .insert("e".into(), "CREATE EXTERNAL ...".into());
    std::fs::write(
        dir.path().join("catalog.json"),
        serde_json::to_vec(&old).unwrap(),
    )
    .unwrap();
    let store = crate::metastore::FileMetastore::open(dir.path()).unwrap();
    import_catalog_json(dir.path(), &store).await.unwrap();
    let state = CatalogState::from_keys(&store.range("").await.unwrap()).unwrap();
    assert_eq!(state, old);
    assert!(!dir.path().join("catalog.json").exists());
    assert!(dir.path().join("catalog.json.imported").exists());
    // Nothing to import the second time.
    import_catalog_json(dir.path(), &store).await.unwrap();
}
