//! The frame format of the embedded log's segment files.
//!
//! A frame is `[u32 LE body length][u32 LE crc32 of body][body]`; the body is
//! `[u8 version][i64 timestamp_ms][u32 key length or u32::MAX for none][key]`
//! `[u32 header count]([u32 name length][name][u32 value length][value])*[payload]`,
//! the payload taking the rest so that it can be sliced out of the read buffer without a copy.

use crate::error::Error;
use crate::log::Header;

pub(crate) const FRAME_HEADER: u64 = 8;
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

/// The timestamp of a body without decoding the rest (for retention by age).
pub(crate) fn body_timestamp(body: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(body.get(1..9)?.try_into().ok()?))
}

/// Splits a frame header into body length and crc.
pub(crate) fn frame_header(header: &[u8]) -> Option<(u64, u32)> {
    let len = u32::from_le_bytes(header.get(0..4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(header.get(4..8)?.try_into().ok()?);
    Some((u64::from(len), crc))
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
