//! One topic-partition: a directory `{topic}/{partition}/` of segments named by base offset,
//! the last one active (appended to), the others sealed (read-only until retention deletes
//! them, oldest first).
//!
//! A roll seals the active segment (cut to its published length, fsync'd) before creating
//! the next one (`create_new`, directory fsync'd) and only then writes into it, so a crash
//! anywhere in a roll leaves either no new segment or an empty one after a whole sealed one.
//! Opening drops an empty last segment and treats the one before as active: that is the one
//! state where a segment that was being sealed is still the last with data.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::watch;

use super::frame::{FRAME_HEADER, frame_header};
use super::groups::sync_dir;
use super::journal::Entry;
use super::segment::{Role, Segment};
use crate::config::TopicLogPolicy;
use crate::error::Error;
use crate::log::{Record, TopicPartition};

/// One topic-partition's segments.
///
/// Only the topic's writer thread appends and rolls; retention removes sealed segments from
/// the front; readers clone the segment they need and read it without holding the list.
pub(crate) struct Partition {
    tp: TopicPartition,
    dir: PathBuf,
    /// Ascending by base offset, never empty; the last is the active segment.
    segments: RwLock<Vec<Arc<Segment>>>,
    /// The next offset to be written, so that caught-up readers can wait for appends.
    high_watermark: watch::Sender<i64>,
}

impl Partition {
    /// Opens (creating) `{topic_dir}/{partition}/`, first moving a single-file partition of
    /// the old layout (`{partition}.log`) in as its first segment.
    pub(crate) fn open(tp: TopicPartition, topic_dir: &Path) -> Result<Self, Error> {
        let dir = topic_dir.join(tp.partition.to_string());
        migrate_single_file(topic_dir, &dir, tp.partition)?;
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            sync_dir(topic_dir)?;
        }
        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            match entry.file_name().to_str().and_then(Segment::parse_name) {
                Some(base) => bases.push(base),
                None => tracing::warn!(path = %entry.path().display(), "ignoring a file that is not a segment"),
            }
        }
        bases.sort_unstable();
        drop_empty_last(&dir, &mut bases)?;
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let last = bases.len().saturating_sub(1);
        for (i, base) in bases.iter().enumerate() {
            let role = if i == last { Role::Active } else { Role::Sealed };
            let segment = Segment::open(dir.join(Segment::file_name(*base)), *base, role)?;
            if let Some(before) = segments.last().map(|s: &Arc<Segment>| s.next_offset())
                && before != *base
            {
                // A hole or overlap between segments: records are missing or doubled.
                tracing::error!(path = %segment.path().display(), expected_base = before, "segments are not contiguous");
                return Err(Error::CorruptLog { path: segment.path().display().to_string(), position: 0 });
            }
            segments.push(Arc::new(segment));
        }
        if segments.is_empty() {
            segments.push(Arc::new(Segment::create(&dir, 0)?));
        }
        let next = segments.last().map_or(0, |s| s.next_offset());
        Ok(Self { tp, dir, segments: RwLock::new(segments), high_watermark: watch::channel(next).0 })
    }

    pub(crate) fn tp(&self) -> &TopicPartition {
        &self.tp
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// A snapshot of the segments, oldest first.
    pub(crate) fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The segment appended to.
    pub(crate) fn active(&self) -> Arc<Segment> {
        let segments = self.segments.read().unwrap_or_else(PoisonError::into_inner);
        // Never empty: open pushes one and retention keeps the last.
        Arc::clone(&segments[segments.len() - 1])
    }

    /// The next offset to be written.
    pub(crate) fn next_offset(&self) -> i64 {
        self.active().next_offset()
    }

    /// The first offset still retained.
    pub(crate) fn start_offset(&self) -> i64 {
        let segments = self.segments.read().unwrap_or_else(PoisonError::into_inner);
        segments.first().map_or(0, |s| s.base())
    }

    /// Bytes on disk (published).
    pub(crate) fn size_bytes(&self) -> u64 {
        self.segments.read().unwrap_or_else(PoisonError::into_inner).iter().map(|s| s.size()).sum()
    }

    /// Watches the next offset to be written.
    pub(crate) fn watch_end(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    /// The segment that `incoming` bytes are to be written to, rolling first when the active
    /// one is full or old. An empty segment never rolls, so a roll always seals records.
    pub(crate) fn segment_for_append(
        &self,
        policy: &TopicLogPolicy,
        now_ms: i64,
        incoming: u64,
    ) -> io::Result<(Arc<Segment>, bool)> {
        let active = self.active();
        if active.is_empty() {
            return Ok((active, false));
        }
        let by_size = active.size() + incoming > policy.segment_bytes;
        let age = active.first_timestamp().map_or(0, |first| now_ms.saturating_sub(first));
        let by_age = u64::try_from(age).unwrap_or(0) >= policy.segment_ms;
        if !(by_size || by_age) {
            return Ok((active, false));
        }
        active.seal()?;
        let next = Arc::new(Segment::create(&self.dir, active.next_offset()).map_err(into_io)?);
        self.segments.write().unwrap_or_else(PoisonError::into_inner).push(Arc::clone(&next));
        tracing::debug!(tp = %self.tp, base = next.base(), by_size, by_age, "rolled a segment");
        Ok((next, true))
    }

    /// Makes durable frames visible (see [`Segment::publish`]); returns the first's offset.
    pub(crate) fn publish(&self, segment: &Segment, start: u64, frames: &[u8], lens: &[u64]) -> i64 {
        let next = segment.publish(start, frames, lens);
        self.high_watermark.send_replace(next);
        next - lens.len() as i64
    }

    /// Writes back what a journal entry (found at `position` of `journal`) holds past this
    /// partition's end: the tail of the active segment that a power cut took before the
    /// kernel wrote it back. Returns how many records it restored. An entry that starts past
    /// the end means records are in neither file: that fails the open.
    pub(crate) fn replay(&self, entry: &Entry<Vec<u8>>, journal: &Path, position: u64) -> Result<usize, Error> {
        let corrupt = || Error::CorruptLog { path: journal.display().to_string(), position };
        let next = self.next_offset();
        if entry.first_offset + i64::from(entry.count) <= next {
            return Ok(0);
        }
        if entry.first_offset > next {
            tracing::error!(tp = %self.tp, end = next, first_offset = entry.first_offset, journal = %journal.display(),
                "the journal continues past the end of a partition: records are missing from both");
            return Err(corrupt());
        }
        let skip = usize::try_from(next - entry.first_offset).map_err(|_| corrupt())?;
        let (mut at, mut from, mut lens) = (0usize, 0usize, Vec::new());
        for i in 0..entry.count as usize {
            let (len, _) = entry.frames.get(at..).and_then(frame_header).ok_or_else(corrupt)?;
            let frame_len = usize::try_from(FRAME_HEADER + len).map_err(|_| corrupt())?;
            if i < skip {
                from += frame_len;
            } else {
                lens.push(frame_len as u64);
            }
            at += frame_len;
        }
        if at != entry.frames.len() {
            return Err(corrupt());
        }
        let frames = &entry.frames[from..];
        let segment = self.active();
        let start = segment.write(frames).map_err(|e| Error::io(segment.path(), e))?;
        self.publish(&segment, start, frames, &lens);
        Ok(lens.len())
    }

    /// Reads up to `max_records` records from `from` on (from the log start when `from` was
    /// deleted already), stopping early after `max_bytes` but returning at least one record
    /// when one exists. A batch never spans two segments.
    pub(crate) fn read_batch(&self, from: i64, max_records: usize, max_bytes: u64) -> Result<Vec<Record>, Error> {
        let segment = {
            let segments = self.segments.read().unwrap_or_else(PoisonError::into_inner);
            let from = from.max(segments.first().map_or(0, |s| s.base()));
            let i = segments.partition_point(|s| s.base() <= from).saturating_sub(1);
            match segments.get(i) {
                Some(segment) => Arc::clone(segment),
                None => return Ok(Vec::new()),
            }
        };
        segment.read(&self.tp, from.max(segment.base()), max_records, max_bytes)
    }

    /// Deletes the `count` oldest segments (never the active one); returns the bytes freed.
    /// Oldest first, so a crash midway leaves a contiguous suffix.
    pub(crate) fn delete_oldest(&self, count: usize) -> u64 {
        let removed: Vec<Arc<Segment>> = {
            let mut segments = self.segments.write().unwrap_or_else(PoisonError::into_inner);
            let count = count.min(segments.len().saturating_sub(1));
            segments.drain(..count).collect()
        };
        let mut freed = 0;
        for segment in &removed {
            // Readers holding the segment keep reading the unlinked file.
            match fs::remove_file(segment.path()) {
                Ok(()) => freed += segment.size(),
                Err(e) => tracing::warn!(path = %segment.path().display(), error = %e,
                    "could not delete a segment; it is reloaded at the next start"),
            }
        }
        if !removed.is_empty()
            && let Err(e) = sync_dir(&self.dir)
        {
            tracing::warn!(error = %e, "could not sync a partition directory after deleting segments");
        }
        freed
    }
}

fn into_io(e: Error) -> io::Error {
    match e {
        Error::Io { source, .. } => source,
        other => io::Error::other(other),
    }
}

/// Moves `{partition}.log` of the old one-file layout to `{partition}/` as its first
/// segment. The rename is the commit point: before it the old file is intact, after it
/// the old name is gone (an empty first segment left by an interrupted try is replaced).
fn migrate_single_file(topic_dir: &Path, dir: &Path, partition: i32) -> Result<(), Error> {
    let old = topic_dir.join(format!("{partition}.log"));
    if !old.is_file() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let first = dir.join(Segment::file_name(0));
    fs::rename(&old, &first).map_err(|e| Error::io(&first, e))?;
    sync_dir(dir)?;
    sync_dir(topic_dir)?;
    tracing::info!(from = %old.display(), to = %first.display(), "migrated a partition to the segmented layout");
    Ok(())
}

/// An empty last segment after others is what a roll leaves when it crashed (or its first
/// write failed) before any record went in: drop it, so the segment before is active again.
fn drop_empty_last(dir: &Path, bases: &mut Vec<i64>) -> Result<(), Error> {
    let mut dropped = false;
    while bases.len() > 1 {
        let Some(&last) = bases.last() else { break };
        let path = dir.join(Segment::file_name(last));
        if fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len() != 0 {
            break;
        }
        fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        bases.pop();
        dropped = true;
    }
    if dropped {
        sync_dir(dir)?;
    }
    Ok(())
}
