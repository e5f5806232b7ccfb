//! The topic's write-ahead journal, `{topic}/journal.wal`: what makes a batch durable.
//!
//! A batch touching four partitions used to fsync four segment files. Each fsync of a file
//! that grew is a metadata commit of the filesystem's journal as well, and four of them at
//! once waited on each other (0.43 ms mean, 4 ms p99, against 0.08 ms for one file rewritten
//! in place; docs/benchmarks.md). Now the writer thread writes each partition's frames into
//! its segment without an fsync, appends the same frames to this one file, and fsyncs only
//! it: one fsync per batch, whatever it touched.
//!
//! Once `journal_bytes` were written, the writer fsyncs every partition's active segment (a
//! *checkpoint*) and starts the journal again from its start, overwriting in place: after its
//! first round the file no longer grows, so its fsync flushes data only. Every entry carries
//! the round's *epoch*, and a scan stops at the first entry whose epoch differs from the
//! first entry's, so the previous round's leftovers past the current end are never read.
//!
//! An entry is `[u32 LE body length][u32 LE crc32 of body][body]`, the body
//! `[u64 epoch][u32 partition][i64 first offset][u32 record count][frames]`. Opening the log
//! replays the entries of the current round into segments whose tail was lost (a power cut
//! before the kernel wrote the unsynced segment pages back); see `replay` in the parent.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::groups::sync_dir;
use crate::error::Error;

pub(crate) const FILE_NAME: &str = "journal.wal";
const ENTRY_HEADER: usize = 8;
const BODY_HEADER: usize = 8 + 4 + 8 + 4;

/// One partition's frames of one batch, as written or as found at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry<F> {
    /// Index into the topic's partitions.
    pub partition: u32,
    pub first_offset: i64,
    pub count: u32,
    /// Whole frames, back to back.
    pub frames: F,
}

/// An entry found at open, with the byte it starts at.
pub(crate) type Found = (u64, Entry<Vec<u8>>);

/// The open journal of one topic; only its writer thread uses it.
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    /// Where the next entry goes.
    end: u64,
    epoch: u64,
    /// A checkpoint is due once `end` reaches this.
    limit: u64,
    buf: Vec<u8>,
}

impl Journal {
    /// Opens (creating) the topic's journal and returns it with the entries of its current
    /// round, in the order they were written. The round that follows gets a new epoch.
    pub(crate) fn open(topic_dir: &Path, limit: u64) -> Result<(Self, Vec<Found>), Error> {
        let path = topic_dir.join(FILE_NAME);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if !existed {
            sync_dir(topic_dir)?;
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let (epoch, entries) = scan(&bytes);
        // Epochs are wall-clock microseconds made to increase: a new round's cannot be one
        // that older rounds left further in the file (unless the clock went back to within
        // the same microsecond).
        let epoch = epoch.map_or(0, |e| e + 1).max(now_micros());
        Ok((Journal { path, file, end: 0, epoch, limit: limit.max(1), buf: Vec::new() }, entries))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the entries and makes them durable with one fsync. On failure nothing counts
    /// as written: the next append overwrites the same place.
    pub(crate) fn append(&mut self, entries: &[Entry<&[u8]>]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for entry in entries {
            encode(&mut self.buf, self.epoch, entry);
        }
        let written = self.file.write_all_at(&self.buf, self.end).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Whole entries of a failed write may have reached the disk, and their senders
            // are told the write failed: make the first unreadable so that no scan passes it.
            let zeros = [0u8; ENTRY_HEADER];
            if let Err(cut) = self.file.write_all_at(&zeros, self.end).and_then(|()| self.file.sync_data()) {
                tracing::warn!(path = %self.path.display(), error = %cut, "could not void a failed journal write");
            }
            return Err(e);
        }
        self.end += self.buf.len() as u64;
        Ok(())
    }

    /// Whether enough was written since the last checkpoint that one is due.
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.end >= self.limit
    }

    /// Starts a new round from the start of the file. Only after every segment holding an
    /// entry of this round was fsync'd: the entries are overwritten from here on.
    pub(crate) fn restart(&mut self) {
        self.end = 0;
        self.epoch = (self.epoch + 1).max(now_micros());
    }
}

fn encode(out: &mut Vec<u8>, epoch: u64, entry: &Entry<&[u8]>) {
    let body_len = BODY_HEADER + entry.frames.len();
    let at = out.len();
    // Batches are bounded far below 4 GiB (the writer's batch limits), so the length fits.
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&entry.partition.to_le_bytes());
    out.extend_from_slice(&entry.first_offset.to_le_bytes());
    out.extend_from_slice(&entry.count.to_le_bytes());
    out.extend_from_slice(entry.frames);
    let crc = crc32fast::hash(&out[at + ENTRY_HEADER..]);
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The current round's epoch (the first entry's) and its entries: up to the first entry that
/// is short, fails its crc or belongs to another round.
fn scan(bytes: &[u8]) -> (Option<u64>, Vec<Found>) {
    let mut entries = Vec::new();
    let mut round = None;
    let mut at = 0usize;
    while let Some((epoch, entry, len)) = decode(bytes.get(at..).unwrap_or_default()) {
        if *round.get_or_insert(epoch) != epoch {
            break;
        }
        entries.push((at as u64, entry));
        at += len;
    }
    (round, entries)
}

/// One entry at the start of `bytes`, with its epoch and its length in bytes.
fn decode(bytes: &[u8]) -> Option<(u64, Entry<Vec<u8>>, usize)> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let body = bytes.get(ENTRY_HEADER..ENTRY_HEADER.checked_add(len)?)?;
    if len < BODY_HEADER || crc32fast::hash(body) != crc {
        return None;
    }
    let epoch = u64::from_le_bytes(body[0..8].try_into().ok()?);
    let partition = u32::from_le_bytes(body[8..12].try_into().ok()?);
    let first_offset = i64::from_le_bytes(body[12..20].try_into().ok()?);
    let count = u32::from_le_bytes(body[20..24].try_into().ok()?);
    let entry = Entry { partition, first_offset, count, frames: body[BODY_HEADER..].to_vec() };
    Some((epoch, entry, ENTRY_HEADER + len))
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn entry(partition: u32, first_offset: i64, frames: &[u8]) -> Entry<&[u8]> {
        Entry { partition, first_offset, count: 1, frames }
    }

    fn found(found: Vec<Found>) -> Vec<Entry<Vec<u8>>> {
        found.into_iter().map(|(_, entry)| entry).collect()
    }

    fn owned(entries: &[Entry<&[u8]>]) -> Vec<Entry<Vec<u8>>> {
        entries
            .iter()
            .map(|e| Entry {
                partition: e.partition,
                first_offset: e.first_offset,
                count: e.count,
                frames: e.frames.to_vec(),
            })
            .collect()
    }

    #[test]
    fn entries_come_back_in_order_and_a_torn_one_ends_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, f) = Journal::open(dir.path(), 1 << 20).unwrap();
        assert!(f.is_empty());
        let first = [entry(0, 0, b"aaaa"), entry(3, 7, b"bb")];
        journal.append(&first).unwrap();
        journal.append(&[entry(1, 2, b"c")]).unwrap();
        drop(journal);
        let (_, f) = Journal::open(dir.path(), 1 << 20).unwrap();
        let mut expected = owned(&first);
        expected.extend(owned(&[entry(1, 2, b"c")]));
        assert_eq!(found(f), expected);

        // The last entry cut short, as a crash during its write leaves it.
        let path = dir.path().join(FILE_NAME);
        let len = std::fs::metadata(&path).unwrap().len();
        File::options().write(true).open(&path).unwrap().set_len(len - 1).unwrap();
        let (_, f) = Journal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(found(f), owned(&first));
    }

    #[test]
    fn a_new_round_hides_what_the_last_one_left_past_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path(), 16).unwrap();
        assert!(!journal.checkpoint_due());
        journal.append(&[entry(0, 0, b"one"), entry(0, 1, b"two"), entry(0, 2, b"three")]).unwrap();
        assert!(journal.checkpoint_due());
        journal.restart();
        assert!(!journal.checkpoint_due());
        // Shorter than the round before: its later entries stay in the file, whole.
        journal.append(&[entry(1, 40, b"new")]).unwrap();
        drop(journal);
        let (mut journal, f) = Journal::open(dir.path(), 16).unwrap();
        assert_eq!(found(f), owned(&[entry(1, 40, b"new")]));

        // Reopened, the next round's epoch is newer than anything in the file.
        journal.append(&[entry(2, 9, b"x")]).unwrap();
        drop(journal);
        let (_, f) = Journal::open(dir.path(), 16).unwrap();
        assert_eq!(found(f), owned(&[entry(2, 9, b"x")]));
    }

    #[test]
    fn a_flipped_byte_ends_the_round_there() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path(), 1 << 20).unwrap();
        journal.append(&[entry(0, 0, b"good")]).unwrap();
        journal.append(&[entry(0, 1, b"flipped")]).unwrap();
        drop(journal);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (_, f) = Journal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(found(f), owned(&[entry(0, 0, b"good")]));
    }
}
