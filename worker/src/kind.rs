//! What kind of error an error is, carried in its type (never guessed from
//! its text): the gRPC code clients get, and whether it is the user's
//! mistake, a missing or existing object, a state to fix first, a worker to
//! wait for, or a bug.
//!
//! DataFusion's own variants map by their meaning: planning, SQL and schema
//! errors and runtime errors of the data (`Execution`, Arrow's overflow,
//! cast and division errors) are the user's; `Internal` is a bug. Tessera's
//! errors that are none of those are made with [`ErrorKind::error`].

use std::error::Error;
use std::fmt;

use datafusion::arrow::error::ArrowError;
use datafusion::common::DataFusionError;

use crate::unavailable::WorkerUnavailable;

/// An error's kind; each has one gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The statement or its data is wrong: fix it and run it again.
    InvalidArgument,
    /// A table, index or result that does not exist.
    NotFound,
    /// A table or index of that name exists already.
    AlreadyExists,
    /// The system is not in the state the statement needs (an index still
    /// building, a disk or file to repair): do what the text says first.
    FailedPrecondition,
    /// A worker cannot be reached or does not answer: retry once it is back.
    Unavailable,
    /// Out of memory or disk.
    ResourceExhausted,
    /// Not supported.
    Unimplemented,
    /// Refused: a call without the cluster's secret, or a plan that would
    /// touch files a worker does not serve.
    PermissionDenied,
    /// The caller did not prove it is a member of the cluster.
    Unauthenticated,
    /// The statement was cancelled (`CANCEL QUERY`, `CancelFlightInfo`).
    Cancelled,
    /// A bug.
    Internal,
}

impl ErrorKind {
    /// An engine error of this kind.
    pub fn error(self, message: impl Into<String>) -> DataFusionError {
        DataFusionError::External(Box::new(KindedError {
            kind: self,
            message: message.into(),
        }))
    }

    pub fn code(self) -> tonic::Code {
        match self {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorKind::Unimplemented => tonic::Code::Unimplemented,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::Cancelled => tonic::Code::Cancelled,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }

    /// The kind a peer's gRPC status stands for.
    pub fn of_code(code: tonic::Code) -> Self {
        match code {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorKind::InvalidArgument,
            tonic::Code::NotFound => ErrorKind::NotFound,
            tonic::Code::AlreadyExists => ErrorKind::AlreadyExists,
            tonic::Code::FailedPrecondition | tonic::Code::Aborted => ErrorKind::FailedPrecondition,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ErrorKind::Unavailable,
            tonic::Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            tonic::Code::Unimplemented => ErrorKind::Unimplemented,
            tonic::Code::PermissionDenied => ErrorKind::PermissionDenied,
            tonic::Code::Unauthenticated => ErrorKind::Unauthenticated,
            tonic::Code::Cancelled => ErrorKind::Cancelled,
            _ => ErrorKind::Internal,
        }
    }

    /// The kind of an I/O failure: a full disk is out of resources; any
    /// other (permissions, a missing or unreadable file) is a state to fix.
    pub fn of_io(e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                ErrorKind::ResourceExhausted
            }
            _ => ErrorKind::FailedPrecondition,
        }
    }
}

/// A Tessera error with its kind.
#[derive(Debug)]
pub struct KindedError {
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for KindedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for KindedError {}

fn of_arrow(e: &ArrowError) -> ErrorKind {
    match e {
        ArrowError::DivideByZero
        | ArrowError::ArithmeticOverflow(_)
        | ArrowError::CastError(_)
        | ArrowError::ParseError(_)
        | ArrowError::InvalidArgumentError(_)
        | ArrowError::ComputeError(_) => ErrorKind::InvalidArgument,
        ArrowError::MemoryError(_) => ErrorKind::ResourceExhausted,
        ArrowError::NotYetImplemented(_) => ErrorKind::Unimplemented,
        ArrowError::IoError(_, io) => ErrorKind::of_io(io),
        ArrowError::ExternalError(inner) => of_dyn(inner.as_ref()).unwrap_or(ErrorKind::Internal),
        _ => ErrorKind::Internal,
    }
}

/// The kind of an error found along a chain of sources, if any says.
fn of_dyn(e: &(dyn Error + 'static)) -> Option<ErrorKind> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(k) = err.downcast_ref::<KindedError>() {
            return Some(k.kind);
        }
        if err.is::<WorkerUnavailable>() || err.is::<tonic::transport::Error>() {
            return Some(ErrorKind::Unavailable);
        }
        if let Some(status) = err.downcast_ref::<tonic::Status>() {
            return Some(ErrorKind::of_code(status.code()));
        }
        if let Some(df) = err.downcast_ref::<DataFusionError>() {
            return Some(kind_of(df));
        }
        if let Some(arrow) = err.downcast_ref::<ArrowError>() {
            return Some(of_arrow(arrow));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(ErrorKind::of_io(io));
        }
        current = err.source();
    }
    None
}

/// The kind of an engine error.
pub fn kind_of(e: &DataFusionError) -> ErrorKind {
    match e {
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            kind_of(inner)
        }
        DataFusionError::Shared(inner) => kind_of(inner),
        DataFusionError::Collection(errors) => errors.first().map_or(ErrorKind::Internal, kind_of),
        DataFusionError::External(inner) => of_dyn(inner.as_ref()).unwrap_or(ErrorKind::Internal),
        DataFusionError::ArrowError(a, _) => of_arrow(a),
        DataFusionError::IoError(io) => ErrorKind::of_io(io),
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::Configuration(_)
        | DataFusionError::Execution(_) => ErrorKind::InvalidArgument,
        DataFusionError::NotImplemented(_) => ErrorKind::Unimplemented,
        DataFusionError::ResourcesExhausted(_) => ErrorKind::ResourceExhausted,
        DataFusionError::ObjectStore(_) | DataFusionError::ParquetError(_) => {
            ErrorKind::FailedPrecondition
        }
        _ => ErrorKind::Internal,
    }
}

/// `Err` of a [`ErrorKind::FailedPrecondition`] error, formatted.
#[macro_export]
macro_rules! precondition_err {
    ($($arg:tt)*) => {
        Err($crate::ErrorKind::FailedPrecondition.error(format!($($arg)*)))
    };
}

/// `Err` of a [`ErrorKind::NotFound`] error, formatted.
#[macro_export]
macro_rules! not_found_err {
    ($($arg:tt)*) => {
        Err($crate::ErrorKind::NotFound.error(format!($($arg)*)))
    };
}

/// `Err` of a [`ErrorKind::AlreadyExists`] error, formatted.
#[macro_export]
macro_rules! already_exists_err {
    ($($arg:tt)*) => {
        Err($crate::ErrorKind::AlreadyExists.error(format!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_types_through_wrappers() {
        let e = ErrorKind::NotFound.error("table 't' does not exist");
        assert_eq!(kind_of(&e), ErrorKind::NotFound);
        let wrapped = e.context("while planning");
        assert_eq!(kind_of(&wrapped), ErrorKind::NotFound);
        assert_eq!(
            kind_of(&DataFusionError::ArrowError(
                Box::new(ArrowError::ArithmeticOverflow("x".into())),
                None
            )),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind_of(&DataFusionError::Internal("bug".into())),
            ErrorKind::Internal
        );
        assert_eq!(
            kind_of(&WorkerUnavailable::error("worker-1 is down")),
            ErrorKind::Unavailable
        );
        let remote = DataFusionError::External(Box::new(tonic::Status::already_exists("t")));
        assert_eq!(kind_of(&remote), ErrorKind::AlreadyExists);
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(
            kind_of(&DataFusionError::IoError(full)),
            ErrorKind::ResourceExhausted
        );
    }
}
