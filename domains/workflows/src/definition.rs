//! What a workflow is: a trigger and a list of steps, as the API takes them, and the rules
//! on them (each problem named by its field, e.g. `steps[2].url`).

use crate::states::StepKind;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::template;
use conveyor_actors::error::FieldError;
use conveyor_webhooks::filter::validate_patterns;

/// `POST /workflows` and `PUT /workflows/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "welcome", "description": "greets new subscriptions", "is_active": true,
    "trigger": {"type": "event", "event_type": "subscription.*", "condition": "input.data.status == 'active'"},
    "steps": [
        {"type": "http", "name": "lookup", "method": "GET", "url": "https://api.example.com/users/{{ input.data.user.id }}"},
        {"type": "condition", "name": "has_email", "if": "steps.lookup.body.email", "else": "stop"},
        {"type": "delay", "name": "wait", "seconds": 5},
        {"type": "http", "name": "notify", "method": "POST", "url": "https://hooks.example.com/welcome",
         "headers": {"content-type": "application/json"}, "body": "{\"email\": {{ steps.lookup.body.email | tojson }}}"}
    ]}))]
pub struct WorkflowSpec {
    /// Unique per user.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: String,
    /// Inactive workflows keep their definition and runs but are not triggered.
    #[serde(default = "yes")]
    pub is_active: bool,
    pub trigger: Trigger,
    #[schema(min_items = 1, max_items = 50)]
    pub steps: Vec<Step>,
}

fn yes() -> bool {
    true
}

/// What starts a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    /// A notification or domain event whose type matches (`payment.succeeded`, `subscription.*`),
    /// and, if given, whose envelope (`input`) makes the condition true.
    Event {
        #[schema(max_length = 256, pattern = r"^(\*|[A-Za-z0-9_:/-][A-Za-z0-9._:/-]*(\.\*)?)$")]
        event_type: String,
        /// A template expression over `input` (the envelope), e.g. `input.project == 'dev'`.
        #[serde(default)]
        #[schema(max_length = 2000)]
        condition: Option<String>,
    },
    /// A cron expression evaluated in `timezone`, or a fixed interval.
    Schedule {
        /// Five fields (minute hour day-of-month month day-of-week), each `*`, `*/step` or a
        /// list of numbers, e.g. `0 9 * * 1,2,3,4,5`; or `@every 30s` (`s`, `m`, `h`).
        #[schema(
            max_length = 200,
            pattern = r"^(@every [1-9][0-9]{0,6}[smh]|(\*(/([1-9]|[1-5][0-9]))?|[1-5]?[0-9](,[1-5]?[0-9])*) (\*(/([1-9]|1[0-9]|2[0-3]))?|(1?[0-9]|2[0-3])(,(1?[0-9]|2[0-3]))*) (\*(/([1-9]|[12][0-9]|3[01]))?|([1-9]|[12][0-9]|3[01])(,([1-9]|[12][0-9]|3[01]))*) (\*(/([1-9]|1[0-2]))?|([1-9]|1[0-2])(,([1-9]|1[0-2]))*) (\*(/[1-7])?|[0-7](,[0-7])*))$"
        )]
        cron: String,
        /// An IANA name such as `Europe/Lisbon`; default UTC.
        #[serde(default = "utc")]
        #[schema(value_type = TimeZoneName)]
        timezone: String,
    },
    /// Only `POST /workflows/{id}/runs`.
    Manual,
}

fn utc() -> String {
    "UTC".into()
}

/// One step. Templates see `input` (the trigger's input), `steps.<name>` (earlier steps'
/// outputs: `status`, `body`) and `run` (`id`, `workflow_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    /// An HTTP request; its URL, header values and body are templates.
    Http {
        #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")]
        name: String,
        #[serde(default = "post")]
        #[schema(pattern = "^(GET|POST|PUT|PATCH|DELETE)$")]
        method: String,
        #[schema(min_length = 1, max_length = 2048)]
        url: String,
        #[serde(default)]
        #[schema(value_type = HeaderTemplates)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        #[schema(max_length = 65536)]
        body: Option<String>,
        /// At most `workflows.step_timeout_ms`.
        #[serde(default, deserialize_with = "conveyor_actors::json::optional_u64")]
        #[schema(minimum = 1, maximum = 3600000)]
        timeout_ms: Option<u64>,
    },
    /// Waits, durably: a restart continues the wait rather than starting it again.
    Delay {
        #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")]
        name: String,
        #[serde(deserialize_with = "conveyor_actors::json::integer_u64")]
        #[schema(minimum = 0, maximum = 2592000)]
        seconds: u64,
    },
    /// When `if` is false: `stop` ends the run (it succeeds, the rest skipped) or `skip` skips
    /// the next step.
    Condition {
        #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")]
        name: String,
        #[serde(rename = "if")]
        #[schema(min_length = 1, max_length = 2000)]
        predicate: String,
        #[serde(rename = "else", default)]
        otherwise: Otherwise,
    },
}

/// An IANA time zone name (documentation only: the list chrono-tz knows).
pub struct TimeZoneName;

impl utoipa::PartialSchema for TimeZoneName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
        ObjectBuilder::new().schema_type(Type::String).enum_values(Some(names)).default(Some("UTC".into())).into()
    }
}

impl ToSchema for TimeZoneName {}

/// Header names (HTTP tokens) to value templates (documentation only).
pub struct HeaderTemplates;

impl utoipa::PartialSchema for HeaderTemplates {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let value = ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(2000))
            .pattern(Some(r"^[^\u0000-\u001F\u007F]*$"));
        let name = ObjectBuilder::new().schema_type(Type::String).pattern(Some(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$"));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(value))
            .property_names(Some(name))
            .max_properties(Some(50))
            .into()
    }
}

impl ToSchema for HeaderTemplates {}

fn post() -> String {
    "POST".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Otherwise {
    #[default]
    Stop,
    Skip,
}

impl Step {
    pub fn name(&self) -> &str {
        match self {
            Step::Http { name, .. } | Step::Delay { name, .. } | Step::Condition { name, .. } => name,
        }
    }

    pub fn kind(&self) -> StepKind {
        match self {
            Step::Http { .. } => StepKind::Http,
            Step::Delay { .. } => StepKind::Delay,
            Step::Condition { .. } => StepKind::Condition,
        }
    }
}

fn issue(field: String, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

/// The message of a step name used twice (the API answers 409 when that is all that is wrong:
/// JSON Schema cannot say "unique by name").
pub const DUPLICATE: &str = "is used by an earlier step";

/// Every problem with a spec, each named by its field (the API answers 422).
pub fn validate(spec: &WorkflowSpec, max_steps: usize) -> Vec<FieldError> {
    check(spec, max_steps).0
}

/// Templates and conditions that do not compile. The document is still accepted (no schema
/// can describe template syntax, and the API accepts whatever its schema allows); these are
/// shown as `warnings`, and a run fails at that step with the same message.
pub fn template_warnings(spec: &WorkflowSpec) -> Vec<FieldError> {
    check(spec, usize::MAX).1
}

fn check(spec: &WorkflowSpec, max_steps: usize) -> (Vec<FieldError>, Vec<FieldError>) {
    let mut warnings = Vec::new();
    let mut issues = Vec::new();
    if spec.name.trim().is_empty() || spec.name.chars().count() > 200 || spec.name.chars().any(char::is_control) {
        issues.push(FieldError::new("name", "1-200 characters, no control characters"));
    }
    if spec.description.chars().count() > 2000 {
        issues.push(FieldError::new("description", "at most 2000 characters"));
    }
    match &spec.trigger {
        Trigger::Event { event_type, condition } => {
            if let Err(mut e) = validate_patterns("trigger.event_type", std::slice::from_ref(event_type)) {
                e.field = "trigger.event_type".into();
                issues.push(e);
            }
            if let Some(c) = condition {
                if c.chars().count() > 2000 {
                    issues.push(FieldError::new("trigger.condition", "at most 2000 characters"));
                } else if let Err(e) = template::check_expression(c) {
                    warnings.push(FieldError::new("trigger.condition", e));
                }
            }
        }
        Trigger::Schedule { cron, timezone } => {
            if cron.chars().count() > 200 || timezone.chars().count() > 64 {
                issues.push(FieldError::new("trigger.cron", "cron at most 200 characters, timezone at most 64"));
            } else if let Err(e) = super::schedule::Schedule::parse(cron, timezone) {
                issues.push(FieldError::new(e.0, e.1));
            }
        }
        Trigger::Manual => {}
    }
    if spec.steps.is_empty() || spec.steps.len() > max_steps {
        issues.push(FieldError::new("steps", format!("1-{max_steps} steps")));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let at = |f: &str| format!("steps[{i}].{f}");
        let name = step.name();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            issues.push(issue(at("name"), "a letter or _ then letters, digits, _ (at most 64)"));
        } else if !seen.insert(name.to_string()) {
            issues.push(issue(at("name"), format!("{name:?} {DUPLICATE}")));
        }
        match step {
            Step::Http { method, url, headers, body, timeout_ms, .. } => {
                if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
                    issues.push(issue(at("method"), "GET, POST, PUT, PATCH or DELETE"));
                }
                if url.is_empty() || url.chars().count() > 2048 {
                    issues.push(issue(at("url"), "1-2048 characters"));
                } else if let Err(e) = template::check_template(url) {
                    warnings.push(issue(at("url"), e));
                }
                if headers.len() > 50 {
                    issues.push(issue(at("headers"), "at most 50 headers"));
                }
                for (k, v) in headers {
                    if !http_header_name(k) {
                        issues.push(issue(at("headers"), format!("{k:?} is not a header name")));
                    } else if v.chars().count() > 2000 || v.chars().any(|c| c.is_ascii_control()) {
                        issues
                            .push(issue(at("headers"), format!("{k}: at most 2000 characters, no control characters")));
                    } else if let Err(e) = template::check_template(v) {
                        warnings.push(issue(at("headers"), format!("{k}: {e}")));
                    }
                }
                if let Some(body) = body {
                    if body.chars().count() > 65_536 {
                        issues.push(issue(at("body"), "at most 65536 characters"));
                    } else if let Err(e) = template::check_template(body) {
                        warnings.push(issue(at("body"), e));
                    }
                }
                if timeout_ms.is_some_and(|t| t == 0 || t > 3_600_000) {
                    issues.push(issue(at("timeout_ms"), "1-3600000"));
                }
            }
            Step::Delay { seconds, .. } => {
                if *seconds > 2_592_000 {
                    issues.push(issue(at("seconds"), "at most 30 days"));
                }
            }
            Step::Condition { predicate, .. } => {
                if predicate.is_empty() || predicate.chars().count() > 2000 {
                    issues.push(issue(at("if"), "1-2000 characters"));
                } else if let Err(e) = template::check_expression(predicate) {
                    warnings.push(issue(at("if"), e));
                }
            }
        }
    }
    (issues, warnings)
}

fn http_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(steps: serde_json::Value, trigger: serde_json::Value) -> WorkflowSpec {
        serde_json::from_value(serde_json::json!({"name": "w", "trigger": trigger, "steps": steps})).expect("spec")
    }

    #[test]
    fn a_good_spec_passes_and_problems_are_named_by_field() {
        let ok = spec(
            serde_json::json!([{"type": "http", "name": "a", "url": "https://x.example/{{ input.id }}"},
                               {"type": "delay", "name": "b", "seconds": 1},
                               {"type": "condition", "name": "c", "if": "steps.a.status == 200"}]),
            serde_json::json!({"type": "event", "event_type": "payment.*"}),
        );
        assert!(validate(&ok, 50).is_empty(), "{:?}", validate(&ok, 50));
        let bad = spec(
            serde_json::json!([{"type": "http", "name": "a", "method": "FETCH", "url": "{{ unclosed"},
                               {"type": "condition", "name": "a", "if": "1 +"}]),
            serde_json::json!({"type": "schedule", "cron": "61 * * * *"}),
        );
        let fields: Vec<_> = validate(&bad, 50).into_iter().map(|i| i.field).collect();
        assert_eq!(fields, ["trigger.cron", "steps[0].method", "steps[1].name"]);
        let warned: Vec<_> = template_warnings(&bad).into_iter().map(|i| i.field).collect();
        assert_eq!(warned, ["steps[0].url", "steps[1].if"]);
    }
}
