//! What every part of the Flight SQL service shares: the coordinator
//! serving, errors as gRPC statuses, and schemas as DoGet sends them.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use datafusion::common::DataFusionError;
use tessera_worker::to_status;
use tonic::Status;

use crate::engine::Coordinator;

/// gRPC carries error text in a header; keep it well under its 16 KiB limit.
const MAX_ERROR_BYTES: usize = 4000;

/// The coordinator serving clients; a follower is replaced by a leader
/// when it takes over the lead.
pub type Serving = Arc<std::sync::RwLock<Arc<Coordinator>>>;

/// The coordinator serving now.
pub fn current(serving: &Serving) -> Arc<Coordinator> {
    match serving.read() {
        Ok(c) => Arc::clone(&c),
        Err(poisoned) => Arc::clone(&poisoned.into_inner()),
    }
}

/// A statement's error as the status a client gets, cut to fit a header.
pub(crate) fn status(e: DataFusionError) -> Status {
    let s = to_status(e);
    let msg = s.message();
    if msg.len() <= MAX_ERROR_BYTES {
        return s;
    }
    let mut cut = MAX_ERROR_BYTES;
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    Status::new(s.code(), format!("{}… (truncated)", &msg[..cut]))
}

/// The schema with dictionary columns as their value types, as DoGet sends them.
pub(crate) fn hydrated(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<FieldRef> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, value) => {
                Arc::new(f.as_ref().clone().with_data_type(value.as_ref().clone()))
            }
            _ => Arc::clone(f),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}
