//! Per-key FIFO delivery: an endpoint may name a key in each notification (a top-level
//! envelope field, or a JSON pointer into `data`); its deliveries with the same key go one
//! at a time, in the order their notifications were accepted. The store does the ordering
//! (only each key's head is leased, see `store::ordered`); this module only says what the
//! key of a notification is.

use serde_json::Value;
use sha2::{Digest, Sha256};

use conveyor_actors::error::FieldError;

/// Longest key value stored as it is; longer ones are stored as their SHA-256 (hex), so
/// the column and its index stay bounded.
pub const MAX_KEY_CHARS: usize = 256;
/// Longest JSON pointer an endpoint may configure.
const MAX_POINTER_CHARS: usize = 256;
/// Longest top-level field name an endpoint may configure.
const MAX_FIELD_CHARS: usize = 64;

/// Where an ordered endpoint finds a notification's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderingKey {
    /// A top-level envelope field, e.g. `subject`.
    Field(String),
    /// An RFC 6901 pointer into `data`, e.g. `/order/id`.
    DataPointer(String),
}

impl OrderingKey {
    /// Parses an endpoint's `ordering_key`; the error names what is wrong with it.
    pub fn parse(spec: &str) -> Result<OrderingKey, String> {
        if let Some(rest) = spec.strip_prefix('/') {
            if spec.chars().count() > MAX_POINTER_CHARS {
                return Err(format!("a JSON pointer into data of at most {MAX_POINTER_CHARS} characters"));
            }
            // RFC 6901: `~` only as `~0` or `~1`.
            let mut chars = rest.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                    return Err("a JSON pointer may use '~' only as '~0' or '~1'".into());
                }
            }
            return Ok(OrderingKey::DataPointer(spec.to_string()));
        }
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if spec.is_empty() || spec.len() > MAX_FIELD_CHARS || !spec.chars().all(valid_char) {
            return Err(format!(
                "a top-level field name ([A-Za-z0-9_.-], 1-{MAX_FIELD_CHARS} characters) or a JSON pointer \
                 into data starting with '/'"
            ));
        }
        Ok(OrderingKey::Field(spec.to_string()))
    }

    /// As configured (what the API shows and the store keeps).
    pub fn as_str(&self) -> &str {
        match self {
            OrderingKey::Field(s) | OrderingKey::DataPointer(s) => s,
        }
    }

    /// The key of one notification: a string as it is, a number or boolean as its JSON
    /// text; `None` when the value is missing, null, an object or an array (the delivery
    /// then goes unordered).
    pub fn extract(&self, envelope: &Value) -> Option<String> {
        let value = match self {
            OrderingKey::Field(name) => envelope.get(name)?,
            OrderingKey::DataPointer(pointer) => envelope.get("data")?.pointer(pointer)?,
        };
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null | Value::Object(_) | Value::Array(_) => None,
        }
    }

    /// The value stored on a delivery row: the key, or its SHA-256 when it is too long.
    pub fn stored(key: String) -> String {
        if key.chars().count() <= MAX_KEY_CHARS {
            return key;
        }
        let digest = Sha256::digest(key.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The API's check of an endpoint's `ordering_key`.
pub(crate) fn check(spec: Option<&str>) -> Result<(), FieldError> {
    match spec.map(OrderingKey::parse) {
        Some(Err(reason)) => Err(FieldError::new("ordering_key", reason)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn specs_are_a_field_name_or_a_pointer_into_data() {
        assert_eq!(OrderingKey::parse("subject"), Ok(OrderingKey::Field("subject".into())));
        assert_eq!(OrderingKey::parse("/order/id"), Ok(OrderingKey::DataPointer("/order/id".into())));
        assert_eq!(OrderingKey::parse("/a~1b~0"), Ok(OrderingKey::DataPointer("/a~1b~0".into())));
        for bad in ["", "a b", "x/y", "é", &"f".repeat(65), "/a~2", "/a~", &format!("/{}", "p".repeat(256))] {
            assert!(OrderingKey::parse(bad).is_err(), "{bad:?} is refused");
        }
        assert_eq!(check(Some("no good")).expect_err("refused").field, "ordering_key");
        assert!(check(None).is_ok());
    }

    #[test]
    fn keys_are_strings_numbers_and_booleans_only() {
        let envelope = json!({"subject": "cust_1", "n": 7, "data": {"order": {"id": 42, "ok": true,
            "s": "x", "nil": null, "obj": {}, "arr": [1]}, "a/b": "slash"}});
        let field = |s: &str| OrderingKey::Field(s.into()).extract(&envelope);
        let pointer = |s: &str| OrderingKey::DataPointer(s.into()).extract(&envelope);
        assert_eq!(field("subject").as_deref(), Some("cust_1"));
        assert_eq!(field("n").as_deref(), Some("7"));
        assert_eq!(field("missing"), None);
        assert_eq!(pointer("/order/id").as_deref(), Some("42"));
        assert_eq!(pointer("/order/ok").as_deref(), Some("true"));
        assert_eq!(pointer("/order/s").as_deref(), Some("x"));
        assert_eq!(pointer("/a~1b").as_deref(), Some("slash"));
        for none in ["/order/nil", "/order/obj", "/order/arr", "/order/missing", "/order"] {
            assert_eq!(pointer(none), None, "{none}");
        }
    }

    #[test]
    fn long_keys_are_stored_as_their_hash() {
        assert_eq!(OrderingKey::stored("short".into()), "short");
        let long = "k".repeat(MAX_KEY_CHARS + 1);
        let stored = OrderingKey::stored(long.clone());
        assert_eq!(stored.len(), 64);
        assert_eq!(stored, OrderingKey::stored(long), "the same key hashes the same");
    }
}
