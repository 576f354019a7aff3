//! A write's staged files, one per partition, written a batch at a time on
//! blocking threads; and installing a copy of a partition from a replica.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::DataFusionError;
use tonic::Status;

use crate::storage::StagedFile;
use crate::wire;

use super::{WorkerFlightService, to_status};

impl WorkerFlightService {
    /// Copies the files of `req.manifest` this worker lacks from the
    /// replica at `req.source`, a chunk at a time, then takes the manifest.
    pub(super) async fn install(
        &self,
        req: wire::InstallRequest,
    ) -> datafusion::common::Result<wire::Installed> {
        let source = crate::WorkerClient::connect(&req.source)?;
        let mut installed = wire::Installed::default();
        for f in &req.manifest.files {
            let storage = Arc::clone(&self.local.storage);
            let (table, name, bytes) = (req.table.clone(), f.name.clone(), f.bytes);
            let target = tokio::task::spawn_blocking(move || {
                storage.copy_target(&table, req.partition, &name, bytes)
            })
            .await
            .map_err(|e| DataFusionError::Internal(e.to_string()))??;
            let Some(target) = target else {
                continue;
            };
            let mut file = crate::storage::CopiedFile::create(target)?;
            let mut offset = 0u64;
            while offset < f.bytes {
                let next = (f.bytes - offset).min(crate::client::COPY_CHUNK_BYTES as u64);
                self.copies.take(next, req.rate).await;
                let chunk = source
                    .read_file(&req.table, req.partition, &f.name, offset)
                    .await?;
                if chunk.is_empty() {
                    return crate::precondition_err!(
                        "{} of partition {} ends at {offset} bytes on {}, not {}",
                        f.name,
                        req.partition,
                        req.source,
                        f.bytes
                    );
                }
                offset += chunk.len() as u64;
                file = tokio::task::spawn_blocking(move || file.write(&chunk).map(|()| file))
                    .await
                    .map_err(|e| DataFusionError::Internal(e.to_string()))??;
            }
            tokio::task::spawn_blocking(move || file.finish())
                .await
                .map_err(|e| DataFusionError::Internal(e.to_string()))??;
            installed.files += 1;
            installed.bytes += f.bytes;
        }
        let storage = Arc::clone(&self.local.storage);
        tokio::task::spawn_blocking(move || {
            storage.install(&req.table, req.partition, req.manifest)
        })
        .await
        .map_err(|e| DataFusionError::Internal(e.to_string()))??;
        Ok(installed)
    }
}

/// One partition's staged file of a write.
pub(super) struct Piece {
    pub(super) header: wire::PieceHeader,
    pub(super) state: PieceState,
}

pub(super) enum PieceState {
    /// Nothing being written.
    Idle(Box<StagedFile>),
    /// A batch being written on a blocking thread.
    Writing(tokio::task::JoinHandle<datafusion::common::Result<Box<StagedFile>>>),
    /// A write failed.
    Failed,
}

impl Piece {
    /// The file, once the batch being written (if any) is in; the piece
    /// is left failed until it is given a batch again.
    pub(super) async fn take(&mut self) -> Result<Box<StagedFile>, Status> {
        match std::mem::replace(&mut self.state, PieceState::Failed) {
            PieceState::Idle(file) => Ok(file),
            PieceState::Writing(task) => task
                .await
                .map_err(|e| Status::internal(format!("write task failed: {e}")))?
                .map_err(to_status),
            PieceState::Failed => Err(Status::internal("a staged file's write failed before")),
        }
    }

    /// Starts writing `batch` once the one before is in.
    pub(super) async fn write(&mut self, batch: RecordBatch) -> Result<(), Status> {
        let mut file = self.take().await?;
        self.state = PieceState::Writing(tokio::task::spawn_blocking(move || {
            file.write(&batch)?;
            Ok(file)
        }));
        Ok(())
    }
}
