//! The error of a worker that cannot be reached (down, restarting, or its
//! connection lost mid-call), as a type: a read-only query that fails with
//! it may be run again once the worker is back, and clients get gRPC
//! `UNAVAILABLE` for it.

use std::error::Error;
use std::fmt;

use datafusion::common::DataFusionError;

/// A worker could not be reached; the text says which and what to do.
#[derive(Debug, Clone)]
pub struct WorkerUnavailable(pub String);

impl fmt::Display for WorkerUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for WorkerUnavailable {}

impl WorkerUnavailable {
    pub fn error(message: impl Into<String>) -> DataFusionError {
        DataFusionError::External(Box::new(Self(message.into())))
    }
}

/// Whether `e`, or an error it wraps, says a worker could not be reached or
/// its connection broke: a [`WorkerUnavailable`], a gRPC status
/// `UNAVAILABLE`, or a transport error (a `CANCELLED` status counts only
/// with one beneath it: tasks of a failed query are cancelled on purpose).
pub fn is_worker_failure(e: &(dyn Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.is::<WorkerUnavailable>() || err.is::<tonic::transport::Error>() {
            return true;
        }
        if let Some(status) = err.downcast_ref::<tonic::Status>()
            && status.code() == tonic::Code::Unavailable
        {
            return true;
        }
        current = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_through_wrappers() {
        let e = WorkerUnavailable::error("worker w0 is down").context("scanning t");
        assert!(is_worker_failure(&e));
        let status = DataFusionError::External(Box::new(tonic::Status::unavailable("gone")));
        assert!(is_worker_failure(&status));
        let other = DataFusionError::External(Box::new(tonic::Status::internal("bug")));
        assert!(!is_worker_failure(&other));
        let cancelled = DataFusionError::External(Box::new(tonic::Status::cancelled("stop")));
        assert!(!is_worker_failure(&cancelled));
        assert!(!is_worker_failure(&DataFusionError::Plan("no".into())));
    }
}
