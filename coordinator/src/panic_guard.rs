//! A panic inside one statement becomes that statement's error: the
//! process, and every other client's statements, go on.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use datafusion::common::{DataFusionError, Result};
use futures::{FutureExt, Stream, StreamExt};

fn panic_error(panic: Box<dyn Any + Send>) -> DataFusionError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    DataFusionError::Internal(format!(
        "the statement stopped on an internal error ({what}); the server is still running. \
         Please report it with the statement"
    ))
}

/// Runs `fut`, turning a panic into an internal error.
pub async fn guarded<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(panic_error(panic)),
    }
}

/// Polls `stream`, ending it with an internal error if a poll panics.
pub fn guarded_stream<T, S>(stream: S) -> impl Stream<Item = Result<T>> + Send
where
    S: Stream<Item = Result<T>> + Send,
{
    AssertUnwindSafe(stream)
        .catch_unwind()
        .map(|item| item.unwrap_or_else(|panic| Err(panic_error(panic))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_the_statements_error() {
        let e = guarded(async { panic!("boom") as Result<()> })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        let items: Vec<Result<u8>> = guarded_stream(futures::stream::iter([1u8, 2]).map(|i| {
            assert!(i < 2, "row {i}");
            Ok(i)
        }))
        .collect()
        .await;
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(items[1].as_ref().unwrap_err().to_string().contains("row 2"));
    }
}
