//! One partition's append-only file: the frame format, the open-time scan that rebuilds
//! the offset index and cuts a torn tail, and positional batch reads.
//!
//! A frame is `[u32 LE body length][u32 LE crc32 of body][body]`; the body is
//! `[u8 version][i64 timestamp_ms][u32 key length or u32::MAX for none][key]`
//! `[u32 header count]([u32 name length][name][u32 value length][value])*[payload]`,
//! the payload taking the rest so that it can be sliced out of the read buffer without a copy.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use bytes::Bytes;
use tokio::sync::watch;

use crate::error::Error;
use crate::log::{Header, Record, TopicPartition};

const FRAME_HEADER: u64 = 8;
/// Largest body accepted; also what the scan treats as a sane length, so a corrupt length
/// field cannot make it allocate gigabytes.
pub(crate) const MAX_BODY: usize = 64 << 20;
const FORMAT_VERSION: u8 = 1;
const NO_KEY: u32 = u32::MAX;

/// Encodes one record as a complete frame (header included), ready to append.
pub(crate) fn encode_frame(
    timestamp_ms: i64,
    key: Option<&str>,
    headers: &[Header],
    payload: &[u8],
) -> Result<Vec<u8>, Error> {
    let headers_len: usize = headers.iter().map(|h| 8 + h.name.len() + h.value.len()).sum();
    let body_len = 1 + 8 + 4 + key.map_or(0, str::len) + 4 + headers_len + payload.len();
    let (Ok(len32), Ok(count32)) = (u32::try_from(body_len), u32::try_from(headers.len())) else {
        return Err(too_large(body_len));
    };
    if body_len > MAX_BODY {
        return Err(too_large(body_len));
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER as usize + body_len);
    frame.extend_from_slice(&len32.to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.push(FORMAT_VERSION);
    frame.extend_from_slice(&timestamp_ms.to_le_bytes());
    match key {
        // Lengths below fit in u32: the whole body was checked against MAX_BODY.
        Some(key) => put_bytes(&mut frame, key.as_bytes()),
        None => frame.extend_from_slice(&NO_KEY.to_le_bytes()),
    }
    frame.extend_from_slice(&count32.to_le_bytes());
    for header in headers {
        put_bytes(&mut frame, header.name.as_bytes());
        put_bytes(&mut frame, &header.value);
    }
    frame.extend_from_slice(payload);
    let crc = crc32fast::hash(&frame[FRAME_HEADER as usize..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(frame)
}

fn too_large(body_len: usize) -> Error {
    Error::Config {
        key: "log.max_record_bytes",
        reason: format!("record of {body_len} bytes exceeds the embedded log's limit of {MAX_BODY}"),
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The decoded body of one frame; the payload stays where it is, at `payload_at`.
pub(crate) struct Body {
    pub timestamp_ms: i64,
    pub key: Option<String>,
    pub headers: Vec<Header>,
    pub payload_at: usize,
}

/// Decodes a body whose crc already matched; `None` means it is malformed.
pub(crate) fn decode_body(body: &[u8]) -> Option<Body> {
    let mut at = 0usize;
    if *body.first()? != FORMAT_VERSION {
        return None;
    }
    at += 1;
    let timestamp_ms = i64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?);
    at += 8;
    let key_len = read_u32(body, &mut at)?;
    let key = if key_len == NO_KEY { None } else { Some(read_string(body, &mut at, key_len)?) };
    let count = read_u32(body, &mut at)?;
    // Each header takes at least 8 bytes, which bounds a corrupt count before allocating.
    if count as usize > body.len().saturating_sub(at) / 8 {
        return None;
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name_len = read_u32(body, &mut at)?;
        let name = read_string(body, &mut at, name_len)?;
        let value_len = read_u32(body, &mut at)? as usize;
        let value = body.get(at..at.checked_add(value_len)?)?.to_vec();
        at += value_len;
        headers.push(Header { name, value });
    }
    Some(Body { timestamp_ms, key, headers, payload_at: at })
}

fn read_u32(buf: &[u8], at: &mut usize) -> Option<u32> {
    let value = u32::from_le_bytes(buf.get(*at..*at + 4)?.try_into().ok()?);
    *at += 4;
    Some(value)
}

fn read_string(buf: &[u8], at: &mut usize, len: u32) -> Option<String> {
    let end = at.checked_add(len as usize)?;
    let text = String::from_utf8(buf.get(*at..end)?.to_vec()).ok()?;
    *at = end;
    Some(text)
}

/// Byte position of every acknowledged frame (offset = index) and the end of the last one.
struct Index {
    positions: Vec<u64>,
    end: u64,
}

/// One topic-partition's file with its in-memory index.
///
/// Only the topic's writer thread appends, so "read the end, write there, publish" needs no
/// lock held across the write; readers only ever see frames that were fsync'd and published.
pub(crate) struct Partition {
    tp: TopicPartition,
    path: PathBuf,
    file: File,
    index: RwLock<Index>,
    /// The next offset to be written, so that caught-up readers can wait for appends.
    high_watermark: watch::Sender<i64>,
}

impl Partition {
    /// Opens (creating) the file, scans it and truncates a torn or corrupt tail.
    pub(crate) fn open(tp: TopicPartition, path: PathBuf) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let (positions, end) = scan(&file, &path).map_err(|e| Error::io(&path, e))?;
        let next = positions.len() as i64;
        Ok(Self {
            tp,
            path,
            file,
            index: RwLock::new(Index { positions, end }),
            high_watermark: watch::channel(next).0,
        })
    }

    pub(crate) fn tp(&self) -> &TopicPartition {
        &self.tp
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The next offset to be written.
    pub(crate) fn next_offset(&self) -> i64 {
        self.index.read().unwrap_or_else(PoisonError::into_inner).positions.len() as i64
    }

    /// Watches the next offset to be written.
    pub(crate) fn watch_end(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    /// Writes frames after the last published one (not yet durable nor visible); returns
    /// where they start. Only the writer thread calls this.
    pub(crate) fn write(&self, frames: &[u8]) -> io::Result<u64> {
        let start = self.index.read().unwrap_or_else(PoisonError::into_inner).end;
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

    /// Makes durable frames of the given lengths starting at `start` visible; returns the
    /// offset of the first.
    pub(crate) fn publish(&self, start: u64, frame_lens: &[u64]) -> i64 {
        let (first, next) = {
            let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
            let first = index.positions.len() as i64;
            let mut position = start;
            for len in frame_lens {
                index.positions.push(position);
                position += len;
            }
            index.end = position;
            (first, index.positions.len() as i64)
        };
        self.high_watermark.send_replace(next);
        first
    }

    /// Reads up to `max_records` records from `from` on, stopping early after `max_bytes`
    /// (but always returning at least one record when one exists).
    pub(crate) fn read_batch(&self, from: i64, max_records: usize, max_bytes: u64) -> Result<Vec<Record>, Error> {
        let Ok(from_idx) = usize::try_from(from) else { return Ok(Vec::new()) };
        let (positions, end) = {
            let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
            let Some(&start) = index.positions.get(from_idx) else { return Ok(Vec::new()) };
            let limit = index.positions.len().min(from_idx.saturating_add(max_records.max(1)));
            let mut to = from_idx + 1;
            while to < limit && index.positions[to] - start <= max_bytes {
                to += 1;
            }
            let end = index.positions.get(to).copied().unwrap_or(index.end);
            (index.positions[from_idx..to].to_vec(), end)
        };
        let base = positions.first().copied().unwrap_or(end);
        let mut buf = vec![0u8; (end - base) as usize];
        self.file.read_exact_at(&mut buf, base).map_err(|e| Error::io(&self.path, e))?;
        let buf = Bytes::from(buf);
        let mut records = Vec::with_capacity(positions.len());
        for (i, position) in positions.iter().enumerate() {
            let corrupt = || Error::CorruptLog { path: self.path.display().to_string(), position: *position };
            let rel = (position - base) as usize;
            let header = buf.get(rel..rel + FRAME_HEADER as usize).ok_or_else(corrupt)?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let body_start = rel + FRAME_HEADER as usize;
            let body = buf.get(body_start..body_start + len).ok_or_else(corrupt)?;
            if crc32fast::hash(body) != crc {
                return Err(corrupt());
            }
            let decoded = decode_body(body).ok_or_else(corrupt)?;
            records.push(Record {
                tp: self.tp.clone(),
                offset: from + i as i64,
                key: decoded.key,
                payload: buf.slice(body_start + decoded.payload_at..body_start + len),
                headers: decoded.headers,
                timestamp_ms: decoded.timestamp_ms,
            });
        }
        Ok(records)
    }
}

/// Walks the file frame by frame; at the first short frame, absurd length or crc mismatch it
/// cuts the file there. Writes reach the disk in no particular order before fsync, so
/// everything after the first bad frame belongs to an unacknowledged batch. Bodies are not
/// decoded here: a frame with a good crc is never cut, even if this version cannot read it.
fn scan(file: &File, path: &Path) -> io::Result<(Vec<u64>, u64)> {
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut positions = Vec::new();
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
        reader.read_exact(&mut header)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_BODY as u64 || file_len - position - FRAME_HEADER < len {
            break Some("short frame body");
        }
        body.resize(len as usize, 0);
        reader.read_exact(&mut body)?;
        if crc32fast::hash(&body) != crc {
            break Some("crc mismatch");
        }
        positions.push(position);
        position += FRAME_HEADER + len;
    };
    if let Some(reason) = problem {
        tracing::warn!(path = %path.display(), position, file_len, reason,
            "truncating torn or corrupt tail of the embedded log");
        file.set_len(position)?;
        file.sync_all()?;
    }
    Ok((positions, position))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips() {
        let headers = vec![Header { name: "h".into(), value: vec![1, 2] }, Header { name: "h".into(), value: vec![] }];
        let frame = encode_frame(42, Some("key"), &headers, b"payload").unwrap();
        let body = &frame[8..];
        assert_eq!(u32::from_le_bytes(frame[0..4].try_into().unwrap()) as usize, body.len());
        assert_eq!(u32::from_le_bytes(frame[4..8].try_into().unwrap()), crc32fast::hash(body));
        let decoded = decode_body(body).unwrap();
        assert_eq!(decoded.timestamp_ms, 42);
        assert_eq!(decoded.key.as_deref(), Some("key"));
        assert_eq!(decoded.headers, headers);
        assert_eq!(&body[decoded.payload_at..], b"payload");

        let frame = encode_frame(-1, None, &[], b"").unwrap();
        let decoded = decode_body(&frame[8..]).unwrap();
        assert_eq!((decoded.key, decoded.headers.len(), decoded.payload_at), (None, 0, frame.len() - 8));
    }

    #[test]
    fn oversized_record_is_rejected() {
        let payload = vec![0u8; MAX_BODY];
        assert!(matches!(encode_frame(0, None, &[], &payload), Err(Error::Config { .. })));
    }

    #[test]
    fn malformed_body_is_rejected() {
        let frame = encode_frame(1, Some("k"), &[], b"x").unwrap();
        let mut body = frame[8..].to_vec();
        body[9..13].copy_from_slice(&1000u32.to_le_bytes()); // key length past the end
        assert!(decode_body(&body).is_none());
        assert!(decode_body(&[9]).is_none());
    }
}
