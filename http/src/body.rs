//! Reading request bodies: bounded, then parsed so that malformed JSON is a 400 and
//! well-formed JSON of the wrong shape is a 422 that names the field.

use axum::RequestExt;
use axum::extract::Request;
use bytes::Bytes;
use http_body_util::LengthLimitError;

use crate::error::{ApiError, FieldError};
use crate::extract::BodyLimit;

/// Reads the body, cut off past `http.body_limit_bytes` (a 413) as the limit layer
/// (`DefaultBodyLimit`) says. Handlers read it once the caller is authenticated, so a
/// stranger's large body is a 401, not a 413.
pub async fn read(req: Request) -> Result<Bytes, ApiError> {
    let limit = req.extensions().get::<BodyLimit>().map_or(usize::MAX, |l| l.0);
    match axum::body::to_bytes(req.with_limited_body().into_body(), usize::MAX).await {
        Ok(bytes) => Ok(bytes),
        Err(err) => {
            let err = err.into_inner();
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
            while let Some(e) = cause {
                if e.is::<LengthLimitError>() {
                    return Err(ApiError::BodyTooLarge { limit });
                }
                cause = e.source();
            }
            Err(ApiError::Internal(err))
        }
    }
}

/// Parses JSON (any shape); syntax errors are a 400.
pub fn json(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(bytes).map_err(ApiError::MalformedJson)
}

/// Reads a JSON object into `T`: malformed JSON is a 400; a missing or mistyped field a
/// 422 naming it.
pub async fn object<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, ApiError> {
    let value = json(&read(req).await?)?;
    if !value.is_object() {
        return Err(ApiError::Validation(vec![FieldError::new("body", "must be a JSON object")]));
    }
    from_object(value)
}

/// Like [`object`], for bodies that may be left out: an empty body or `null` is
/// `T::default()`; anything else must be an object.
pub async fn optional_object<T: serde::de::DeserializeOwned + Default>(req: Request) -> Result<T, ApiError> {
    parse_optional(&read(req).await?)
}

fn parse_optional<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    match json(bytes)? {
        serde_json::Value::Null => Ok(T::default()),
        value @ serde_json::Value::Object(_) => from_object(value),
        _ => Err(ApiError::Validation(vec![FieldError::new("body", "must be a JSON object or empty")])),
    }
}

fn from_object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| {
        // serde names the field only when it is missing or unknown ("missing field `email`").
        let text = e.to_string();
        let named = text.starts_with("missing field") || text.starts_with("unknown field");
        let field = if named { text.split('`').nth(1).unwrap_or("body").to_string() } else { "body".to_string() };
        ApiError::Validation(vec![FieldError::new(field, text)])
    })
}

/// A device event as submitted: `{"device_id": "...", "payload": {...}}`.
#[derive(utoipa::ToSchema)]
#[schema(example = json!({"device_id": "device-123", "payload": {"status": "online", "temp_c": 37.2}}))]
pub struct EventInput {
    /// 1 to 128 printable characters; the partition key.
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    pub device_id: String,
    /// Any JSON object; becomes the device's resource.
    pub payload: serde_json::Map<String, serde_json::Value>,
}

const DEVICE_ID_MAX: usize = 128;

/// Validates one event object; `prefix` names its place (`""` or `events[3].`).
pub fn event(value: serde_json::Value, prefix: &str) -> Result<EventInput, Vec<FieldError>> {
    let serde_json::Value::Object(mut obj) = value else {
        let field = if prefix.is_empty() { "body".to_string() } else { prefix.trim_end_matches('.').to_string() };
        return Err(vec![FieldError::new(field, "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    let device_id = match obj.remove("device_id") {
        Some(serde_json::Value::String(s)) => {
            let n = s.chars().count();
            if n == 0 || n > DEVICE_ID_MAX {
                errors.push(FieldError::new(format!("{prefix}device_id"), "must be 1 to 128 characters"));
            } else if s.chars().any(char::is_control) {
                errors.push(FieldError::new(format!("{prefix}device_id"), "must contain printable characters only"));
            }
            s
        }
        Some(_) => {
            errors.push(FieldError::new(format!("{prefix}device_id"), "must be a string"));
            String::new()
        }
        None => {
            errors.push(FieldError::new(format!("{prefix}device_id"), "is required"));
            String::new()
        }
    };
    let payload = match obj.remove("payload") {
        Some(serde_json::Value::Object(p)) => p,
        Some(_) => {
            errors.push(FieldError::new(format!("{prefix}payload"), "must be a JSON object"));
            serde_json::Map::new()
        }
        None => {
            errors.push(FieldError::new(format!("{prefix}payload"), "is required"));
            serde_json::Map::new()
        }
    };
    if errors.is_empty() { Ok(EventInput { device_id, payload }) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: serde_json::Value) -> Vec<String> {
        event(v, "").err().unwrap_or_default().into_iter().map(|f| f.field.into_owned()).collect()
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Options {
        #[serde(default)]
        keep: u32,
    }

    #[test]
    fn optional_bodies_default_when_empty_or_null_and_otherwise_must_be_objects() {
        assert_eq!(parse_optional::<Options>(b"").ok(), Some(Options::default()));
        assert_eq!(parse_optional::<Options>(b" \n").ok(), Some(Options::default()));
        assert_eq!(parse_optional::<Options>(b"null").ok(), Some(Options::default()));
        assert_eq!(parse_optional::<Options>(br#"{"keep": 3}"#).ok(), Some(Options { keep: 3 }));
        let field = |bytes: &[u8]| match parse_optional::<Options>(bytes) {
            Err(ApiError::Validation(errors)) => errors[0].field.clone(),
            other => panic!("expected a validation error, got {other:?}"),
        };
        assert_eq!(field(b"[1]"), "body");
        assert_eq!(field(br#"{"other": 1}"#), "other");
        assert!(matches!(parse_optional::<Options>(b"{"), Err(ApiError::MalformedJson(_))));
    }

    #[test]
    fn valid_event_passes() {
        let e = event(json!({"device_id": "device-123", "payload": {"t": 1}}), "");
        assert!(e.is_ok_and(|e| e.device_id == "device-123" && e.payload.len() == 1));
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(fields(json!({"payload": {}})), vec!["device_id"]);
        assert_eq!(fields(json!({"device_id": "", "payload": {}})), vec!["device_id"]);
        assert_eq!(fields(json!({"device_id": "x".repeat(129), "payload": {}})), vec!["device_id"]);
        assert_eq!(fields(json!({"device_id": "a\u{7}b", "payload": {}})), vec!["device_id"]);
        assert_eq!(fields(json!({"device_id": 5, "payload": []})), vec!["device_id", "payload"]);
        assert_eq!(fields(json!({"device_id": "d"})), vec!["payload"]);
        assert_eq!(fields(json!([1, 2])), vec!["body"]);
        let nested = event(json!("x"), "events[3].").err().unwrap_or_default();
        assert_eq!(nested[0].field, "events[3]");
    }

    #[test]
    fn device_id_length_counts_characters_not_bytes() {
        assert!(event(json!({"device_id": "é".repeat(128), "payload": {}}), "").is_ok());
    }

    #[test]
    fn malformed_json_is_a_400_kind() {
        assert!(matches!(json(b"{not json"), Err(ApiError::MalformedJson(_))));
    }
}
