use super::*;
use crate::index::IndexKind;
use crate::key::KeyValue;
use crate::replication::{Replication, WriteQuorum};
use crate::scheme::PartitionScheme;
use datafusion::arrow::datatypes::Schema;

fn create(sql: &str) -> CreateTable {
    match parse_statement(sql).unwrap() {
        Statement::CreateTable(c) => c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn hash_clause() {
    let c = create("CREATE TABLE T (k BIGINT, v VARCHAR) PARTITION BY HASH (K) PARTITIONS 8;");
    assert_eq!(c.name, "t");
    assert_eq!(c.base_sql, "CREATE TABLE T (k BIGINT, v VARCHAR)");
    assert_eq!(
        c.partitioning,
        Some(PartitionSpec::Hash {
            columns: vec!["k".into()],
            partitions: 8,
            cluster_by: vec![]
        })
    );
}

#[test]
fn replicas_clause() {
    let c = create(
        "CREATE TABLE t (k BIGINT) PARTITION BY HASH (k) PARTITIONS 8 REPLICAS 3 WRITE QUORUM all",
    );
    assert_eq!(
        c.replication,
        Some(Replication {
            replicas: 3,
            quorum: WriteQuorum::All
        })
    );
    assert!(matches!(
        c.partitioning,
        Some(PartitionSpec::Hash { partitions: 8, .. })
    ));
    // Before PARTITION BY, without a quorum, and with AS SELECT.
    let c = create("create table t replicas 2 partition by hash (k) partitions 4 as select 1 as k");
    assert_eq!(c.replication, Some(Replication::try_new(2, None).unwrap()));
    assert_eq!(c.query.as_deref(), Some("SELECT 1 AS k"));
    assert!(c.partitioning.is_some());
    assert_eq!(create("CREATE TABLE t (k INT)").replication, None);
    // A column named replicas is a column.
    assert_eq!(create("CREATE TABLE t (replicas INT)").replication, None);
    let err = |sql: &str| parse_statement(sql).unwrap_err().to_string();
    assert!(err("CREATE TABLE t (k INT) REPLICAS 0").contains("between 1 and"));
    assert!(err("CREATE TABLE t (k INT) REPLICAS two").contains("REPLICAS 3"));
    assert!(err("CREATE TABLE t (k INT) REPLICAS 2 WRITE QUORUM SOME").contains("MAJORITY"));
}

#[test]
fn set_replicas() {
    assert_eq!(
        parse_statement("alter table T set replicas 3;").unwrap(),
        Statement::SetReplicas {
            table: "t".into(),
            replicas: 3
        }
    );
    assert!(parse_statement("ALTER TABLE t SET REPLICAS 0").is_err());
    assert!(parse_statement("ALTER TABLE t SET REPLICAS x").is_err());
}

#[test]
fn rebalance_clause() {
    let c = create(
        "CREATE TABLE t (k BIGINT) PARTITION BY RANGE (k) SPLIT AT (10) REBALANCE DYNAMIC \
         SPLIT SIZE '64MB' REPLICAS 2",
    );
    assert_eq!(
        c.rebalance,
        Some(Strategy::Dynamic {
            split_bytes: 64_000_000,
            merge_bytes: crate::strategy::DEFAULT_MERGE_BYTES
        })
    );
    assert_eq!(c.replication, Some(Replication::try_new(2, None).unwrap()));
    assert!(matches!(c.partitioning, Some(PartitionSpec::Range { .. })));
    let c = create(
        "CREATE TABLE t REBALANCE PROPORTIONAL PER WORKER 4 PARTITION BY HASH (k) PARTITIONS 8 \
         AS SELECT 1 AS k",
    );
    assert_eq!(c.rebalance, Some(Strategy::Proportional { per_worker: 4 }));
    assert_eq!(c.query.as_deref(), Some("SELECT 1 AS k"));
    assert_eq!(create("CREATE TABLE t (rebalance INT)").rebalance, None);
    // Tables named after the clauses' words.
    for name in ["rebalance", "replicas", "s.rebalance", "rebalance.t"] {
        let c = create(&format!(
            "CREATE TABLE IF NOT EXISTS {name} (k INT) REPLICAS 2 REBALANCE FIXED"
        ));
        assert_eq!(c.rebalance, Some(Strategy::Fixed), "{name}");
        assert_eq!(c.replication, Some(Replication::try_new(2, None).unwrap()));
        assert_eq!(
            create(&format!("CREATE TABLE {name} (k INT)")).rebalance,
            None
        );
    }
    for name in ["rebalance", "replicas", "split", "merge"] {
        for (sql, ok) in [
            (format!("ALTER TABLE {name} SET REPLICAS 2"), "SetReplicas"),
            (
                format!("ALTER TABLE {name} SET REBALANCE FIXED"),
                "SetRebalance",
            ),
            (
                format!("ALTER TABLE {name} SPLIT PARTITION 0"),
                "SplitPartition",
            ),
            (
                format!("ALTER TABLE {name} MERGE PARTITIONS 1, 2"),
                "MergePartitions",
            ),
        ] {
            let got = format!("{:?}", parse_statement(&sql).unwrap());
            assert!(got.starts_with(ok), "{sql}: {got}");
        }
    }
    // RANGE without SPLIT AT: one partition, split as it grows.
    let c = create("CREATE TABLE t (k BIGINT) PARTITION BY RANGE (k) REBALANCE DYNAMIC");
    assert_eq!(
        c.partitioning,
        Some(PartitionSpec::Range {
            column: "k".into(),
            bounds: vec![]
        })
    );
    assert!(parse_statement("CREATE TABLE t (k INT) PARTITION BY RANGE (k) SPLIT (1)").is_err());
    assert!(parse_statement("CREATE TABLE t (k INT) REBALANCE SOMETIMES").is_err());

    assert_eq!(
        parse_statement("alter table T set rebalance dynamic merge size '1MB';").unwrap(),
        Statement::SetRebalance {
            table: "t".into(),
            strategy: Strategy::Dynamic {
                split_bytes: crate::strategy::DEFAULT_SPLIT_BYTES,
                merge_bytes: 1_000_000
            }
        }
    );
    assert_eq!(
        parse_statement("ALTER TABLE t SET REBALANCE FIXED").unwrap(),
        Statement::SetRebalance {
            table: "t".into(),
            strategy: Strategy::Fixed
        }
    );
    for bad in [
        "ALTER TABLE t SET REBALANCE",
        "ALTER TABLE t SET REBALANCE FIXED 3",
        "ALTER TABLE t REBALANCE FIXED",
        "ALTER TABLE t SET REBALANCE PROPORTIONAL PER WORKER",
    ] {
        assert!(parse_statement(bad).is_err(), "{bad}");
    }
}

#[test]
fn merge_partitions() {
    assert_eq!(
        parse_statement("alter table T merge partitions 3, 4;").unwrap(),
        Statement::MergePartitions {
            table: "t".into(),
            a: 3,
            b: 4
        }
    );
    for bad in [
        "ALTER TABLE t MERGE PARTITIONS 3",
        "ALTER TABLE t MERGE PARTITIONS 3, 4, 5",
        "ALTER TABLE t MERGE PARTITIONS x, 4",
        "ALTER TABLE t MERGE PARTITIONS 3,",
        "ALTER TABLE t MERGE 3, 4",
    ] {
        assert!(parse_statement(bad).is_err(), "{bad}");
    }
}

#[test]
fn split_partition() {
    assert_eq!(
        parse_statement("alter table T split partition 3;").unwrap(),
        Statement::SplitPartition {
            table: "t".into(),
            partition: 3,
            at: None
        }
    );
    let Statement::SplitPartition { at: Some(at), .. } =
        parse_statement("ALTER TABLE t SPLIT PARTITION 0 AT '2024-06-01'").unwrap()
    else {
        panic!("AT is kept")
    };
    let utf8 = datafusion::arrow::datatypes::DataType::Utf8;
    assert_eq!(
        key_bound(&at, "k", &utf8).unwrap(),
        KeyValue::Str("2024-06-01".into())
    );
    let date = datafusion::arrow::datatypes::DataType::Date32;
    assert_eq!(key_bound(&at, "k", &date).unwrap(), KeyValue::Int(19875));
    for bad in [
        "ALTER TABLE t SPLIT 3",
        "ALTER TABLE t SPLIT PARTITION x",
        "ALTER TABLE t SPLIT PARTITION -1",
        "ALTER TABLE t SPLIT PARTITION 1 AT",
        "ALTER TABLE t SPLIT PARTITION 1 AT 5 6",
    ] {
        assert!(parse_statement(bad).is_err(), "{bad}");
    }
}

#[test]
fn hybrid_and_ctas() {
    let c = create(
        "create table if not exists s partition by hash (sensor) partitions 4 cluster by (ts) as select 1 as sensor, 2 as ts",
    );
    assert!(c.if_not_exists);
    assert!(c.query.is_some());
    assert_eq!(
        c.base_sql,
        "create table if not exists s as select 1 as sensor, 2 as ts"
    );
    let Some(PartitionSpec::Hash { cluster_by, .. }) = c.partitioning else {
        panic!()
    };
    assert_eq!(cluster_by, vec!["ts".to_string()]);
}

#[test]
fn range_clause_resolves_bounds() {
    use datafusion::arrow::datatypes::{DataType, Field};
    let c = create(
        "CREATE TABLE r (ts DATE) PARTITION BY RANGE (ts) SPLIT AT ('2024-01-01', DATE '2024-02-01')",
    );
    let schema = Schema::new(vec![Field::new("ts", DataType::Date32, false)]);
    let scheme = c.partitioning.unwrap().resolve(&schema).unwrap();
    assert_eq!(
        scheme,
        PartitionScheme::Range {
            column: "ts".into(),
            bounds: vec![KeyValue::Int(19723), KeyValue::Int(19754)]
        }
    );
}

#[test]
fn bad_clauses_say_what_to_do() {
    let err = |sql| parse_statement(sql).unwrap_err().to_string();
    assert!(err("CREATE TABLE t (k INT) PARTITION BY HASH (k)").contains("PARTITIONS n"));
    assert!(err("CREATE TABLE t (k INT) PARTITION BY LIST (k)").contains("HASH or RANGE"));
    let Statement::CreateTable(c) =
        parse_statement("CREATE TABLE t (k INT) PARTITION BY RANGE (k) SPLIT AT (a + 1)").unwrap()
    else {
        panic!()
    };
    use datafusion::arrow::datatypes::{DataType, Field};
    let schema = Schema::new(vec![Field::new("k", DataType::Int32, false)]);
    let e = c
        .partitioning
        .unwrap()
        .resolve(&schema)
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be literals"), "{e}");
}

#[test]
fn other_statements() {
    assert_eq!(
        parse_statement("SHOW TABLES").unwrap(),
        Statement::ShowTables
    );
    assert_eq!(
        parse_statement("show workers;").unwrap(),
        Statement::ShowWorkers
    );
    assert_eq!(
        parse_statement("ALTER WORKER \"worker-2\" drain").unwrap(),
        Statement::AlterWorker {
            id: "worker-2".into(),
            action: WorkerAction::Drain
        }
    );
    assert!(parse_statement("ALTER WORKER w1 EXPLODE").is_err());
    assert_eq!(
        parse_statement("cancel query '3fa2b1c0-17';").unwrap(),
        Statement::CancelQuery {
            id: "3fa2b1c0-17".into()
        }
    );
    assert!(parse_statement("CANCEL QUERY 17").is_err());
    assert_eq!(
        parse_statement("COPY Lines FROM '/d/a.csv' WITH (FORMAT csv, HEADER, DELIMITER '|')")
            .unwrap(),
        Statement::CopyFrom {
            table: "lines".into(),
            path: "/d/a.csv".into(),
            options: vec![
                ("FORMAT".into(), "csv".into()),
                ("HEADER".into(), "true".into()),
                ("DELIMITER".into(), "|".into())
            ],
        }
    );
    assert!(matches!(
        parse_statement("COPY t FROM '/d/x.parquet'").unwrap(),
        Statement::CopyFrom { options, .. } if options.is_empty()
    ));
    assert!(matches!(
        parse_statement("COPY t TO '/d/x.parquet'").unwrap(),
        Statement::Sql(_)
    ));
    assert!(parse_statement("CANCEL QUERY 'a' 'b'").is_err());
    assert_eq!(
        parse_statement("show partitions Foo").unwrap(),
        Statement::ShowPartitions {
            table: "foo".into()
        }
    );
    assert_eq!(
        parse_statement("DESCRIBE foo").unwrap(),
        Statement::Describe {
            table: "foo".into()
        }
    );
    assert_eq!(
        parse_statement("DROP TABLE IF EXISTS foo").unwrap(),
        Statement::DropTable {
            name: "foo".into(),
            if_exists: true
        }
    );
    assert!(matches!(
        parse_statement("SELECT 1").unwrap(),
        Statement::Sql(_)
    ));
}

#[test]
fn index_statements() {
    let Statement::CreateIndex(ci) =
        parse_statement("CREATE INDEX by_color ON cars (color) GLOBAL ASYNC PARTITIONS 4").unwrap()
    else {
        panic!("not CREATE INDEX");
    };
    assert_eq!(
        (ci.name.as_str(), ci.table.as_str(), ci.kind, ci.partitions),
        ("by_color", "cars", IndexKind::GlobalAsync, Some(4))
    );
    let Statement::CreateIndex(ci) =
        parse_statement("create index if not exists i on t (a, b)").unwrap()
    else {
        panic!("not CREATE INDEX");
    };
    assert_eq!(ci.columns, ["a", "b"]);
    assert_eq!((ci.kind, ci.if_not_exists), (IndexKind::Local, true));
    let Statement::CreateIndex(ci) = parse_statement("CREATE INDEX i ON t (a) GLOBAL").unwrap()
    else {
        panic!("not CREATE INDEX");
    };
    assert_eq!(ci.kind, IndexKind::GlobalSync);
    let e = parse_statement("CREATE INDEX i ON t (a) EVERYWHERE")
        .unwrap_err()
        .to_string();
    assert!(e.contains("LOCAL | GLOBAL"), "{e}");
    assert_eq!(
        parse_statement("SHOW INDEXES ON cars").unwrap(),
        Statement::ShowIndexes {
            table: Some("cars".into())
        }
    );
    assert_eq!(
        parse_statement("SHOW INDEXES").unwrap(),
        Statement::ShowIndexes { table: None }
    );
    assert_eq!(
        parse_statement("compact table Cars;").unwrap(),
        Statement::Compact {
            table: "cars".into()
        }
    );
    assert!(parse_statement("COMPACT cars").is_err());
    assert_eq!(
        parse_statement("DROP INDEX IF EXISTS i").unwrap(),
        Statement::DropIndex {
            name: "i".into(),
            if_exists: true
        }
    );
}

#[test]
fn create_table_keeps_its_quoting() {
    let c = create(
        "CREATE TABLE \"q \"\"x\"\"\" PARTITION BY HASH (k) PARTITIONS 2 AS SELECT 'it''s' AS k",
    );
    assert_eq!(c.name, "q \"x\"");
    assert_eq!(
        c.base_sql,
        "CREATE TABLE \"q \"\"x\"\"\" AS SELECT 'it''s' AS k"
    );
}
