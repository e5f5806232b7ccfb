//! The notification envelope (seed 002's CloudEvents-like JSON, `event-spec.json`).

use serde_json::Value;

use conveyor_actors::error::FieldError;

/// The fields fan-out and dedup need; the envelope itself travels untouched.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: String,
    pub event_type: String,
    pub project: Option<String>,
}

const MAX_ID_LEN: usize = 256;
const MAX_TYPE_LEN: usize = 256;

/// Checks the envelope's shape; every problem is named by its field.
pub fn validate(value: &Value) -> Result<Envelope, Vec<FieldError>> {
    let Some(obj) = value.as_object() else {
        return Err(vec![FieldError::new("body", "must be a JSON object (the notification envelope)")]);
    };
    let mut issues = Vec::new();
    let mut text = |field: &'static str, max: usize| -> Option<String> {
        match obj.get(field) {
            None | Some(Value::Null) => {
                issues.push(FieldError::new(field, "is required"));
                None
            }
            Some(Value::String(s)) if s.is_empty() => {
                issues.push(FieldError::new(field, "must not be empty"));
                None
            }
            Some(Value::String(s)) if s.chars().count() > max => {
                issues.push(FieldError::new(field, format!("must be at most {max} characters")));
                None
            }
            Some(Value::String(s)) if s.chars().any(char::is_control) => {
                issues.push(FieldError::new(field, "must not contain control characters"));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                issues.push(FieldError::new(field, "must be a string"));
                None
            }
        }
    };
    let id = text("id", MAX_ID_LEN);
    let event_type = text("type", MAX_TYPE_LEN);
    text("source", 2048);
    match obj.get("specversion") {
        Some(Value::String(v)) if v == "1.0" => {}
        Some(Value::String(_)) => issues.push(FieldError::new("specversion", "must be \"1.0\"")),
        None | Some(Value::Null) => issues.push(FieldError::new("specversion", "is required")),
        Some(_) => issues.push(FieldError::new("specversion", "must be a string")),
    }
    match obj.get("data") {
        Some(Value::Object(_)) => {}
        None | Some(Value::Null) => issues.push(FieldError::new("data", "is required")),
        Some(_) => issues.push(FieldError::new("data", "must be an object")),
    }
    if let Some(object) = obj.get("object")
        && !(object.is_null() || object == "event")
    {
        issues.push(FieldError::new("object", "must be \"event\" when present"));
    }
    let project = match obj.get("project") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if p.chars().count() <= 256 => Some(p.clone()),
        Some(_) => {
            issues.push(FieldError::new("project", "must be a string of at most 256 characters"));
            None
        }
    };
    for field in ["time", "datacontenttype", "version"] {
        if let Some(v) = obj.get(field)
            && !(v.is_string() || v.is_null())
        {
            issues.push(FieldError::new(field, "must be a string"));
        }
    }
    if let Some(Value::String(time)) = obj.get("time")
        && chrono::DateTime::parse_from_rfc3339(time).is_err()
    {
        issues.push(FieldError::new("time", "must be an RFC 3339 timestamp"));
    }
    match (id, event_type) {
        (Some(id), Some(event_type)) if issues.is_empty() => Ok(Envelope { id, event_type, project }),
        _ => Err(issues),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        serde_json::json!({
            "object": "event", "id": "evt_1", "type": "subscription.updated", "source": "https://api.service.com",
            "specversion": "1.0", "project": "dev", "time": "2023-03-24T15:50:41Z", "data": {"object": "subscription"}
        })
    }

    #[test]
    fn a_sample_envelope_is_valid() {
        let e = validate(&sample()).expect("valid");
        assert_eq!(
            e,
            Envelope { id: "evt_1".into(), event_type: "subscription.updated".into(), project: Some("dev".into()) }
        );
    }

    #[test]
    fn every_problem_is_named() {
        let mut v = sample();
        v["id"] = Value::from(7);
        v["data"] = Value::from("x");
        v["specversion"] = Value::from("0.3");
        v["time"] = Value::from("yesterday");
        v.as_object_mut().expect("object").remove("type");
        let fields: Vec<_> = validate(&v).expect_err("invalid").into_iter().map(|i| i.field).collect();
        assert_eq!(fields, ["id", "type", "specversion", "data", "time"]);
        assert_eq!(validate(&Value::from(3)).expect_err("invalid")[0].field, "body");
    }
}
