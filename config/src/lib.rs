//! Conveyor's configuration: one struct per `config.toml` section.
//!
//! `config.toml` at the repository root documents every key; a test in `engine` proves it
//! parses to [`Config::default`]. Loading (file + `CONVEYOR_SECTION__KEY` environment) lives
//! in `engine`; the types live here because every crate reads them.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod breaker;
mod dlq;
mod embedded_log;
mod identity;
mod processing;
mod retention;
mod saga;
mod secret;
mod secret_files;
mod webhooks;
mod workflows;

pub use breaker::BreakerConfig;
pub use dlq::{DlqConfig, REPLAY_MAX_RATE};
pub use embedded_log::{EmbeddedLogConfig, TopicLogOverrides, TopicLogPolicy};
pub use identity::{AuthConfig, ExternalKey, HmacKey, PasswordConfig, Quota, RateLimitConfig};
pub use processing::{DeadLetterPolicy, LOGICAL_TOPICS, ProcessingConfig, TopicProcessing};
pub use retention::RetentionConfig;
pub use saga::{FaultsConfig, LoyaltyConfig, OutboxConfig};
use secret::mask_url_password;
pub use secret::{Secret, masked_url};
pub use secret_files::{
    FileSecret, FileValue, SECRET_FILE_KEYS, SecretFileError, env_name, is_secret_file_var, secrets_from_files,
};
pub use webhooks::WebhooksConfig;
pub use workflows::WorkflowsConfig;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub rate_limit: RateLimitConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub ingest: IngestConfig,
    pub processing: ProcessingConfig,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub dlq: DlqConfig,
    pub loyalty: LoyaltyConfig,
    pub outbox: OutboxConfig,
    pub faults: FaultsConfig,
    pub webhooks: WebhooksConfig,
    pub workflows: WorkflowsConfig,
    pub retention: RetentionConfig,
    pub telemetry: TelemetryConfig,
    pub shutdown: ShutdownConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            rate_limit: RateLimitConfig::default(),
            log: LogConfig::default(),
            store: StoreConfig::default(),
            cache: CacheConfig::default(),
            ingest: IngestConfig::default(),
            processing: ProcessingConfig::default(),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            dlq: DlqConfig::default(),
            loyalty: LoyaltyConfig::default(),
            outbox: OutboxConfig::default(),
            faults: FaultsConfig::default(),
            webhooks: WebhooksConfig::default(),
            workflows: WorkflowsConfig::default(),
            retention: RetentionConfig::default(),
            telemetry: TelemetryConfig::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: String,
    pub body_limit_bytes: usize,
    pub request_timeout_ms: u64,
    pub header_read_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: "0.0.0.0:8000".into(),
            body_limit_bytes: 1024 * 1024,
            request_timeout_ms: 30_000,
            header_read_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogBackendKind {
    Embedded,
    Kafka,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub backend: LogBackendKind,
    pub partitions: i32,
    pub produce_timeout_ms: u64,
    pub topics: TopicsConfig,
    pub groups: GroupsConfig,
    pub kafka: KafkaConfig,
    /// Segments, retention and disk budget of the embedded backend.
    pub embedded: EmbeddedLogConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            backend: LogBackendKind::Embedded,
            partitions: 4,
            produce_timeout_ms: 10_000,
            topics: TopicsConfig::default(),
            groups: GroupsConfig::default(),
            kafka: KafkaConfig::default(),
            embedded: EmbeddedLogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    pub events_input: String,
    pub events_dlq: String,
    pub registration: String,
    pub loyalty: String,
    /// Posted notifications and Conveyor's own domain events, fanned out to webhook endpoints.
    pub notifications: String,
    /// Workflow commands (definition changes, run requests), keyed by workflow id.
    pub workflows_command: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            events_input: "events-input".into(),
            events_dlq: "events-dlq".into(),
            registration: "registration".into(),
            loyalty: "loyalty".into(),
            notifications: "notifications".into(),
            workflows_command: "workflows.command".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    pub events: String,
    pub loyalty: String,
    pub identity: String,
    /// Fans notifications out to webhook endpoints.
    pub webhooks: String,
    /// Applies workflow commands and starts runs, sharing the work by partition.
    pub workflows: String,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            events: "events-processor".into(),
            loyalty: "loyalty".into(),
            identity: "identity-saga".into(),
            webhooks: "webhooks-fanout".into(),
            workflows: "workflows".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
    pub fn uses_sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub client_id: String,
    pub security_protocol: SecurityProtocol,
    pub sasl_mechanism: String,
    pub sasl_username: String,
    pub sasl_password: Secret,
    pub replication_factor: i32,
    pub session_timeout_ms: u64,
    /// Producer `linger.ms`: how long a record waits for others to share its batch (and
    /// its `acks=all` round trip).
    pub linger_ms: u64,
    /// Producer `batch.num.messages`: most records in one produce request per partition.
    pub batch_num_messages: u64,
    /// Producer `queue.buffering.max.messages`: records waiting or in flight before a send
    /// is refused as queue full.
    pub queue_buffering_max_messages: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            client_id: "conveyor".into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: "PLAIN".into(),
            sasl_username: String::new(),
            sasl_password: Secret::default(),
            replication_factor: 1,
            session_timeout_ms: 10_000,
            linger_ms: 1,
            batch_num_messages: 10_000,
            queue_buffering_max_messages: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Empty means SQLite at `{data_dir}/conveyor.db`. Printed with its password masked.
    #[serde(serialize_with = "mask_url_password")]
    pub url: String,
    pub schema: String,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { url: String::new(), schema: String::new(), max_connections: 10, connect_timeout_ms: 5_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// `memory` or `redis://…`. Printed with its password masked.
    #[serde(serialize_with = "mask_url_password")]
    pub url: String,
    pub key_prefix: String,
    pub max_entries: u64,
    pub resource_ttl_secs: u64,
    pub command_timeout_ms: u64,
    /// PEM file of the certificate authorities a `rediss://` server's certificate must chain
    /// to (instead of the system's); empty: the system's roots.
    pub tls_ca_file: String,
    /// PEM client certificate (and `tls_key_file`, its PKCS#8 PEM key) presented to a
    /// `rediss://` server that asks for one; empty: none.
    pub tls_cert_file: String,
    pub tls_key_file: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            url: "memory".into(),
            key_prefix: String::new(),
            max_entries: 100_000,
            resource_ttl_secs: 60,
            command_timeout_ms: 1_000,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub batch_max_events: usize,
    pub idempotency_window_secs: u64,
    /// Records written but not yet processed (over this process's partitions) beyond which
    /// ingest answers 503; 0 turns the check off.
    pub max_lag: i64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig { batch_max_events: 500, idempotency_window_secs: 86_400, max_lag: 1_000_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub base_ms: u64,
    pub cap_ms: u64,
    pub max_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { base_ms: 1_000, cap_ms: 60_000, max_attempts: 5 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, text otherwise.
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    pub log_filter: String,
    pub metrics_token: Secret,
    /// OTLP/HTTP collector base URL (`http://collector:4318`); empty: no push.
    pub otlp_endpoint: String,
    /// How often metrics are pushed, and spans batched, when `otlp_endpoint` is set.
    pub otlp_interval_ms: u64,
    /// Fraction of new traces recorded and exported when `otlp_endpoint` is set (0.0 to
    /// 1.0); a request that arrives with a `traceparent` follows its caller's decision.
    /// Without an endpoint no span is recorded at all, whatever this says.
    pub trace_sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Auto,
            log_filter: "info".into(),
            metrics_token: Secret::default(),
            otlp_endpoint: String::new(),
            otlp_interval_ms: 10_000,
            trace_sample_ratio: 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    pub grace_period_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_period_ms: 30_000 }
    }
}

/// A configuration value that cannot work, named by its dotted key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct InvalidConfig {
    pub key: &'static str,
    pub reason: String,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> InvalidConfig {
    InvalidConfig { key, reason: reason.into() }
}

impl Config {
    /// Checks every field and the rules across fields; names the first bad key.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        self.http
            .addr
            .parse::<SocketAddr>()
            .map_err(|e| invalid("http.addr", format!("not a socket address ({e})")))?;
        if self.http.body_limit_bytes < 1024 {
            return Err(invalid("http.body_limit_bytes", "must be at least 1024"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if !(1..=1024).contains(&self.log.partitions) {
            return Err(invalid("log.partitions", "must be between 1 and 1024"));
        }
        self.log.embedded.validate(self.log.partitions)?;
        for (key, topic) in [
            ("log.topics.events_input", &self.log.topics.events_input),
            ("log.topics.events_dlq", &self.log.topics.events_dlq),
            ("log.topics.registration", &self.log.topics.registration),
            ("log.topics.loyalty", &self.log.topics.loyalty),
            ("log.topics.notifications", &self.log.topics.notifications),
            ("log.topics.workflows_command", &self.log.topics.workflows_command),
        ] {
            if !valid_topic_name(topic) {
                return Err(invalid(key, "topic names are 1-249 of [a-zA-Z0-9._-]"));
            }
        }
        if self.log.topics.events_input == self.log.topics.events_dlq {
            return Err(invalid("log.topics.events_dlq", "must differ from log.topics.events_input"));
        }
        if self.dlq.index_group.is_empty() || self.dlq.index_group == self.log.groups.events {
            return Err(invalid("dlq.index_group", "must be set and differ from log.groups.events"));
        }
        if self.log.groups.events.is_empty() {
            return Err(invalid("log.groups.events", "must not be empty"));
        }
        if self.log.backend == LogBackendKind::Kafka {
            let k = &self.log.kafka;
            if k.brokers.trim().is_empty() {
                return Err(invalid("log.kafka.brokers", "required when log.backend = \"kafka\""));
            }
            if k.security_protocol.uses_sasl() && (k.sasl_username.is_empty() || k.sasl_password.is_empty()) {
                return Err(invalid("log.kafka.sasl_username", "SASL protocols need sasl_username and sasl_password"));
            }
        }
        let store = self.store.url.as_str();
        if !(store.is_empty()
            || store.starts_with("sqlite:")
            || store.starts_with("postgres://")
            || store.starts_with("postgresql://"))
        {
            return Err(invalid("store.url", "expected sqlite:… or postgres://…"));
        }
        if let Some(mode) = url_query_value(store, "sslmode")
            && !matches!(mode, "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full")
        {
            return Err(invalid(
                "store.url",
                "sslmode must be disable, allow, prefer, require, verify-ca or verify-full",
            ));
        }
        if self.store.max_connections == 0 {
            return Err(invalid("store.max_connections", "must be at least 1"));
        }
        let cache = self.cache.url.as_str();
        if !(cache == "memory" || cache.starts_with("redis://") || cache.starts_with("rediss://")) {
            return Err(invalid("cache.url", "expected \"memory\", redis://… or rediss://…"));
        }
        self.cache.validate_tls()?;
        if self.ingest.max_lag < 0 {
            return Err(invalid("ingest.max_lag", "must be 0 (off) or positive"));
        }
        if self.ingest.batch_max_events == 0 {
            return Err(invalid("ingest.batch_max_events", "must be at least 1"));
        }
        let p = &self.processing;
        if p.max_in_flight_per_partition == 0 {
            return Err(invalid("processing.max_in_flight_per_partition", "must be at least 1"));
        }
        if p.max_concurrent_keys == 0 {
            return Err(invalid("processing.max_concurrent_keys", "must be at least 1"));
        }
        if p.max_coalesce == 0 {
            return Err(invalid("processing.max_coalesce", "must be at least 1"));
        }
        processing::validate(&p.topics, p.max_parked_keys_per_partition, p.max_parked_records_per_key)?;
        if self.retry.base_ms == 0 || self.retry.base_ms > self.retry.cap_ms {
            return Err(invalid("retry.base_ms", "must be at least 1 and at most retry.cap_ms"));
        }
        let b = &self.breaker;
        if b.consecutive_failures == 0 {
            return Err(invalid("breaker.consecutive_failures", "must be at least 1"));
        }
        if !(b.failure_ratio > 0.0 && b.failure_ratio <= 1.0) {
            return Err(invalid("breaker.failure_ratio", "must be in (0, 1]"));
        }
        if b.half_open_probes == 0 {
            return Err(invalid("breaker.half_open_probes", "must be at least 1"));
        }
        if self.retry.max_attempts == 0 {
            return Err(invalid("retry.max_attempts", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.telemetry.trace_sample_ratio) {
            return Err(invalid("telemetry.trace_sample_ratio", "must be between 0.0 and 1.0"));
        }
        let kafka = &self.log.kafka;
        if kafka.batch_num_messages == 0 || kafka.queue_buffering_max_messages == 0 {
            return Err(invalid("log.kafka.batch_num_messages", "batch and queue sizes must be at least 1"));
        }
        if self.telemetry.otlp_interval_ms == 0 {
            return Err(invalid("telemetry.otlp_interval_ms", "must be at least 1"));
        }
        self.webhooks.validate()?;
        self.workflows.validate()?;
        self.retention.validate(self.webhooks.dedup_window_secs)?;
        self.dlq.validate()?;
        if self.loyalty.welcome_bonus < 0 {
            return Err(invalid("loyalty.welcome_bonus", "must not be negative"));
        }
        if self.outbox.poll_interval_ms == 0 || self.outbox.batch_size == 0 {
            return Err(invalid("outbox.poll_interval_ms", "poll_interval_ms and batch_size must be at least 1"));
        }
        self.auth.validate()?;
        self.rate_limit.validate()
    }

    /// Where the embedded log lives.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }

    /// The store URL with the embedded default filled in.
    pub fn store_url(&self) -> String {
        if self.store.url.is_empty() {
            format!("sqlite://{}?mode=rwc", self.data_dir.join("conveyor.db").display())
        } else {
            self.store.url.clone()
        }
    }
}

impl CacheConfig {
    /// TLS files only mean something with `rediss://`, and a certificate needs its key.
    fn validate_tls(&self) -> Result<(), InvalidConfig> {
        let tls_files = [&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file];
        if !self.url.starts_with("rediss://") && tls_files.iter().any(|f| !f.is_empty()) {
            return Err(invalid("cache.tls_ca_file", "cache.tls_* files need a rediss:// cache.url"));
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err(invalid("cache.tls_cert_file", "tls_cert_file and tls_key_file go together"));
        }
        Ok(())
    }
}

/// The value of `name` in a URL's query string, as written (these values need no decoding).
fn url_query_value<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests;
