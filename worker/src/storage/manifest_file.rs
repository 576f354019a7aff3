//! A partition's manifest on disk: two slots, `manifest.0` and
//! `manifest.1`, written in turn and in place. Each holds a line of JSON
//! (a sequence number and the manifest) and a line with the xxh3 checksum
//! of the first; the manifest is the valid slot with the higher number. A
//! write goes to the slot the newest is not in, so a write cut short (a
//! crash) leaves that slot failing its checksum and the other whole: the
//! manifest as it was before the write, which was never confirmed.
//!
//! Writing in place means no file is created or deleted per commit once a
//! partition has both slots (a swap by rename creates one inode and frees
//! another every time). A `manifest.json` of an earlier version is read
//! while neither slot exists, and removed once one is written.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::Path;

use datafusion::common::Result;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::Manifest;
use super::parquet_io::{io_err, remove_if_present, sync_dir};

const SLOTS: [&str; 2] = ["manifest.0", "manifest.1"];
const LEGACY: &str = "manifest.json";

/// A slot as read.
#[derive(Deserialize)]
struct Slot {
    seq: u64,
    manifest: Manifest,
}

/// A slot as written (the manifest borrowed, not copied).
#[derive(Serialize)]
struct SlotRef<'a> {
    seq: u64,
    manifest: &'a Manifest,
}

/// The partition's manifest in `dir` and its sequence number (0 for none
/// yet, or one of an earlier version's `manifest.json`).
pub(super) fn read(dir: &Path) -> Result<(u64, Manifest)> {
    let mut newest: Option<Slot> = None;
    let mut torn = vec![];
    for name in SLOTS {
        let path = dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("cannot read", &path, e)),
        };
        match decode(&bytes) {
            Some(slot) if newest.as_ref().is_none_or(|n| slot.seq > n.seq) => newest = Some(slot),
            Some(_) => {}
            None => torn.push(path),
        }
    }
    if let Some(slot) = newest {
        // A write a crash cut short, or damage: the two look the same.
        for path in &torn {
            tracing::warn!(
                slot = %path.display(),
                seq = slot.seq,
                "a manifest slot fails its checksum (a write cut short, or damage); the other \
                 slot is read"
            );
        }
        return Ok((slot.seq, slot.manifest));
    }
    // One slot never written whole is the first write cut short: what
    // was before it stands. Two are beyond a torn write.
    if let [first, _] = torn.as_slice() {
        return Err(crate::ErrorKind::FailedPrecondition.error(format!(
            "both manifest slots of {} are corrupt ({}); restore the partition from a replica \
             or backup",
            dir.display(),
            first.display()
        )));
    }
    let legacy = dir.join(LEGACY);
    match fs::read(&legacy) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(|m| (0, m)).map_err(|e| {
            crate::ErrorKind::FailedPrecondition.error(format!(
                "manifest {} is corrupt: {e}; restore it from a replica or backup",
                legacy.display()
            ))
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok((0, Manifest::default())),
        Err(e) => Err(io_err("cannot read", &legacy, e)),
    }
}

/// Writes `manifest` as number `seq` (one more than the current one) into
/// the slot the current one is not in, and syncs it.
pub(super) fn write(dir: &Path, seq: u64, manifest: &Manifest) -> Result<()> {
    let bytes = encode(&SlotRef { seq, manifest })?;
    let path = dir.join(SLOTS[(seq % 2) as usize]);
    // A slot's first whole write makes its directory entry durable too
    // (a first write that failed may have left the file without it).
    let first = seq <= 2 || !path.exists();
    (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        f.write_all(&bytes)?;
        f.set_len(bytes.len() as u64)?;
        f.sync_data()
    })()
    .map_err(|e| io_err("cannot write", &path, e))?;
    if first {
        // A new directory entry must survive a power loss too; the
        // earlier version's file is not read once a slot exists.
        sync_dir(dir)?;
        remove_if_present(&dir.join(LEGACY))?;
    }
    Ok(())
}

fn encode(slot: &SlotRef<'_>) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(slot).map_err(|e| {
        datafusion::common::DataFusionError::Internal(format!("manifest encoding: {e}"))
    })?;
    let sum = xxh3_64(&bytes);
    bytes.extend_from_slice(format!("\n{sum:016x}\n").as_bytes());
    Ok(bytes)
}

/// The slot in `bytes`, if it is whole: its checksum matches.
fn decode(bytes: &[u8]) -> Option<Slot> {
    let body = bytes.strip_suffix(b"\n")?;
    let cut = body.iter().rposition(|b| *b == b'\n')?;
    let (json, sum) = (&body[..cut], &body[cut + 1..]);
    let sum = u64::from_str_radix(std::str::from_utf8(sum).ok()?, 16).ok()?;
    if xxh3_64(json) != sum {
        return None;
    }
    serde_json::from_slice(json).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::storage::DataFile;

    fn manifest(files: &[&str]) -> Manifest {
        Manifest {
            files: files
                .iter()
                .map(|n| DataFile::new(n.to_string(), 1, 1))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_newest_whole_slot_wins_and_a_torn_write_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), (0, Manifest::default()));
        write(dir.path(), 1, &manifest(&["a"])).unwrap();
        write(dir.path(), 2, &manifest(&["a", "b"])).unwrap();
        write(dir.path(), 3, &manifest(&["c"])).unwrap();
        assert_eq!(read(dir.path()).unwrap(), (3, manifest(&["c"])));

        // Write 4 cut short: its slot (manifest.0) holds half of it.
        let whole = encode(&SlotRef {
            seq: 4,
            manifest: &manifest(&["d", "e"]),
        })
        .unwrap();
        for cut in [1, whole.len() / 2, whole.len() - 2] {
            fs::write(dir.path().join(SLOTS[0]), &whole[..cut]).unwrap();
            assert_eq!(
                read(dir.path()).unwrap(),
                (3, manifest(&["c"])),
                "cut at {cut}"
            );
        }
        // Or whole but with a flipped byte.
        let mut flipped = whole.clone();
        flipped[10] ^= 1;
        fs::write(dir.path().join(SLOTS[0]), &flipped).unwrap();
        assert_eq!(read(dir.path()).unwrap().0, 3);
        // Writing again goes on from there.
        write(dir.path(), 4, &manifest(&["d"])).unwrap();
        assert_eq!(read(dir.path()).unwrap(), (4, manifest(&["d"])));
        // A shorter manifest over a longer one leaves nothing behind.
        write(dir.path(), 5, &manifest(&[])).unwrap();
        assert_eq!(read(dir.path()).unwrap(), (5, manifest(&[])));
    }

    #[test]
    fn an_earlier_versions_manifest_is_read_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let old = manifest(&["x"]);
        fs::write(dir.path().join(LEGACY), serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), (0, old));
        write(dir.path(), 1, &manifest(&["x", "y"])).unwrap();
        assert!(!dir.path().join(LEGACY).exists());
        assert_eq!(read(dir.path()).unwrap(), (1, manifest(&["x", "y"])));
    }

    #[test]
    fn a_first_write_cut_short_is_no_manifest_and_two_bad_slots_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SLOTS[1]), b"{\"seq\":1,").unwrap();
        assert_eq!(read(dir.path()).unwrap(), (0, Manifest::default()));
        fs::write(dir.path().join(SLOTS[0]), b"garbage\n0\n").unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("both manifest slots"), "{e}");
    }
}
