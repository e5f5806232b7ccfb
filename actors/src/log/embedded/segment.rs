//! One segment file of a partition: `{base:020}.log` holds the frames of the records from
//! offset `base` on, back to back, with a sparse in-memory index (one entry per
//! [`INDEX_INTERVAL`] bytes) so that memory grows with bytes retained, not with records.
//!
//! Opening scans the whole file, checking every crc: the last (active) segment has a torn
//! tail cut, as a crash mid-batch leaves one; a sealed segment was fsync'd whole before its
//! successor existed, so any bad frame in it is corruption and fails the open, naming the
//! file and byte. Rebuilding the index by that scan (instead of persisting index files) is
//! what verifies every sealed byte at start-up, and leaves no second file to keep consistent.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use bytes::Bytes;

use super::frame::{FRAME_HEADER, MAX_BODY, body_timestamp, decode_body, frame_header};
use super::groups::sync_dir;
use crate::error::Error;
use crate::log::{Record, TopicPartition};

/// Bytes between two index entries: a read scans at most this much before its first record.
pub(crate) const INDEX_INTERVAL: u64 = 4096;
/// Bytes read per positional read when fetching.
const READ_CHUNK: u64 = 64 << 10;

/// How the open-time scan treats a bad frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Only whole, fsync'd frames: a bad one is corruption.
    Sealed,
    /// The segment being appended to: a bad frame starts a torn tail, which is cut.
    Active,
}

/// What readers may see of a segment: published (fsync'd) frames only.
struct State {
    /// `(offset - base, byte position)`, ascending; the first frame is always indexed.
    index: Vec<(u32, u32)>,
    count: u32,
    end: u64,
    first_timestamp: Option<i64>,
    max_timestamp: Option<i64>,
}

impl State {
    fn add(&mut self, position: u64, timestamp: Option<i64>) {
        let due = self.index.last().is_none_or(|&(_, at)| position - u64::from(at) >= INDEX_INTERVAL);
        if due {
            // Positions fit: segments roll at MAX_SEGMENT_BYTES (1 GiB) plus at most one batch.
            self.index.push((self.count, position as u32));
        }
        self.count += 1;
        if let Some(ts) = timestamp {
            self.first_timestamp.get_or_insert(ts);
            self.max_timestamp = Some(self.max_timestamp.map_or(ts, |m| m.max(ts)));
        }
    }

    /// The last indexed frame at or before relative offset `rel`.
    fn lookup(&self, rel: u32) -> (u32, u64) {
        let i = self.index.partition_point(|&(r, _)| r <= rel);
        i.checked_sub(1).and_then(|i| self.index.get(i)).map_or((0, 0), |&(r, at)| (r, u64::from(at)))
    }
}

/// One segment file.
pub(crate) struct Segment {
    base: i64,
    path: PathBuf,
    file: File,
    state: RwLock<State>,
}

impl Segment {
    pub(crate) fn file_name(base: i64) -> String {
        format!("{base:020}.log")
    }

    /// The base offset named by a segment file name.
    pub(crate) fn parse_name(name: &str) -> Option<i64> {
        let digits = name.strip_suffix(".log")?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// Creates the empty segment starting at `base` and makes its name durable, so that
    /// records acknowledged from it cannot vanish with a lost directory entry.
    pub(crate) fn create(dir: &Path, base: i64) -> Result<Self, Error> {
        let path = dir.join(Self::file_name(base));
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(|e| Error::io(&path, e))?;
        sync_dir(dir)?;
        Ok(Self { base, path, file, state: RwLock::new(State::empty()) })
    }

    /// Opens an existing segment, scanning it as `role` says.
    pub(crate) fn open(path: PathBuf, base: i64, role: Role) -> Result<Self, Error> {
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
        let state = scan(&file, &path, role)?;
        Ok(Self { base, path, file, state: RwLock::new(state) })
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn base(&self) -> i64 {
        self.base
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn next_offset(&self) -> i64 {
        self.base + i64::from(self.state().count)
    }

    /// Published bytes.
    pub(crate) fn size(&self) -> u64 {
        self.state().end
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.state().count == 0
    }

    pub(crate) fn first_timestamp(&self) -> Option<i64> {
        self.state().first_timestamp
    }

    pub(crate) fn max_timestamp(&self) -> Option<i64> {
        self.state().max_timestamp
    }

    #[cfg(test)]
    pub(crate) fn index_len(&self) -> usize {
        self.state().index.len()
    }

    /// Writes frames after the last published one (not yet durable nor visible); returns
    /// where they start. Only the topic's writer thread calls this.
    pub(crate) fn write(&self, frames: &[u8]) -> io::Result<u64> {
        let start = self.size();
        if let Err(e) = self.file.write_all_at(frames, start) {
            self.discard_from(start);
            return Err(e);
        }
        Ok(start)
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Drops the bytes of a failed write: complete frames among them must not come back
    /// after a restart, as their senders were told the write failed.
    pub(crate) fn discard_from(&self, start: u64) {
        if let Err(e) = self.file.set_len(start) {
            tracing::warn!(path = %self.path.display(), position = start, error = %e,
                "could not cut a failed write; the next open will");
        }
    }

    /// Makes the durable frames `frames` (lengths `lens`) written at `start` visible;
    /// returns the next offset.
    pub(crate) fn publish(&self, start: u64, frames: &[u8], lens: &[u64]) -> i64 {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let mut at = 0usize;
        for len in lens {
            let body = frames.get(at + FRAME_HEADER as usize..).unwrap_or_default();
            state.add(start + at as u64, body_timestamp(body));
            at += *len as usize;
        }
        state.end = start + at as u64;
        self.base + i64::from(state.count)
    }

    /// Cuts anything past the published end (a failed write whose cut failed) and fsyncs the
    /// file whole: after this it is a sealed segment, which the next open checks strictly.
    pub(crate) fn seal(&self) -> io::Result<()> {
        let end = self.size();
        if self.file.metadata()?.len() != end {
            self.file.set_len(end)?;
        }
        self.file.sync_all()
    }

    /// Reads up to `max_records` records from `from` (within this segment) on, stopping
    /// after `max_bytes`, but returning at least one record when one exists.
    pub(crate) fn read(
        &self,
        tp: &TopicPartition,
        from: i64,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Vec<Record>, Error> {
        let (mut offset, mut pos, end, next) = {
            let state = self.state();
            let next = self.base + i64::from(state.count);
            if from < self.base || from >= next {
                return Ok(Vec::new());
            }
            let (rel, at) = state.lookup(u32::try_from(from - self.base).unwrap_or(u32::MAX));
            (self.base + i64::from(rel), at, state.end, next)
        };
        let max_records = max_records.max(1);
        let corrupt = |position: u64| Error::CorruptLog { path: self.path.display().to_string(), position };
        let mut records = Vec::new();
        let mut bytes = 0u64;
        let mut want = READ_CHUNK;
        let full = |records: &[Record], bytes: u64| {
            records.len() >= max_records || (!records.is_empty() && bytes >= max_bytes)
        };
        while offset < next && !full(&records, bytes) {
            let len = want.min(end - pos);
            let mut buf = vec![0u8; len as usize];
            self.file.read_exact_at(&mut buf, pos).map_err(|e| Error::io(&self.path, e))?;
            let buf = Bytes::from(buf);
            let mut at = 0u64;
            while offset < next && !full(&records, bytes) {
                let header = buf.get(at as usize..(at + FRAME_HEADER) as usize).and_then(frame_header);
                let Some((body_len, crc)) = header else { break };
                let body_start = (at + FRAME_HEADER) as usize;
                let body_end = body_start + body_len as usize;
                if body_end as u64 > len {
                    if at == 0 {
                        // A frame larger than the chunk: read exactly it next.
                        want = FRAME_HEADER + body_len;
                    }
                    break;
                }
                if offset >= from {
                    let body = &buf[body_start..body_end];
                    if crc32fast::hash(body) != crc {
                        return Err(corrupt(pos + at));
                    }
                    let decoded = decode_body(body).ok_or_else(|| corrupt(pos + at))?;
                    records.push(Record {
                        tp: tp.clone(),
                        offset,
                        key: decoded.key,
                        payload: buf.slice(body_start + decoded.payload_at..body_end),
                        headers: decoded.headers,
                        timestamp_ms: decoded.timestamp_ms,
                    });
                    bytes += FRAME_HEADER + body_len;
                }
                at = body_end as u64;
                offset += 1;
            }
            if at == 0 && (len < FRAME_HEADER || want > end - pos) {
                // No frame fits in what is published: the published bytes are not frames.
                return Err(corrupt(pos));
            }
            if at > 0 {
                want = READ_CHUNK;
            }
            pos += at;
        }
        Ok(records)
    }
}

impl State {
    fn empty() -> Self {
        State { index: Vec::new(), count: 0, end: 0, first_timestamp: None, max_timestamp: None }
    }
}

/// Walks the file frame by frame, indexing it. At the first short frame, absurd length or
/// crc mismatch an active segment is cut there (writes reach the disk in no particular
/// order before fsync, so everything after belongs to an unacknowledged batch); a sealed
/// one fails. Bodies are not decoded: a frame with a good crc is never cut, even if this
/// version cannot read it.
fn scan(file: &File, path: &Path, role: Role) -> Result<State, Error> {
    let io = |e| Error::io(path, e);
    let file_len = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut state = State::empty();
    let mut position = 0u64;
    let mut body = Vec::new();
    let problem = loop {
        if position == file_len {
            break None;
        }
        if file_len - position < FRAME_HEADER {
            break Some("short frame header");
        }
        let mut header = [0u8; FRAME_HEADER as usize];
        reader.read_exact(&mut header).map_err(io)?;
        let (len, crc) = frame_header(&header).unwrap_or_default();
        if len > MAX_BODY as u64 || file_len - position - FRAME_HEADER < len {
            break Some("short frame body");
        }
        body.resize(len as usize, 0);
        reader.read_exact(&mut body).map_err(io)?;
        if crc32fast::hash(&body) != crc {
            break Some("crc mismatch");
        }
        state.add(position, body_timestamp(&body));
        position += FRAME_HEADER + len;
    };
    state.end = position;
    if let Some(reason) = problem {
        if role == Role::Sealed {
            tracing::error!(path = %path.display(), position, reason, "corrupt sealed segment in the embedded log");
            return Err(Error::CorruptLog { path: path.display().to_string(), position });
        }
        tracing::warn!(path = %path.display(), position, file_len, reason,
            "truncating torn tail of the embedded log's active segment");
        file.set_len(position).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    Ok(state)
}
