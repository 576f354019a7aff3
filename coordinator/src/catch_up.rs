//! Copies that missed writes catch up. A copy out of a partition's in-sync
//! set that is up again takes the manifest of an in-sync copy and the files
//! it lacks (files are immutable and named by the transaction that wrote
//! them, so copying a file is the whole log entry), then rejoins the in-sync
//! set by compare-and-swap: only if no transaction was decided on the
//! partition since the copy began, none that may write it is in flight, and
//! every decided one is committed everywhere it went (so the copied
//! manifest holds all of them). When writes keep landing between copies,
//! the last attempts hold new writes to the table back (its gate, see
//! [`Catalog::gate`]) until those in flight are done and the copy has
//! rejoined: writes pause for about one commit round.
//!
//! The leading coordinator looks for such copies every [`ROUND`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::common::{DataFusionError, Result};
use tessera_sql::Placements;
use tessera_worker::WorkerClient;
use tessera_worker::wire::{InstallRequest, Installed};

use crate::catalog::Catalog;
use crate::catalog_state::CatalogState;
use crate::copies::files_of;
use crate::membership::WorkerState;

/// How often the leader looks for copies to catch up.
const ROUND: Duration = Duration::from_secs(1);
/// Copies of one partition in a row before a round gives up on it (writes
/// kept landing meanwhile); the next round tries again.
const ATTEMPTS: u32 = 5;

/// `SET tessera.rebalance_rate`: bytes per second a partition copy into
/// one worker may take (0: no limit). Read as each copy begins.
#[derive(Debug, Default)]
pub struct CopyRate(AtomicU64);

impl CopyRate {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, bytes_per_second: u64) {
        self.0.store(bytes_per_second, Ordering::Relaxed);
    }
}

/// Runs catch-up rounds until the coordinator stops.
pub fn spawn_catch_up(catalog: &Arc<Catalog>, rate: Arc<CopyRate>) {
    let catalog = Arc::clone(catalog);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(ROUND).await;
            if catalog.closed.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = round(&catalog, &rate).await {
                tracing::info!(error = %e, "a catch-up round stopped early");
            }
        }
    });
}

/// Catches up every copy out of sync whose worker is up: of tables'
/// partitions and of GLOBAL indexes' partitions.
pub async fn round(catalog: &Arc<Catalog>, rate: &CopyRate) -> Result<()> {
    let state = catalog.state()?;
    for (map_key, placements) in &state.map.tables {
        let Some(owner) = crate::catalog::owner_of(&state, map_key) else {
            continue;
        };
        for placement in placements {
            for worker in &placement.out_of_sync {
                if catalog.membership().state(worker)? != WorkerState::Up {
                    continue;
                }
                let caught = catch_up(catalog, map_key, owner.id, placement.id, worker, rate);
                match caught.await {
                    Ok(Some(done)) => tracing::info!(
                        table = %map_key, partition = placement.id, %worker,
                        files = done.installed.files, bytes = done.installed.bytes,
                        seconds = done.took.as_secs_f64(),
                        "a copy caught up and rejoined the in-sync set"
                    ),
                    Ok(None) => {}
                    Err(e) => tracing::info!(
                        table = %map_key, partition = placement.id, %worker, error = %e,
                        "a copy could not catch up yet"
                    ),
                }
            }
        }
    }
    Ok(())
}

/// What one catch-up copied, and how long it took.
#[derive(Debug, Clone, Default)]
pub struct CaughtUp {
    pub installed: Installed,
    pub took: Duration,
}

/// Decided transactions not yet committed everywhere that wrote
/// `partition` of one of `locations`.
fn pending(state: &CatalogState, locations: &[String], partition: u32) -> bool {
    state.decided.values().any(|by_worker| {
        by_worker
            .values()
            .flatten()
            .any(|w| w.partition == partition && locations.contains(&w.table))
    })
}

/// Copies `partition` of `map_key` (a table, or a GLOBAL index's
/// partitions; `table_id` is its table's id) to `worker` from an in-sync
/// copy and puts `worker` back in the in-sync set; `None` when the
/// partition keeps changing (the next round tries again), `worker` is in
/// sync already or the table is gone. Files are copied at most at `rate`.
pub async fn catch_up(
    catalog: &Arc<Catalog>,
    map_key: &str,
    table_id: u64,
    partition: u32,
    worker: &str,
    rate: &CopyRate,
) -> Result<Option<CaughtUp>> {
    // One catch-up of a copy at a time (the background round and ALTER
    // TABLE ... SET REPLICAS may both try).
    let Some(_one) = crate::copies::Copying::claim(map_key, partition, worker) else {
        return Ok(None);
    };
    let started = Instant::now();
    let mut done = CaughtUp::default();
    let copy = Copy {
        map_key,
        table_id,
        partition,
        worker,
        rate,
    };
    for _ in 0..ATTEMPTS {
        match copy.attempt(catalog, &mut done, None, false).await? {
            Try::Rejoined => {
                done.took = started.elapsed();
                return Ok(Some(done));
            }
            Try::Gone => return Ok(None),
            // Something landed meanwhile: copy what is new.
            Try::Busy | Try::Pending => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    // Writes kept landing between copies: new writes to the table wait a
    // moment (those in flight finish first) while the copy takes the last
    // difference and rejoins. Not while a long write (a bulk upload) is in
    // flight, which every writer would wait for, nor again soon after the
    // gate could not be had.
    let Some((def, _)) = files_of(&catalog.state()?, map_key) else {
        return Ok(None);
    };
    if catalog.long_write(&def.name, LONG_WRITE)? || Backoff::active(&def.name) {
        return Ok(None);
    }
    let gate = catalog.gate(&def.name)?;
    let Ok(_alone) = tokio::time::timeout(GATE_WAIT, gate.write_owned()).await else {
        Backoff::start(&def.name);
        return Ok(None);
    };
    let held = Instant::now();
    while let Some(left) = GATE_HOLD.checked_sub(held.elapsed()) {
        match copy.attempt(catalog, &mut done, Some(left), true).await? {
            Try::Rejoined => {
                tracing::info!(
                    table = %def.name, partition, %worker,
                    held_ms = held.elapsed().as_secs_f64() * 1e3,
                    "writes were held back while a copy took its last difference and rejoined"
                );
                done.took = started.elapsed();
                return Ok(Some(done));
            }
            // A commit still landing (a worker away, say) could take long:
            // writes go on meanwhile.
            Try::Gone | Try::Pending => return Ok(None),
            // An index backfill or apply, or a compaction, of the table.
            Try::Busy => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    Backoff::start(&def.name);
    Ok(None)
}

/// How long a catch-up waits for the writes in flight to finish before
/// giving up on holding new ones back (they wait meanwhile): about a
/// commit round.
const GATE_WAIT: Duration = Duration::from_millis(300);
/// How long it holds new writes back at most.
const GATE_HOLD: Duration = Duration::from_secs(1);
/// A write in flight this long is a long one (a bulk upload).
const LONG_WRITE: Duration = Duration::from_secs(1);
/// How long a table's gate is left alone after it could not be had or
/// held long enough.
const BACKOFF: Duration = Duration::from_secs(10);

/// Tables whose gate catch-ups leave alone until then.
static BACKOFFS: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());

struct Backoff;

impl Backoff {
    fn active(table: &str) -> bool {
        BACKOFFS
            .lock()
            .is_ok_and(|b| b.get(table).is_some_and(|until| Instant::now() < *until))
    }

    fn start(table: &str) {
        if let Ok(mut b) = BACKOFFS.lock() {
            let now = Instant::now();
            b.retain(|_, until| *until > now);
            b.insert(table.to_string(), now + BACKOFF);
        }
    }
}

/// One copy of a partition being caught up.
struct Copy<'a> {
    map_key: &'a str,
    table_id: u64,
    partition: u32,
    worker: &'a str,
    /// `tessera.rebalance_rate`, read at each install: a change takes
    /// effect on a copy already under way.
    rate: &'a CopyRate,
}

/// How an attempt to catch a copy up ended.
enum Try {
    Rejoined,
    /// The partition changed meanwhile (or a write that may change it is
    /// in flight): try again.
    Busy,
    /// A decided write is still being committed on the partition.
    Pending,
    /// In sync already, or its table is gone.
    Gone,
}

impl Copy<'_> {
    /// Copies the files the copy lacks from an in-sync copy (given up
    /// after `limit`, if any: copying again is safe), then rejoins it if
    /// nothing was decided on the partition meanwhile.
    async fn attempt(
        &self,
        catalog: &Arc<Catalog>,
        done: &mut CaughtUp,
        limit: Option<Duration>,
        holding_gate: bool,
    ) -> Result<Try> {
        let Copy {
            map_key,
            table_id,
            partition,
            worker,
            rate,
        } = *self;
        let state = catalog.state()?;
        let out_of_sync = state
            .map
            .tables
            .get(map_key)
            .and_then(|p| p.by_id(partition))
            .is_some_and(|p| p.out_of_sync.iter().any(|w| w == worker));
        let Some((def, locations)) = files_of(&state, map_key) else {
            return Ok(Try::Gone);
        };
        if !out_of_sync || def.id != table_id {
            return Ok(Try::Gone);
        }
        if pending(&state, &locations, partition) {
            // Commits still landing: the copy's manifest might miss one.
            tokio::time::sleep(Duration::from_millis(30)).await;
            return Ok(Try::Pending);
        }
        let writes = writes_on(&state, map_key, partition);
        let Some(source) = catalog.scan_parts(map_key, &[partition])?.pop() else {
            return Ok(Try::Gone);
        };
        let Some(url) = catalog.members()?.get(worker).cloned() else {
            return Ok(Try::Gone);
        };
        let copying = async {
            let from = WorkerClient::connect(&source.url)?;
            let to = WorkerClient::connect(&url)?;
            for location in &locations {
                let manifest = from.manifest(location, partition).await?;
                let request = InstallRequest {
                    table: location.clone(),
                    partition,
                    source: source.url.clone(),
                    manifest,
                    rate: rate.get(),
                };
                let installed = to.install(&request).await.map_err(|e| {
                    DataFusionError::Execution(format!(
                        "copying partition {partition} of '{map_key}' from {} to {worker} \
                         failed: {e}",
                        source.worker_id
                    ))
                })?;
                done.installed.files += installed.files;
                done.installed.bytes += installed.bytes;
            }
            Ok::<_, DataFusionError>(())
        };
        match limit {
            Some(limit) => match tokio::time::timeout(limit, copying).await {
                Ok(copied) => copied?,
                Err(_) => return Ok(Try::Gone),
            },
            None => copying.await?,
        }
        // The rejoin holds the table's gate (taken only if no write holds
        // it: nothing waits), so no write starts while it is being stored
        // and finds the copy still out of sync.
        let _alone = if holding_gate {
            None
        } else {
            match catalog.gate(&def.name)?.try_write_owned() {
                Ok(alone) => Some(alone),
                Err(_) => return Ok(Try::Busy),
            }
        };
        let rejoined = catalog
            .update(|s| {
                // No write decided on the partition since the copy began,
                // none still committing, none of the table in flight.
                let still = crate::catalog::owner_of(s, map_key).map(|t| t.id) == Some(table_id)
                    && writes_on(s, map_key, partition) == writes
                    && !pending(s, &locations, partition)
                    && !catalog.writing(&def.name)?;
                let Some(placement) = s
                    .map
                    .tables
                    .get_mut(map_key)
                    .and_then(|p| p.by_id_mut(partition))
                else {
                    return Ok(false);
                };
                if !still || !placement.out_of_sync.iter().any(|w| w == worker) {
                    return Ok(false);
                }
                placement.out_of_sync.retain(|w| w != worker);
                s.map.epoch += 1;
                // Written by every decision on the partition made without
                // the table's gate too (compactions, index backfills and
                // applies): one decided while this one is being stored
                // makes one of the two run again (this one then sees it
                // and copies again). A write holds the gate, which this
                // holds alone, and counts in a key of its own.
                crate::copies::bump_writes(s, map_key, partition);
                Ok(true)
            })
            .await?;
        Ok(if rejoined { Try::Rejoined } else { Try::Busy })
    }
}

/// Transactions decided on a partition of `map_key` so far.
fn writes_on(state: &CatalogState, map_key: &str, partition: u32) -> u64 {
    state.partition_stats(map_key, partition).writes
}
