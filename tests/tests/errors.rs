//! Errors reach Flight SQL clients with a gRPC code of their kind, known
//! from the error's type: the user's mistakes are INVALID_ARGUMENT, missing
//! and existing objects NOT_FOUND and ALREADY_EXISTS, unsupported
//! statements UNIMPLEMENTED; INTERNAL is kept for bugs.

#![allow(clippy::unwrap_used)]

use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tessera_tests::TestCluster;
use tonic::Code;

async fn code_of(
    client: &mut FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> Code {
    let result = async {
        let info = client.execute(sql.to_string(), None).await?;
        for ep in info.endpoint {
            if let Some(ticket) = ep.ticket {
                let _: Vec<_> = client.do_get(ticket).await?.try_collect().await?;
            }
        }
        Ok::<(), FlightError>(())
    }
    .await;
    match result {
        Ok(()) => Code::Ok,
        Err(FlightError::Tonic(status)) => status.code(),
        Err(other) => panic!("{sql}: not a status: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn error_kinds_reach_clients_as_codes() {
    let cluster = TestCluster::builder().workers(3).start().await;
    let channel = tonic::transport::Endpoint::from_shared(cluster.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    let deep = format!("SELECT {}", vec!["1"; 2000].join(" + "));
    let cases = [
        (
            "CREATE TABLE t (k BIGINT, v BIGINT NOT NULL) PARTITION BY HASH (k) PARTITIONS 4",
            Code::Ok,
        ),
        ("INSERT INTO t VALUES (1, 9223372036854775807)", Code::Ok),
        ("CREATE INDEX i ON t (v)", Code::Ok),
        ("SELEC 1", Code::InvalidArgument),
        ("SELECT * FROM nope", Code::NotFound),
        (
            "SELECT * FROM t WHERE k IN (SELECT k FROM nope)",
            Code::NotFound,
        ),
        ("SELECT nope FROM t", Code::NotFound),
        ("DROP TABLE nope", Code::NotFound),
        ("DROP INDEX nope", Code::NotFound),
        ("COMPACT TABLE nope", Code::NotFound),
        ("CREATE TABLE t (k BIGINT)", Code::AlreadyExists),
        ("CREATE INDEX i ON t (k)", Code::AlreadyExists),
        ("CREATE TABLE d (a BIGINT, a BIGINT)", Code::InvalidArgument),
        ("SELECT v + 1 FROM t", Code::InvalidArgument),
        ("SELECT CAST('x' AS INT)", Code::InvalidArgument),
        ("SELECT v / 0 FROM t", Code::InvalidArgument),
        (
            "SELECT SUM(v) FROM (SELECT v FROM t UNION ALL SELECT v FROM t)",
            Code::InvalidArgument,
        ),
        ("INSERT INTO t VALUES (2, NULL)", Code::InvalidArgument),
        ("CREATE UNIQUE INDEX u ON t (k)", Code::InvalidArgument),
        (deep.as_str(), Code::InvalidArgument),
    ];
    for (sql, expected) in cases {
        let got = code_of(&mut client, sql).await;
        assert_eq!(got, expected, "{}", &sql[..sql.len().min(80)]);
    }
    cluster.stop().await;
}
