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
        })
    }

    /// A second connection to the same server.
    pub async fn reconnect(&self) -> Result<Self, String> {
        Self::connect(&self.addr).await
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
