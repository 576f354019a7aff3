//! A Flight SQL client for the shell and the script runner.

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tessera_coordinator::progress::ProgressReport;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// One statement's result.
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// One statement's result as it arrives: its schema, then its rows as the
/// server sends them.
pub struct QueryStream {
    pub schema: SchemaRef,
    pub batches: BoxStream<'static, Result<RecordBatch, String>>,
}

pub struct Client {
    inner: FlightSqlServiceClient<Channel>,
    addr: String,
    /// The CA the server's certificate is checked against (TLS).
    tls_ca: Option<PathBuf>,
    /// Who signed in, to sign in again on a new connection.
    user: Option<(String, String)>,
}

pub use tessera_datasets::flight_error_text as error_text;

impl Client {
    /// Connects without TLS or signing in (a cluster this process runs).
    pub async fn connect(addr: &str) -> Result<Self, String> {
        Self::open(addr, None).await
    }

    async fn open(addr: &str, tls_ca: Option<&Path>) -> Result<Self, String> {
        let url = tessera_worker::tls::url(addr, tls_ca.is_some());
        let mut endpoint =
            Endpoint::from_shared(url.clone()).map_err(|e| format!("bad address {addr}: {e}"))?;
        if url.starts_with("https://") {
            let Some(ca) = tls_ca else {
                return Err(format!(
                    "{addr} is a TLS address: give the CA that signed the server's certificate \
                     with --tls-ca FILE"
                ));
            };
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read the CA certificate {}: {e}", ca.display()))?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| format!("TLS with the CA {}: {e}", ca.display()))?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            let why = error_chain(&e);
            if url.starts_with("https://") {
                format!(
                    "cannot connect to {url} with TLS: {why}; is the server serving TLS \
                     (--tls-cert), and did the CA given with --tls-ca sign its certificate?"
                )
            } else {
                format!("cannot connect to {url}: {why}; is `tessera serve` running there?")
            }
        })?;
        let inner = FlightSqlServiceClient::new(channel);
        Ok(Self {
            inner,
            addr: addr.to_string(),
            tls_ca: tls_ca.map(Path::to_path_buf),
            user: None,
        })
    }

    /// Connects as `to` says and, with a user, signs in: the password comes
    /// from TESSERA_PASSWORD, or is asked for on the terminal.
    pub async fn connect_as(to: &crate::ConnectArgs) -> Result<Self, String> {
        let mut client = Self::open(&to.connect, to.tls_ca.as_deref()).await?;
        if let Some(user) = &to.user {
            let password = match std::env::var("TESSERA_PASSWORD") {
                Ok(p) if !p.is_empty() => p,
                _ => rpassword::prompt_password(format!("Password for {user}: "))
                    .map_err(|e| format!("cannot read the password: {e}; set TESSERA_PASSWORD"))?,
            };
            client
                .inner
                .handshake(user, &password)
                .await
                .map_err(|e| format!("cannot sign in as {user}: {}", error_text(e)))?;
            client.user = Some((user.to_string(), password));
        }
        Ok(client)
    }

    /// A second connection to the same server, signed in as this one.
    pub async fn reconnect(&self) -> Result<Self, String> {
        let mut client = Self::open(&self.addr, self.tls_ca.as_deref()).await?;
        if let Some((user, password)) = &self.user {
            client
                .inner
                .handshake(user, password)
                .await
                .map_err(|e| format!("cannot sign in as {user}: {}", error_text(e)))?;
            client.user = self.user.clone();
        }
        Ok(client)
    }

    /// A second handle on this connection and sign-in (calls on it run
    /// beside those on this one).
    pub fn clone_shared(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            addr: self.addr.clone(),
            tls_ca: self.tls_ca.clone(),
            user: self.user.clone(),
        }
    }

    /// The underlying Flight SQL client.
    pub fn flight(&mut self) -> &mut FlightSqlServiceClient<Channel> {
        &mut self.inner
    }

    pub async fn query(&mut self, sql: &str) -> Result<QueryResult, String> {
        let result = self.query_stream(sql).await?;
        let batches = result.batches.try_collect().await?;
        Ok(QueryResult {
            schema: result.schema,
            batches,
        })
    }

    /// Tags the statements run from now on with `tag`, to ask the server
    /// how far they got ([`Client::progress`]).
    pub fn tag_statements(&mut self, tag: &str) {
        self.inner
            .set_header(tessera_coordinator::progress::TAG_HEADER, tag);
    }

    /// How far the running statement tagged `tag` got, as the server
    /// reports it (`running: false` once it ended there).
    pub async fn progress(&self, tag: &str) -> Result<ProgressReport, String> {
        use tessera_coordinator::progress::{ACTION, ProgressRequest};
        let body = serde_json::to_vec(&ProgressRequest {
            tag: tag.to_string(),
        })
        .map_err(|e| e.to_string())?;
        let action = arrow_flight::Action {
            r#type: ACTION.to_string(),
            body: body.into(),
        };
        let mut client = self.inner.clone();
        let mut results = client.do_action(action).await.map_err(error_text)?;
        let next = results.try_next().await;
        let Some(result) = next.map_err(|e| format!("{ACTION}: {}", e.message()))? else {
            return Err(format!("{ACTION} answered nothing"));
        };
        serde_json::from_slice(&result.body).map_err(|e| format!("{ACTION}: {e}"))
    }

    /// Runs `sql`; its rows are fetched as the stream is read.
    pub async fn query_stream(&mut self, sql: &str) -> Result<QueryStream, String> {
        let info = self
            .inner
            .execute(sql.to_string(), None)
            .await
            .map_err(error_text)?;
        let schema: SchemaRef = std::sync::Arc::new(
            info.clone()
                .try_decode_schema()
                .map_err(|e| format!("bad schema from server: {e}"))?,
        );
        let tickets: Vec<_> = info.endpoint.into_iter().filter_map(|e| e.ticket).collect();
        // A clone shares the connection and the sign-in token.
        let client = self.inner.clone();
        let batches = futures::stream::iter(tickets)
            .then(move |ticket| {
                let mut client = client.clone();
                async move {
                    let stream = client.do_get(ticket).await.map_err(error_text)?;
                    Ok::<_, String>(stream.map_err(error_text))
                }
            })
            .try_flatten()
            .boxed();
        Ok(QueryStream { schema, batches })
    }
}

/// An error with its causes, which a transport error keeps out of its own text.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
