//! Endpoint management: what the API's callers send and see, and the rules on it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::filter::{Filter, validate_patterns};
use super::ordering::{self, OrderingKey};
use super::signing;
use super::target::TargetPolicy;
use crate::store::endpoint;
use conveyor_actors::error::{Error, FieldError};

/// Who is asking: endpoints belong to their creator; admins see and manage all.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub admin: bool,
}

impl Caller {
    pub fn may_see(&self, row: &endpoint::Model) -> bool {
        self.admin || row.owner == self.user_id
    }
}

/// An exact event type or a `prefix.*` pattern (documentation only: the API reads strings).
pub struct TypePattern;

impl utoipa::PartialSchema for TypePattern {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^(\*|[A-Za-z0-9_:/-][A-Za-z0-9._:/-]*(\.\*)?)$"))
            .max_length(Some(256))
            .into()
    }
}

impl ToSchema for TypePattern {}

/// A project name (documentation only).
pub struct ProjectName;

impl utoipa::PartialSchema for ProjectName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(256))
            .into()
    }
}

impl ToSchema for ProjectName {}

/// `POST /webhooks/endpoints`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://hooks.example.com/conveyor", "description": "billing", "event_types": ["subscription.*", "payment.succeeded"], "projects": ["dev"], "rate_limit_per_sec": 50}))]
pub struct NewEndpoint {
    /// http(s) with a host name; a literal IP address is accepted too where the
    /// configuration allows it. Names resolving to loopback, private, link-local or metadata
    /// addresses are refused when the request connects, unless the configuration allows them.
    #[schema(
        max_length = 2048,
        pattern = r#"^https?://([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*)?(\?[A-Za-z0-9._~%!$&'()*+,;=:@/?-]*)?$"#
    )]
    pub url: String,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub description: String,
    /// Exact types or `prefix.*` patterns; empty or absent = every type.
    #[serde(default)]
    #[schema(value_type = Vec<TypePattern>, max_items = 100)]
    pub event_types: Vec<String>,
    /// Projects to receive; empty or absent = every project.
    #[serde(default)]
    #[schema(value_type = Vec<ProjectName>, max_items = 100)]
    pub projects: Vec<String>,
    /// Requests per second this endpoint accepts; absent = `webhooks.default_rate_limit_per_sec`.
    #[serde(default, deserialize_with = "conveyor_actors::json::optional_u32")]
    #[schema(minimum = 1, maximum = 100000)]
    pub rate_limit_per_sec: Option<u32>,
    /// Bring your own `whsec_…` secret (24-48 bytes in base64); one is generated otherwise.
    #[serde(default)]
    #[schema(pattern = r"^whsec_(?:[A-Za-z0-9+/]{4}){8,16}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")]
    pub secret: Option<String>,
    /// Create it disabled.
    #[serde(default)]
    pub disabled: bool,
    /// Per-key FIFO: deliveries whose notifications share this key reach the endpoint one
    /// at a time, in the order they were accepted; different keys go concurrently. A
    /// top-level envelope field (`subject`) or a JSON pointer into `data` (`/order/id`).
    /// A notification without the key is delivered unordered. Absent = unordered.
    #[serde(default)]
    #[schema(value_type = Option<OrderingKeySpec>)]
    pub ordering_key: Option<String>,
}

/// An endpoint's `ordering_key` (documentation only: the API reads a string).
pub struct OrderingKeySpec;

impl utoipa::PartialSchema for OrderingKeySpec {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^([A-Za-z0-9_.-]{1,64}|/.{0,255})$"))
            .max_length(Some(256))
            .examples([serde_json::json!("subject"), serde_json::json!("/order/id")])
            .into()
    }
}

impl ToSchema for OrderingKeySpec {}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `PATCH /webhooks/endpoints/{id}`: absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    #[schema(
        max_length = 2048,
        pattern = r#"^https?://([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*)?(\?[A-Za-z0-9._~%!$&'()*+,;=:@/?-]*)?$"#
    )]
    pub url: Option<String>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    #[schema(value_type = Option<Vec<TypePattern>>, max_items = 100)]
    pub event_types: Option<Vec<String>>,
    #[schema(value_type = Option<Vec<ProjectName>>, max_items = 100)]
    pub projects: Option<Vec<String>>,
    /// 0 removes the endpoint's own limit.
    #[serde(default, deserialize_with = "conveyor_actors::json::optional_u32")]
    #[schema(minimum = 0, maximum = 100000)]
    pub rate_limit_per_sec: Option<u32>,
    /// A new ordering key; `null` turns ordering off (deliveries already made keep theirs).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<OrderingKeySpec>, nullable)]
    pub ordering_key: Option<Option<String>>,
}

/// An endpoint as the API shows it (its secret only through the secret route).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EndpointView {
    pub id: String,
    pub owner: String,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub projects: Vec<String>,
    pub rate_limit_per_sec: Option<u32>,
    pub disabled: bool,
    /// `manual`, `gone` (it answered 410) or `failing` (it failed for too long).
    pub disabled_reason: Option<crate::states::DisabledReason>,
    /// When the current run of failures began.
    pub failing_since: Option<DateTime<Utc>>,
    /// Per-key FIFO delivery by this key; `null` = unordered.
    #[schema(value_type = Option<OrderingKeySpec>)]
    pub ordering_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `POST /webhooks/endpoints`' answer: the endpoint and, this once, its secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    pub endpoint: EndpointView,
    pub secret: String,
}

/// The signing secrets: `secret` signs; `previous_secret` also signs until its time is up.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SecretView {
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_valid_until: Option<DateTime<Utc>>,
}

/// `POST /webhooks/endpoints/{id}/secret/rotate`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// Seconds the old secret keeps signing; default `webhooks.secret_rotation_overlap_secs`.
    #[serde(default, deserialize_with = "conveyor_actors::json::optional_u64")]
    #[schema(minimum = 0, maximum = 2592000)]
    pub overlap_secs: Option<u64>,
    /// Bring your own new secret (24-48 bytes in base64); one is generated otherwise.
    #[serde(default)]
    #[schema(pattern = r"^whsec_(?:[A-Za-z0-9+/]{4}){8,16}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")]
    pub secret: Option<String>,
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn parse_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

pub(crate) fn filter_of(row: &endpoint::Model) -> Filter {
    Filter { event_types: parse_list(&row.event_types), projects: parse_list(&row.projects), admin: row.owner_is_admin }
}

/// Where an ordered endpoint finds each notification's key; `None` when unordered.
pub(crate) fn ordering_of(row: &endpoint::Model) -> Option<OrderingKey> {
    let spec = row.ordering_key.as_deref()?;
    OrderingKey::parse(spec)
        .inspect_err(|reason| tracing::warn!(endpoint = %row.id, reason = %reason, "a stored ordering_key does not parse; delivering unordered"))
        .ok()
}

pub(crate) fn view(row: &endpoint::Model) -> EndpointView {
    EndpointView {
        id: row.id.clone(),
        owner: row.owner.clone(),
        url: row.url.clone(),
        description: row.description.clone(),
        event_types: parse_list(&row.event_types),
        projects: parse_list(&row.projects),
        rate_limit_per_sec: row.rate_limit_per_sec.map(|r| r.max(0) as u32),
        disabled: row.disabled,
        disabled_reason: row.disabled_reason,
        failing_since: row.failing_since,
        ordering_key: row.ordering_key.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

/// The secrets that sign at `now`: the current one, and the previous one in its overlap.
pub(crate) fn signing_secrets(row: &endpoint::Model, now: DateTime<Utc>) -> Vec<&str> {
    let mut secrets = vec![row.secret.as_str()];
    if let (Some(previous), Some(until)) = (&row.previous_secret, row.previous_secret_until)
        && until > now
    {
        secrets.push(previous);
    }
    secrets
}

fn check_projects(projects: &[String]) -> Result<(), FieldError> {
    if projects.len() > 100 || projects.iter().any(|p| p.is_empty() || p.chars().count() > 256) {
        return Err(FieldError::new("projects", "at most 100 names of 1-256 characters"));
    }
    Ok(())
}

fn check_rate(rate: Option<u32>, allow_zero: bool) -> Result<(), FieldError> {
    match rate {
        Some(0) if allow_zero => Ok(()),
        Some(r) if !(1..=100_000).contains(&r) => Err(FieldError::new("rate_limit_per_sec", "must be 1-100000")),
        _ => Ok(()),
    }
}

fn check_secret(secret: &Option<String>) -> Result<(), FieldError> {
    match secret {
        Some(s) if !signing::valid_secret(s) => {
            Err(FieldError::new("secret", "must be whsec_ followed by 24-64 bytes in base64"))
        }
        _ => Ok(()),
    }
}

fn collect(checks: impl IntoIterator<Item = Result<(), FieldError>>) -> Result<(), Error> {
    let fields: Vec<FieldError> = checks.into_iter().filter_map(Result::err).collect();
    if fields.is_empty() { Ok(()) } else { Err(Error::InvalidInput { fields }) }
}

fn check_url(policy: &TargetPolicy, url: &str) -> Result<(), FieldError> {
    policy.check_url(url).map(|_| ()).map_err(|reason| FieldError::new("url", reason))
}

fn check_description(description: &str) -> Result<(), FieldError> {
    if description.chars().count() > 500 {
        Err(FieldError::new("description", "at most 500 characters"))
    } else {
        Ok(())
    }
}

/// A new endpoint row, or every field problem at once.
pub(crate) fn new_row(caller: &Caller, spec: NewEndpoint, policy: &TargetPolicy) -> Result<endpoint::Model, Error> {
    collect([
        check_url(policy, &spec.url),
        check_description(&spec.description),
        validate_patterns("event_types", &spec.event_types),
        check_projects(&spec.projects),
        check_rate(spec.rate_limit_per_sec, false),
        check_secret(&spec.secret),
        ordering::check(spec.ordering_key.as_deref()),
    ])?;
    let now = Utc::now();
    Ok(endpoint::Model {
        id: format!("ep_{}", uuid::Uuid::now_v7().simple()),
        owner: caller.user_id.clone(),
        owner_is_admin: caller.admin,
        url: spec.url,
        description: spec.description,
        event_types: json_list(&spec.event_types),
        projects: json_list(&spec.projects),
        rate_limit_per_sec: spec.rate_limit_per_sec.map(|r| r as i32),
        secret: spec.secret.unwrap_or_else(signing::generate_secret),
        previous_secret: None,
        previous_secret_until: None,
        disabled: spec.disabled,
        disabled_reason: spec.disabled.then_some(crate::states::DisabledReason::Manual),
        failing_since: None,
        ordering_key: spec.ordering_key,
        created_at: now,
        updated_at: now,
    })
}

/// Applies a patch to a row, or names every field problem.
pub(crate) fn patch_row(row: &mut endpoint::Model, patch: EndpointPatch, policy: &TargetPolicy) -> Result<(), Error> {
    collect([
        patch.url.as_deref().map_or(Ok(()), |u| check_url(policy, u)),
        patch.description.as_deref().map_or(Ok(()), check_description),
        patch.event_types.as_deref().map_or(Ok(()), |t| validate_patterns("event_types", t)),
        patch.projects.as_deref().map_or(Ok(()), check_projects),
        check_rate(patch.rate_limit_per_sec, true),
        ordering::check(patch.ordering_key.as_ref().and_then(Option::as_deref)),
    ])?;
    if let Some(ordering_key) = patch.ordering_key {
        row.ordering_key = ordering_key;
    }
    if let Some(url) = patch.url {
        row.url = url;
    }
    if let Some(description) = patch.description {
        row.description = description;
    }
    if let Some(types) = patch.event_types {
        row.event_types = json_list(&types);
    }
    if let Some(projects) = patch.projects {
        row.projects = json_list(&projects);
    }
    if let Some(rate) = patch.rate_limit_per_sec {
        row.rate_limit_per_sec = (rate > 0).then_some(rate as i32);
    }
    row.updated_at = Utc::now();
    Ok(())
}

/// The longest overlap of two secrets.
const MAX_OVERLAP_SECS: u64 = 2_592_000;

/// Rotates the secret: the old one keeps signing for `overlap`.
pub(crate) fn rotate(row: &mut endpoint::Model, request: RotateSecret, default_overlap: u64) -> Result<(), Error> {
    let check_overlap = match request.overlap_secs {
        Some(n) if n > MAX_OVERLAP_SECS => {
            Err(FieldError::new("overlap_secs", format!("must be at most {MAX_OVERLAP_SECS} (30 days)")))
        }
        _ => Ok(()),
    };
    collect([check_secret(&request.secret), check_overlap])?;
    let overlap = request.overlap_secs.unwrap_or(default_overlap).min(MAX_OVERLAP_SECS);
    let now = Utc::now();
    let new = request.secret.unwrap_or_else(signing::generate_secret);
    row.previous_secret = Some(std::mem::replace(&mut row.secret, new));
    row.previous_secret_until = Some(now + chrono::Duration::seconds(overlap as i64));
    row.updated_at = now;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller { user_id: "u1".into(), admin: false }
    }

    fn spec(url: &str) -> NewEndpoint {
        NewEndpoint {
            url: url.into(),
            description: String::new(),
            event_types: vec!["subscription.*".into()],
            projects: vec![],
            rate_limit_per_sec: None,
            secret: None,
            disabled: false,
            ordering_key: None,
        }
    }

    #[test]
    fn new_endpoints_get_a_secret_and_bad_fields_are_all_named() {
        let policy = TargetPolicy::default();
        let row = new_row(&caller(), spec("https://example.com/h"), &policy).expect("valid");
        assert!(row.id.starts_with("ep_") && signing::valid_secret(&row.secret));
        let bad = NewEndpoint {
            event_types: vec!["a*b".into()],
            rate_limit_per_sec: Some(0),
            secret: Some("nope".into()),
            ..spec("http://169.254.169.254/")
        };
        let Err(Error::InvalidInput { fields }) = new_row(&caller(), bad, &policy) else { panic!("invalid") };
        let names: Vec<_> = fields.iter().map(|f| f.field.as_ref()).collect();
        assert_eq!(names, ["url", "event_types", "rate_limit_per_sec", "secret"]);
    }

    #[test]
    fn rotation_keeps_the_old_secret_signing_for_the_overlap() {
        let mut row = new_row(&caller(), spec("https://example.com/h"), &TargetPolicy::default()).expect("valid");
        let old = row.secret.clone();
        rotate(&mut row, RotateSecret { overlap_secs: Some(60), secret: None }, 86_400).expect("rotated");
        assert_ne!(row.secret, old);
        let now = Utc::now();
        assert_eq!(signing_secrets(&row, now), [row.secret.as_str(), old.as_str()]);
        assert_eq!(signing_secrets(&row, now + chrono::Duration::seconds(61)), [row.secret.as_str()]);
        let too_long = RotateSecret { overlap_secs: Some(MAX_OVERLAP_SECS + 1), secret: None };
        let Err(Error::InvalidInput { fields }) = rotate(&mut row, too_long, 86_400) else { panic!("refused") };
        assert_eq!(fields[0].field, "overlap_secs", "the documented maximum is enforced, not silently capped");
    }

    #[test]
    fn patches_change_only_what_they_name() {
        let mut row = new_row(&caller(), spec("https://example.com/h"), &TargetPolicy::default()).expect("valid");
        let patch =
            EndpointPatch { projects: Some(vec!["dev".into()]), rate_limit_per_sec: Some(5), ..Default::default() };
        patch_row(&mut row, patch, &TargetPolicy::default()).expect("patched");
        let f = filter_of(&row);
        assert_eq!((f.event_types, f.projects), (vec!["subscription.*".to_string()], vec!["dev".to_string()]));
        assert_eq!(row.rate_limit_per_sec, Some(5));
        patch_row(
            &mut row,
            EndpointPatch { rate_limit_per_sec: Some(0), ..Default::default() },
            &TargetPolicy::default(),
        )
        .expect("cleared");
        assert_eq!(row.rate_limit_per_sec, None);
    }

    #[test]
    fn ordering_keys_are_checked_and_null_turns_ordering_off() {
        let policy = TargetPolicy::default();
        let ordered = NewEndpoint { ordering_key: Some("/order/id".into()), ..spec("https://example.com/h") };
        let mut row = new_row(&caller(), ordered, &policy).expect("valid");
        assert_eq!(ordering_of(&row), Some(OrderingKey::DataPointer("/order/id".into())));
        let bad = NewEndpoint { ordering_key: Some("not a field".into()), ..spec("https://example.com/h") };
        let Err(Error::InvalidInput { fields }) = new_row(&caller(), bad, &policy) else { panic!("refused") };
        assert_eq!(fields[0].field, "ordering_key");
        let absent: EndpointPatch = serde_json::from_str("{}").expect("parses");
        patch_row(&mut row, absent, &policy).expect("patched");
        assert_eq!(row.ordering_key.as_deref(), Some("/order/id"), "absent leaves it");
        let off: EndpointPatch = serde_json::from_str(r#"{"ordering_key": null}"#).expect("parses");
        patch_row(&mut row, off, &policy).expect("patched");
        assert_eq!(row.ordering_key, None, "null turns it off");
        let bad: EndpointPatch = serde_json::from_str(r#"{"ordering_key": "a b"}"#).expect("parses");
        assert!(patch_row(&mut row, bad, &policy).is_err());
    }
}
