//! A Flight SQL client for the shell and the script runner.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::transport::{Channel, Endpoint};

/// One statement's result.
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

pub struct Client {
    inner: FlightSqlServiceClient<Channel>,
    addr: String,
    /// Who signed in, to sign in again on a new connection.
    user: Option<(String, String)>,
}

pub use tessera_datasets::flight_error_text as error_text;

impl Client {
    pub async fn connect(addr: &str) -> Result<Self, String> {
        let url = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("bad address {addr}: {e}"))?
            .connect()
            .await
            .map_err(|e| {
                format!("cannot connect to {url}: {e}; is `tessera serve` running there?")
            })?;
        let inner = FlightSqlServiceClient::new(channel);
        Ok(Self {
            inner,
            addr: addr.to_string(),
            user: None,
        })
    }

    /// Connects and, with `user`, signs in: the password comes from
    /// TESSERA_PASSWORD, or is asked for on the terminal.
    pub async fn connect_as(addr: &str, user: Option<&str>) -> Result<Self, String> {
        let mut client = Self::connect(addr).await?;
        if let Some(user) = user {
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
        let mut client = Self::connect(&self.addr).await?;
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

    /// The underlying Flight SQL client.
    pub fn flight(&mut self) -> &mut FlightSqlServiceClient<Channel> {
        &mut self.inner
    }

    pub async fn query(&mut self, sql: &str) -> Result<QueryResult, String> {
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
        let mut batches = vec![];
        for endpoint in info.endpoint {
            let Some(ticket) = endpoint.ticket else {
                continue;
            };
            let stream = self.inner.do_get(ticket).await.map_err(error_text)?;
            let mut part: Vec<RecordBatch> = stream.try_collect().await.map_err(error_text)?;
            batches.append(&mut part);
        }
        Ok(QueryResult { schema, batches })
    }
}
