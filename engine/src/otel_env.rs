//! The OpenTelemetry SDK environment variables, read as the SDK specification documents them
//! (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/), and
//! checked at start-up: a value the specification would log and ignore is refused here
//! instead (exit 64, naming the variable), so a deployment never runs with telemetry other
//! than the one it asked for.
//!
//! Precedence: a variable that is set (and not empty) wins over the matching `[telemetry]`
//! key of config.toml or its `CONVEYOR_TELEMETRY__*` override (`OTEL_EXPORTER_OTLP_*ENDPOINT`
//! over `otlp_endpoint`, `OTEL_TRACES_SAMPLER` over `trace_sample_ratio`); config.toml
//! gives the rest (export interval, log format, the metrics token).

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::Sampler;

use crate::settings::BadConfig;

pub const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
pub const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
pub const TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
pub const METRICS_HEADERS: &str = "OTEL_EXPORTER_OTLP_METRICS_HEADERS";
pub const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
pub const METRICS_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL";
pub const TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
pub const TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";

/// The sampler `OTEL_TRACES_SAMPLER` (and `_ARG`) names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

impl SamplerChoice {
    pub fn sampler(self) -> Sampler {
        match self {
            SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
            SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
            SamplerChoice::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            SamplerChoice::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerChoice::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            SamplerChoice::ParentBasedTraceIdRatio(r) => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r))),
        }
    }

    /// Whether any span can ever be recorded (`always_off` records none, even for a sampled caller).
    pub fn may_record(self) -> bool {
        self != SamplerChoice::AlwaysOff
    }
}

/// What the `OTEL_*` variables ask for; `None` / empty where they are not set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OtelEnv {
    /// `OTEL_SDK_DISABLED=true`: no span is recorded and nothing is pushed over OTLP
    /// (`/metrics` still answers: it is Conveyor's endpoint, not an SDK export).
    pub disabled: bool,
    pub service_name: Option<String>,
    pub resource_attributes: Vec<(String, String)>,
    /// Full URL spans are posted to.
    pub traces_endpoint: Option<String>,
    /// Full URL metrics are posted to.
    pub metrics_endpoint: Option<String>,
    /// Headers of every OTLP request (API keys: never printed).
    pub traces_headers: Vec<(String, String)>,
    pub metrics_headers: Vec<(String, String)>,
    pub sampler: Option<SamplerChoice>,
}

impl OtelEnv {
    pub fn from_env() -> Result<Self, BadConfig> {
        Self::parse(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `get`; an empty value counts as unset, as the spec says.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Self, BadConfig> {
        let get = |name: &str| get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let disabled = match get(SDK_DISABLED).map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(bad(SDK_DISABLED, "expected true or false")),
        };
        for var in [PROTOCOL, TRACES_PROTOCOL, METRICS_PROTOCOL] {
            if let Some(p) = get(var).filter(|p| p != "http/protobuf") {
                return Err(bad(var, format!("{p:?} is not supported; Conveyor exports http/protobuf")));
            }
        }
        let generic = get(ENDPOINT).map(|e| checked_url(ENDPOINT, &e)).transpose()?;
        let signal = |var: &str, path: &str| -> Result<Option<String>, BadConfig> {
            match get(var) {
                // A signal's own endpoint is used as given.
                Some(url) => checked_url(var, &url).map(Some),
                // The generic one is a base: the signal's path is appended.
                None => Ok(generic.as_ref().map(|base| format!("{}/{path}", base.trim_end_matches('/')))),
            }
        };
        let headers_of = |var: &str| get(var).map(|h| headers(var, &h)).transpose();
        let generic_headers = headers_of(HEADERS)?.unwrap_or_default();
        // A signal's own headers replace the generic ones, as the exporter reads them.
        let signal_headers = |var: &str| headers_of(var).map(|h| h.unwrap_or_else(|| generic_headers.clone()));
        Ok(OtelEnv {
            disabled,
            service_name: get(SERVICE_NAME),
            resource_attributes: get(RESOURCE_ATTRIBUTES)
                .map(|a| key_values(RESOURCE_ATTRIBUTES, &a))
                .transpose()?
                .unwrap_or_default(),
            traces_endpoint: signal(TRACES_ENDPOINT, "v1/traces")?,
            metrics_endpoint: signal(METRICS_ENDPOINT, "v1/metrics")?,
            traces_headers: signal_headers(TRACES_HEADERS)?,
            metrics_headers: signal_headers(METRICS_HEADERS)?,
            sampler: sampler(get(TRACES_SAMPLER), get(TRACES_SAMPLER_ARG))?,
        })
    }

    /// The resource: `service.name` from `OTEL_SERVICE_NAME`, else from
    /// `OTEL_RESOURCE_ATTRIBUTES`, else `conveyor`; the other attributes as given.
    pub fn resource_attributes(&self) -> Vec<KeyValue> {
        let mut out: Vec<KeyValue> = self
            .resource_attributes
            .iter()
            .filter(|(k, _)| k != "service.name" || self.service_name.is_none())
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect();
        let named = self.service_name.is_some() || self.resource_attributes.iter().any(|(k, _)| k == "service.name");
        if !named {
            out.push(KeyValue::new("service.name", "conveyor"));
        }
        if let Some(name) = &self.service_name {
            out.push(KeyValue::new("service.name", name.clone()));
        }
        out
    }
}

fn bad(var: &str, message: impl Into<String>) -> BadConfig {
    BadConfig { key: var.to_string(), message: message.into() }
}

fn headers(var: &str, text: &str) -> Result<Vec<(String, String)>, BadConfig> {
    let pairs = key_values(var, text)?;
    for (name, value) in &pairs {
        if http::HeaderName::try_from(name.as_str()).is_err() || http::HeaderValue::try_from(value.as_str()).is_err() {
            return Err(bad(var, format!("{name:?} is not a valid HTTP header")));
        }
    }
    Ok(pairs)
}

fn checked_url(var: &str, value: &str) -> Result<String, BadConfig> {
    let url = url::Url::parse(value).map_err(|e| bad(var, format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad(var, "expected an http:// or https:// URL"));
    }
    Ok(value.to_string())
}

/// `key1=value1,key2=value2` with percent-encoded values (the W3C Baggage octet range), as
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS` are written. The message
/// names the malformed entry's key only: header values are often credentials.
fn key_values(var: &str, text: &str) -> Result<Vec<(String, String)>, BadConfig> {
    let mut out = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((key, value)) = entry.split_once('=') else {
            return Err(bad(var, "expected key=value pairs separated by commas"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(bad(var, "an entry has an empty key"));
        }
        let value = percent_decode(value.trim())
            .ok_or_else(|| bad(var, format!("the value of {key:?} is not valid percent-encoded UTF-8")))?;
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn sampler(name: Option<String>, arg: Option<String>) -> Result<Option<SamplerChoice>, BadConfig> {
    // The argument alone, or beside a sampler that takes none, is ignored, as the spec says.
    let Some(name) = name else { return Ok(None) };
    let ratio = || -> Result<f64, BadConfig> {
        // The spec's default when the argument is absent.
        let Some(arg) = &arg else { return Ok(1.0) };
        arg.parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| bad(TRACES_SAMPLER_ARG, format!("{arg:?} is not a ratio between 0.0 and 1.0")))
    };
    let choice = match name.as_str() {
        "always_on" => SamplerChoice::AlwaysOn,
        "always_off" => SamplerChoice::AlwaysOff,
        "traceidratio" => SamplerChoice::TraceIdRatio(ratio()?),
        "parentbased_always_on" => SamplerChoice::ParentBasedAlwaysOn,
        "parentbased_always_off" => SamplerChoice::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => SamplerChoice::ParentBasedTraceIdRatio(ratio()?),
        other => {
            return Err(bad(
                TRACES_SAMPLER,
                format!(
                    "{other:?} is not supported; expected always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ),
            ));
        }
    };
    Ok(Some(choice))
}

#[cfg(test)]
mod tests;
