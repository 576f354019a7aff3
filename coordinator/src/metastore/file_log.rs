//! `FileMetastore`: the embedded metastore in the coordinator's data dir.
//!
//! ```text
//!   <dir>/snapshot.json   every key at one revision (written whole: fsync, rename)
//!   <dir>/log.jsonl       each write after it, one line, fsync'ed before it returns
//! ```
//!
//! A write appends one line, not the whole state. Writes that arrive while
//! one is being fsync'ed queue up, and the next fsync covers them all (group
//! commit, as a database's write-ahead log does). Every few thousand writes
//! the state is snapshotted and the log starts over. A line cut short by a
//! crash is dropped on open: its write never returned.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::common::{DataFusionError, Result};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

use super::{Compare, Metastore, Op, Versioned, WatchEvent};

const SNAPSHOT: &str = "snapshot.json";
const LOG: &str = "log.jsonl";
/// Log lines after which the state is snapshotted and the log emptied.
const SNAPSHOT_EVERY: usize = 4096;
/// Changes a watcher may fall behind by before its stream ends.
const WATCH_BUFFER: usize = 4096;

/// The embedded metastore.
#[derive(Debug)]
pub struct FileMetastore {
    dir: PathBuf,
    /// What reads see: every write that returned.
    state: Mutex<State>,
    /// Writes waiting for the next fsync, and whether a writer is at it.
    queue: Mutex<Queue>,
    /// The log, used by one writer at a time (the one draining the queue).
    log: Arc<Mutex<LogFile>>,
    events: broadcast::Sender<WatchEvent>,
    snapshot_every: usize,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<String, Versioned>,
    revision: u64,
}

#[derive(Debug)]
struct LogFile {
    file: File,
    len: u64,
    lines: usize,
}

type Reply = oneshot::Sender<Result<Option<u64>>>;

#[derive(Debug, Default)]
struct Queue {
    pending: Vec<(Vec<Compare>, Vec<Op>, Reply)>,
    writing: bool,
}

/// One line of the log: the writes of one revision.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    rev: u64,
    ops: Vec<Op>,
}

/// The snapshot file: every key with its value and revision.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    revision: u64,
    entries: BTreeMap<String, (String, u64)>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> DataFusionError {
    let hint = match e.kind() {
        ErrorKind::StorageFull => " (the disk is full: free space, then retry)",
        ErrorKind::PermissionDenied => " (check the data dir's permissions)",
        _ => "",
    };
    DataFusionError::Execution(format!("metastore: {what} {}: {e}{hint}", path.display()))
}

fn poisoned() -> DataFusionError {
    DataFusionError::Internal("metastore lock poisoned by an earlier panic".into())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync", dir, e))
}

impl FileMetastore {
    /// Opens (or creates) the store in `dir`, replaying its log.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let mut state = State::default();
        let snapshot_path = dir.join(SNAPSHOT);
        match fs::read(&snapshot_path) {
            Ok(bytes) => {
                let snapshot: Snapshot = serde_json::from_slice(&bytes).map_err(|e| {
                    DataFusionError::Execution(format!(
                        "metastore snapshot {} is corrupt ({e}); restore the coordinator's data \
                         dir from a backup",
                        snapshot_path.display()
                    ))
                })?;
                state.revision = snapshot.revision;
                state.entries = snapshot
                    .entries
                    .into_iter()
                    .map(|(k, (value, revision))| (k, Versioned { value, revision }))
                    .collect();
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot read", &snapshot_path, e)),
        }
        let log = replay(&dir.join(LOG), &mut state)?;
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        Ok(Self {
            dir,
            state: Mutex::new(state),
            queue: Mutex::new(Queue::default()),
            log: Arc::new(Mutex::new(log)),
            events,
            snapshot_every: SNAPSHOT_EVERY,
        })
    }

    /// Snapshots after `lines` log lines instead of the default.
    pub fn with_snapshot_every(mut self, lines: usize) -> Self {
        self.snapshot_every = lines.max(1);
        self
    }

    /// Writes queued writes, one fsync per round, until none is left.
    async fn drain(&self) {
        loop {
            let batch = {
                let Ok(mut queue) = self.queue.lock() else {
                    return;
                };
                if queue.pending.is_empty() {
                    queue.writing = false;
                    return;
                }
                std::mem::take(&mut queue.pending)
            };
            self.write_batch(batch).await;
        }
    }

    async fn write_batch(&self, batch: Vec<(Vec<Compare>, Vec<Op>, Reply)>) {
        // Decide which writes hold, in order, against the state plus the
        // earlier writes of this batch (only this task changes the state).
        let (base, mut revision) = match self.state.lock() {
            Ok(state) => {
                let base: BTreeMap<String, u64> = batch
                    .iter()
                    .flat_map(|(compares, ..)| compares.iter())
                    .map(|c| {
                        let r = state.entries.get(&c.key).map_or(0, |v| v.revision);
                        (c.key.clone(), r)
                    })
                    .collect();
                (base, state.revision)
            }
            Err(_) => {
                for (.., reply) in batch {
                    let _ = reply.send(Err(poisoned()));
                }
                return;
            }
        };
        let mut overlay: BTreeMap<String, u64> = BTreeMap::new();
        let mut accepted: Vec<(Record, Reply)> = vec![];
        let mut rejected: Vec<Reply> = vec![];
        for (compares, ops, reply) in batch {
            let holds = compares.iter().all(|c| {
                let current = overlay
                    .get(&c.key)
                    .or_else(|| base.get(&c.key))
                    .copied()
                    .unwrap_or(0);
                current == c.revision
            });
            if !holds {
                rejected.push(reply);
                continue;
            }
            revision += 1;
            for op in &ops {
                let r = match op {
                    Op::Put(..) => revision,
                    Op::Delete(_) => 0,
                };
                overlay.insert(op.key().to_string(), r);
            }
            accepted.push((Record { rev: revision, ops }, reply));
        }
        for reply in rejected {
            let _ = reply.send(Ok(None));
        }
        if accepted.is_empty() {
            return;
        }
        let mut lines = Vec::new();
        for (record, _) in &accepted {
            match serde_json::to_vec(record) {
                Ok(mut line) => {
                    line.push(b'\n');
                    lines.extend(line);
                }
                Err(e) => {
                    let e = DataFusionError::Internal(format!("metastore encoding: {e}"));
                    for (_, reply) in accepted {
                        let _ = reply.send(Err(for_each_waiter(&e)));
                    }
                    return;
                }
            }
        }
        let log = Arc::clone(&self.log);
        let path = self.dir.join(LOG);
        let count = accepted.len();
        let written = tokio::task::spawn_blocking(move || append(&log, &path, &lines, count))
            .await
            .unwrap_or_else(|e| Err(DataFusionError::Internal(format!("metastore write: {e}"))));
        if let Err(e) = written {
            for (_, reply) in accepted {
                let _ = reply.send(Err(for_each_waiter(&e)));
            }
            return;
        }
        // Durable: make it visible, then answer.
        if let Ok(mut state) = self.state.lock() {
            for (record, _) in &accepted {
                for op in &record.ops {
                    let event = apply(&mut state.entries, op, record.rev);
                    let _ = self.events.send(event);
                }
                state.revision = record.rev;
            }
        }
        for (record, reply) in accepted {
            let _ = reply.send(Ok(Some(record.rev)));
        }
        self.maybe_snapshot().await;
    }

    /// Snapshots the state and empties the log once the log is long.
    async fn maybe_snapshot(&self) {
        let long = match self.log.lock() {
            Ok(log) => log.lines >= self.snapshot_every,
            Err(_) => false,
        };
        if !long {
            return;
        }
        let snapshot = match self.state.lock() {
            Ok(state) => Snapshot {
                revision: state.revision,
                entries: state
                    .entries
                    .iter()
                    .map(|(k, v)| (k.clone(), (v.value.clone(), v.revision)))
                    .collect(),
            },
            Err(_) => return,
        };
        let dir = self.dir.clone();
        let log = Arc::clone(&self.log);
        let done = tokio::task::spawn_blocking(move || write_snapshot(&dir, &snapshot, &log)).await;
        if let Ok(Err(e)) | Err(e) = done.map_err(|e| DataFusionError::Internal(e.to_string())) {
            tracing::warn!(error = %e, "metastore snapshot failed; the log keeps growing until one succeeds");
        }
    }
}

/// The same text, for each of several waiters on one failed write.
fn for_each_waiter(e: &DataFusionError) -> DataFusionError {
    DataFusionError::Execution(e.to_string())
}

/// Applies one change to `entries`; the event it makes.
fn apply(entries: &mut BTreeMap<String, Versioned>, op: &Op, revision: u64) -> WatchEvent {
    match op {
        Op::Put(key, value) => {
            entries.insert(
                key.clone(),
                Versioned {
                    value: value.clone(),
                    revision,
                },
            );
            WatchEvent {
                key: key.clone(),
                value: Some(value.clone()),
                revision,
            }
        }
        Op::Delete(key) => {
            entries.remove(key);
            WatchEvent {
                key: key.clone(),
                value: None,
                revision,
            }
        }
    }
}

/// Replays the log into `state` and opens it for appending. A last line
/// without its end (a write cut short by a crash, never acknowledged) is cut
/// off; a bad line before the last is corruption.
fn replay(path: &Path, state: &mut State) -> Result<LogFile> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(|e| io_err("cannot open", path, e))?;
    let mut reader = BufReader::new(&mut file);
    let mut good = 0u64;
    let mut lines = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| io_err("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        let complete = line.ends_with('\n');
        let record: Option<Record> = serde_json::from_str(line.trim_end()).ok();
        match (record, complete) {
            (Some(record), true) => {
                if record.rev > state.revision {
                    for op in &record.ops {
                        apply(&mut state.entries, op, record.rev);
                    }
                    state.revision = record.rev;
                }
                good += n as u64;
                lines += 1;
            }
            (_, false) => break,
            (None, true) => {
                // Only a torn write at the very end may be dropped.
                let mut rest = String::new();
                let more = reader
                    .read_line(&mut rest)
                    .map_err(|e| io_err("cannot read", path, e))?;
                if more > 0 {
                    return Err(DataFusionError::Execution(format!(
                        "metastore log {} is corrupt at byte {good}; restore the coordinator's \
                         data dir from a backup",
                        path.display()
                    )));
                }
                break;
            }
        }
    }
    drop(reader);
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|e| io_err("cannot read", path, e))?;
    if len != good {
        file.set_len(good)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_err("cannot repair", path, e))?;
        tracing::warn!(path = %path.display(), dropped = len - good, "dropped an unfinished metastore write");
    }
    Ok(LogFile {
        file,
        len: good,
        lines,
    })
}

/// Appends `bytes` (`count` lines) and fsyncs; on failure the log is cut
/// back to where it was, so no partial line stays.
fn append(log: &Mutex<LogFile>, path: &Path, bytes: &[u8], count: usize) -> Result<()> {
    let mut log = log.lock().map_err(|_| poisoned())?;
    let written = log
        .file
        .write_all(bytes)
        .and_then(|()| log.file.sync_data());
    match written {
        Ok(()) => {
            log.len += bytes.len() as u64;
            log.lines += count;
            Ok(())
        }
        Err(e) => {
            let len = log.len;
            if let Err(cut) = log.file.set_len(len) {
                tracing::error!(error = %cut, "could not cut back a failed metastore write");
            }
            Err(io_err("cannot write", path, e))
        }
    }
}

/// Writes the snapshot (fsync, rename, fsync dir), then empties the log.
fn write_snapshot(dir: &Path, snapshot: &Snapshot, log: &Mutex<LogFile>) -> Result<()> {
    let bytes = serde_json::to_vec(snapshot)
        .map_err(|e| DataFusionError::Internal(format!("metastore snapshot encoding: {e}")))?;
    let tmp = dir.join("snapshot.json.tmp");
    (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })()
    .map_err(|e| io_err("cannot write", &tmp, e))?;
    fs::rename(&tmp, dir.join(SNAPSHOT)).map_err(|e| io_err("cannot swap in", &tmp, e))?;
    sync_dir(dir)?;
    // Lines up to the snapshot's revision are skipped when replayed, so a
    // crash before this leaves a consistent store too.
    let mut log = log.lock().map_err(|_| poisoned())?;
    log.file
        .set_len(0)
        .and_then(|()| log.file.sync_all())
        .map_err(|e| io_err("cannot empty", &dir.join(LOG), e))?;
    log.len = 0;
    log.lines = 0;
    Ok(())
}

#[async_trait]
impl Metastore for FileMetastore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        Ok(self
            .state
            .lock()
            .map_err(|_| poisoned())?
            .entries
            .get(key)
            .cloned())
    }

    async fn range(&self, prefix: &str) -> Result<BTreeMap<String, Versioned>> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        Ok(state
            .entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn commit(&self, compares: &[Compare], ops: &[Op]) -> Result<Option<u64>> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut queue = self.queue.lock().map_err(|_| poisoned())?;
            queue.pending.push((compares.to_vec(), ops.to_vec(), reply));
            !std::mem::replace(&mut queue.writing, true)
        };
        if lead {
            self.drain().await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(DataFusionError::Execution(
                "metastore write was abandoned (the coordinator is stopping); retry".into(),
            ))
        })
    }

    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>> {
        let receiver = self.events.subscribe();
        let prefix = prefix.to_string();
        let stream = futures::stream::unfold(receiver, move |mut receiver| {
            let prefix = prefix.clone();
            async move {
                loop {
                    match receiver.recv().await {
                        Ok(event) if event.key.starts_with(&prefix) => {
                            return Some((event, receiver));
                        }
                        Ok(_) => continue,
                        // Fell behind or the store closed: the watcher
                        // reads the keys again and watches anew.
                        Err(_) => return None,
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Op {
        Op::Put(key.to_string(), value.to_string())
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        super::super::conformance(move || {
            let path = path.clone();
            async move { Ok(Box::new(FileMetastore::open(path)?) as Box<dyn Metastore>) }
        })
        .await;
    }

    /// A write cut short by a crash (half a line at the end of the log)
    /// never returned: it is dropped on open, and writing goes on.
    #[tokio::test]
    async fn a_torn_write_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileMetastore::open(dir.path()).unwrap();
        let rev = store.commit(&[], &[put("a", "1")]).await.unwrap().unwrap();
        drop(store);
        let log = dir.path().join(LOG);
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(br#"{"rev":2,"ops":[{"Put":["b","#).unwrap();
        drop(f);
        let store = FileMetastore::open(dir.path()).unwrap();
        assert_eq!(store.get("a").await.unwrap().unwrap().revision, rev);
        assert!(store.get("b").await.unwrap().is_none());
        let next = store.commit(&[], &[put("c", "3")]).await.unwrap().unwrap();
        assert_eq!(next, rev + 1);
        drop(store);
        let store = FileMetastore::open(dir.path()).unwrap();
        assert_eq!(store.get("c").await.unwrap().unwrap().value, "3");
        // A bad line with more after it is corruption, not a torn write.
        drop(store);
        let text = fs::read_to_string(&log).unwrap();
        fs::write(&log, format!("garbage\n{text}")).unwrap();
        let err = FileMetastore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }

    /// Snapshots empty the log; the state is the same after a reopen, also
    /// when a stop came between the snapshot and emptying the log.
    #[tokio::test]
    async fn snapshots_keep_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileMetastore::open(dir.path())
            .unwrap()
            .with_snapshot_every(5);
        for i in 0..12 {
            store
                .commit(&[], &[put(&format!("k{i:02}"), &i.to_string())])
                .await
                .unwrap()
                .unwrap();
        }
        let before = store.range("").await.unwrap();
        assert!(dir.path().join(SNAPSHOT).exists());
        let lines = fs::read_to_string(dir.path().join(LOG))
            .unwrap()
            .lines()
            .count();
        assert!(lines < 5, "{lines} lines after snapshots");
        drop(store);
        // Replaying lines the snapshot already holds changes nothing.
        let snapshot: Snapshot =
            serde_json::from_slice(&fs::read(dir.path().join(SNAPSHOT)).unwrap()).unwrap();
        let old = Record {
            rev: snapshot.revision,
            ops: vec![put("k00", "stale")],
        };
        let mut text = serde_json::to_string(&old).unwrap();
        text.push('\n');
        text.push_str(&fs::read_to_string(dir.path().join(LOG)).unwrap());
        fs::write(dir.path().join(LOG), text).unwrap();
        let store = FileMetastore::open(dir.path()).unwrap();
        assert_eq!(store.range("").await.unwrap(), before);
    }
}
