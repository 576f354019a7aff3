//! `ALTER TABLE t SET REPLICAS r`: copies added to or removed from every
//! partition of a table and of its GLOBAL indexes. Added copies go to the live workers holding fewest
//! copies, start out of sync and are caught up (their files copied from an
//! in-sync copy) before the statement returns; removed copies are the ones
//! out of sync first, then those on workers that are down, then the last
//! added, never the only in-sync one, and
//! their files go once no query that may read them is running.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, Float64Array, UInt32Array, UInt64Array};
use datafusion::common::Result;
use tessera_sql::{Placements, Replication};
use tessera_worker::ErrorKind;

use super::ddl::ready;
use super::{Coordinator, Planned};

use crate::copies::Copy;

/// How long the statement waits for the added copies to catch up.
const CATCH_UP_WAIT: Duration = Duration::from_secs(600);

impl Coordinator {
    pub(super) async fn set_replicas(&self, table: &str, replicas: u32) -> Result<Planned> {
        let started = Instant::now();
        let Some(def) = self.catalog.table_def(table)? else {
            return Err(crate::catalog::no_such_table(table));
        };
        let replication = Replication::try_new(replicas, Some(def.replication.quorum))?;
        let live = self.live_workers()?;
        if replicas as usize > live.len() {
            return Err(ErrorKind::FailedPrecondition.error(format!(
                "REPLICAS {replicas} needs {replicas} live workers and {} are up; start more \
                 workers or ask for fewer copies",
                live.len()
            )));
        }
        let name = def.name.clone();
        let (added, removed) = self
            .catalog
            .update(|s| {
                let mut held: BTreeMap<String, usize> =
                    live.iter().map(|w| (w.clone(), 0)).collect();
                for placements in s.map.tables.values() {
                    for p in placements {
                        for w in &p.replicas {
                            if let Some(n) = held.get_mut(w) {
                                *n += 1;
                            }
                        }
                    }
                }
                let Some(t) = s.tables.get_mut(&name) else {
                    return Err(crate::catalog::no_such_table(&name));
                };
                if t.id != def.id {
                    return Err(crate::catalog::no_such_table(&name));
                }
                t.replication = replication;
                // The table's partitions and its GLOBAL indexes' partitions.
                let mut keys = vec![name.clone()];
                keys.extend(
                    s.indexes
                        .values()
                        .filter(|i| i.table == name && i.kind.is_global())
                        .map(|i| i.map_key()),
                );
                let mut added: Vec<Copy> = vec![];
                let mut removed: Vec<Copy> = vec![];
                for key in keys {
                    let Some(placements) = s.map.tables.get_mut(&key) else {
                        continue;
                    };
                    for p in placements.iter_mut() {
                        while p.replicas.len() < replicas as usize {
                            let next = held
                                .iter()
                                .filter(|(w, _)| !p.replicas.contains(w))
                                .min_by_key(|(_, n)| **n)
                                .map(|(w, _)| w.clone());
                            let Some(next) = next else {
                                break;
                            };
                            *held.entry(next.clone()).or_default() += 1;
                            p.replicas.push(next.clone());
                            p.out_of_sync.push(next.clone());
                            added.push((key.clone(), p.id, next));
                        }
                        while p.replicas.len() > replicas as usize {
                            let gone = p
                                .out_of_sync
                                .last()
                                .or_else(|| p.replicas.iter().rev().find(|w| !live.contains(w)))
                                .or_else(|| p.replicas.last())
                                .cloned();
                            let Some(gone) = gone else {
                                break;
                            };
                            if p.in_sync().count() == 1 && p.is_in_sync(&gone) {
                                break;
                            }
                            p.replicas.retain(|w| *w != gone);
                            p.out_of_sync.retain(|w| *w != gone);
                            removed.push((key.clone(), p.id, gone));
                        }
                    }
                }
                // Their pending commits go with them (their files go).
                for (key, partition, worker) in &removed {
                    crate::copies::forget_pending(s, key, *partition, std::slice::from_ref(worker));
                }
                s.map.epoch += 1;
                Ok((added, removed))
            })
            .await?;
        // Copies dropped: their files go once no running query may read them.
        crate::copies::drop_files_later(&self.catalog, def.id, removed.clone());
        // Added copies: caught up here (the background rounds finish any
        // left over, e.g. after writes kept landing).
        let mut bytes = 0u64;
        let deadline = Instant::now() + CATCH_UP_WAIT;
        let mut pending = added.clone();
        while !pending.is_empty() {
            let mut left = vec![];
            for (key, partition, worker) in pending {
                let rate = &self.rebalancer.copy_rate;
                let caught = crate::catch_up::catch_up(
                    &self.catalog,
                    &key,
                    def.id,
                    partition,
                    &worker,
                    rate,
                );
                match caught.await {
                    Ok(Some(done)) => bytes += done.installed.bytes,
                    Ok(None) => {
                        let still = self.catalog.placements(&key).is_ok_and(|p| {
                            p.by_id(partition)
                                .is_some_and(|p| p.out_of_sync.contains(&worker))
                        });
                        if still {
                            left.push((key, partition, worker));
                        }
                    }
                    Err(e) => {
                        tracing::info!(%worker, partition, error = %e, "an added copy is not caught up yet");
                        left.push((key, partition, worker));
                    }
                }
            }
            pending = left;
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(ErrorKind::Unavailable.error(format!(
                    "{} added copies of '{name}' are not caught up after {} s; they keep \
                     catching up in the background (SHOW PARTITIONS {name} shows them \
                     catching_up)",
                    pending.len(),
                    CATCH_UP_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        ready(vec![
            (
                "replicas",
                Arc::new(UInt32Array::from(vec![replicas])) as ArrayRef,
            ),
            (
                "copies_added",
                Arc::new(UInt64Array::from(vec![added.len() as u64])),
            ),
            (
                "copies_removed",
                Arc::new(UInt64Array::from(vec![removed.len() as u64])),
            ),
            ("bytes_copied", Arc::new(UInt64Array::from(vec![bytes]))),
            ("seconds", Arc::new(Float64Array::from(vec![seconds]))),
        ])
    }
}
