//! Where a table's partitions are read from and written to: the in-sync
//! copy a read uses, every in-sync copy a write goes to, and the quorum it
//! needs.

use std::collections::BTreeMap;

use datafusion::common::{DataFusionError, Result, exec_err};
use tessera_sql::{PartitionLayout, PartitionPlacement, PartitionScheme, Placements};
use tessera_worker::ScanPart;

use super::{Catalog, poisoned};
use crate::catalog_state::owner_of;
use crate::membership::WorkerState;

/// Where one partition's share of a write goes.
#[derive(Debug, Clone)]
pub struct WriteTarget {
    pub map_key: String,
    /// The id of the table written (the partitions' owner, for a GLOBAL
    /// index): a write decided after the table was dropped or replaced
    /// under its name fails.
    pub table_id: Option<u64>,
    pub partition: u32,
    /// The in-sync replicas, leader first: reachable, or (worker, why not).
    pub replicas: Vec<std::result::Result<ScanPart, (String, String)>>,
    /// Replicas that must hold the write before it is acknowledged.
    pub needed: usize,
}

impl WriteTarget {
    /// The in-sync copies' workers, reachable or not.
    pub fn workers(&self) -> impl Iterator<Item = &str> {
        self.replicas.iter().map(|r| match r {
            Ok(part) => part.worker_id.as_str(),
            Err((worker, _)) => worker.as_str(),
        })
    }
}

impl Catalog {
    /// The placement of a table's partitions.
    pub fn placements(&self, table: &str) -> Result<Vec<PartitionPlacement>> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        match state.map.table(table) {
            Some(p) => Ok(p.to_vec()),
            None => exec_err!("table '{table}' has no partition map entry"),
        }
    }

    /// The layout of `table`'s partitions under `scheme` (see
    /// [`Placements::layout`]): `None` while it is the scheme's initial one.
    pub fn layout(&self, table: &str, scheme: &PartitionScheme) -> Result<Option<PartitionLayout>> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        match state.map.table(table) {
            Some(p) => p.layout(scheme),
            None => exec_err!("table '{table}' has no partition map entry"),
        }
    }

    /// Whether every one of `ids` is a partition of `table` now. A
    /// partition keeps its slice of keys as long as its id (a split or a
    /// merge gives new ids), so rows routed to partitions still there need
    /// no routing again.
    pub fn holds_partitions(&self, table: &str, ids: impl Iterator<Item = u32>) -> Result<bool> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        let placements = state.map.table(table).unwrap_or_default();
        Ok(ids.into_iter().all(|id| placements.by_id(id).is_some()))
    }

    /// Resolves partitions to the worker each is read from: an in-sync
    /// replica that is up, the leader unless another copy of the
    /// partition has fewer of the table's reads (so a worker leading more
    /// partitions than others, or standing in for a dead leader, hands
    /// reads to its followers). The choice is made over all of the table's
    /// partitions at once, so partition i is read from the same copy
    /// whichever partitions a query keeps (co-located joins rely on it).
    pub fn scan_parts(&self, table: &str, partitions: &[u32]) -> Result<Vec<ScanPart>> {
        self.scan_parts_at(table, &self.placements(table)?, partitions)
    }

    /// Every in-sync copy of `table`'s `partition` that is not known to be
    /// down, the one a read would choose first: where a reader that must
    /// not give up over one copy tries each in turn.
    pub fn in_sync_copies(&self, table: &str, partition: u32) -> Result<Vec<ScanPart>> {
        let mut copies = self.scan_parts(table, &[partition])?;
        let members = self.members()?;
        let placements = self.placements(table)?;
        if let Some(placement) = placements.by_id(partition) {
            for worker in placement.in_sync() {
                if copies.iter().all(|c| c.worker_id != worker)
                    && let Ok(part) = self.reachable(table, partition, worker, &members)
                {
                    copies.push(part);
                }
            }
        }
        Ok(copies)
    }

    /// [`Catalog::scan_parts`] with the table's partitions placed as
    /// `placements` say (a query's map, see [`crate::query_map`]).
    pub fn scan_parts_at(
        &self,
        table: &str,
        placements: &[PartitionPlacement],
        partitions: &[u32],
    ) -> Result<Vec<ScanPart>> {
        let mut chosen = self.read_copies_at(table, placements)?;
        let mut out = Vec::with_capacity(partitions.len());
        for p in partitions {
            // `chosen` is in the placements' order.
            let at = match placements.get(*p as usize) {
                Some(placement) if placement.id == *p => Some(*p as usize),
                _ => placements.iter().position(|placement| placement.id == *p),
            };
            match at.map(|i| (i, &chosen[i])) {
                None => return exec_err!("partition {p} of '{table}' is not in the partition map"),
                Some((_, Ok(part))) => out.push(part.clone()),
                // The partition's error, moved out.
                Some((i, Err(_))) => return chosen.swap_remove(i).map(|part| vec![part]),
            }
        }
        Ok(out)
    }

    /// The copy each partition of `table` is read from (see
    /// [`Catalog::scan_parts`]), or why none can be, in the placements'
    /// (key) order.
    pub fn read_copies(&self, table: &str) -> Result<Vec<Result<ScanPart>>> {
        self.read_copies_at(table, &self.placements(table)?)
    }

    /// [`Catalog::read_copies`] with the partitions placed as `placements`
    /// say.
    pub fn read_copies_at(
        &self,
        table: &str,
        placements: &[PartitionPlacement],
    ) -> Result<Vec<Result<ScanPart>>> {
        let members = self.members()?;
        let mut reads: BTreeMap<String, usize> = BTreeMap::new();
        let mut chosen: Vec<Result<ScanPart>> = Vec::with_capacity(placements.len());
        for placement in placements {
            let p = placement.id;
            // A copy whose heartbeats are late (killed a moment ago,
            // say) is read only when no other is at hand.
            let mut first_error = None;
            let mut late = None;
            let mut best: Option<ScanPart> = None;
            for worker in placement.in_sync() {
                match self.reachable(table, p, worker, &members) {
                    Ok(part) if self.membership.state(worker)? == WorkerState::Suspect => {
                        late.get_or_insert(part);
                    }
                    Ok(part) => {
                        let load = |w: &str| reads.get(w).copied().unwrap_or(0);
                        if best
                            .as_ref()
                            .is_none_or(|b| load(worker) < load(&b.worker_id))
                        {
                            best = Some(part);
                        }
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            chosen.push(match best.or(late) {
                Some(part) => {
                    *reads.entry(part.worker_id.clone()).or_default() += 1;
                    Ok(part)
                }
                None => Err(first_error.unwrap_or_else(|| {
                    DataFusionError::Internal(format!(
                        "partition {p} of '{table}' has no in-sync replica"
                    ))
                })),
            });
        }
        Ok(chosen)
    }

    /// `worker` as the holder of `table`'s `partition`, if it has joined
    /// and is not down.
    fn reachable(
        &self,
        table: &str,
        partition: u32,
        worker: &str,
        members: &BTreeMap<String, String>,
    ) -> Result<ScanPart> {
        let Some(url) = members.get(worker) else {
            return Err(tessera_worker::WorkerUnavailable::error(format!(
                "partition {partition} of '{table}' is held by worker '{worker}', which has not \
                 joined; start it (`tessera worker --data-dir DIR --join ...`, or more \
                 --workers for `tessera serve`) and retry"
            )));
        };
        if self.membership.state(worker)? == WorkerState::Down {
            return Err(crate::membership::worker_down(
                worker,
                url,
                self.membership.silent_for(worker)?,
            ));
        }
        Ok(ScanPart {
            partition,
            worker_id: worker.to_string(),
            url: url.clone(),
        })
    }

    /// Where a write to partitions of `map_key` (a table, or a GLOBAL
    /// index's partitions) goes: every in-sync replica of each, and how
    /// many of them must hold it. A replica that has not joined or is down
    /// is named with the error its write would meet.
    pub fn write_targets(&self, map_key: &str, partitions: &[u32]) -> Result<Vec<WriteTarget>> {
        let placements = self.placements(map_key)?;
        let (replication, table_id) = {
            let state = self.state.lock().map_err(|_| poisoned())?;
            let owner = owner_of(&state, map_key);
            (
                owner.map(|t| t.replication).unwrap_or_default(),
                owner.map(|t| t.id),
            )
        };
        let members = self.members()?;
        partitions
            .iter()
            .map(|p| {
                let Some(placement) = placements.by_id(*p) else {
                    return exec_err!("partition {p} of '{map_key}' is not in the partition map");
                };
                let mut replicas = vec![];
                for worker in placement.in_sync() {
                    replicas.push(match self.reachable(map_key, *p, worker, &members) {
                        Ok(part) => Ok(part),
                        Err(e) => Err((worker.to_string(), e.to_string())),
                    });
                }
                Ok(WriteTarget {
                    map_key: map_key.to_string(),
                    table_id,
                    partition: *p,
                    needed: replication.needed().min(placement.replicas.len()),
                    replicas,
                })
            })
            .collect()
    }
}
