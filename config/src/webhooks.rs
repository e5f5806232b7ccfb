//! `[webhooks]`: notification ingest, delivery schedule, endpoint safety.

use serde::{Deserialize, Serialize};

use super::{InvalidConfig, Secret, invalid};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Basic-auth publisher for `POST /notifications` (seed 002's `AUTH_USERNAME`);
    /// empty turns basic auth off and only tokens with the `publisher` role may post.
    pub basic_auth_username: String,
    pub basic_auth_password: Secret,
    /// Realm named in the `WWW-Authenticate` challenge.
    pub basic_auth_realm: String,
    /// A notification id seen again within this window is refused with 409.
    pub dedup_window_secs: u64,
    /// Delay before each attempt (the first is usually 0); its length is the attempt count.
    pub retry_schedule_ms: Vec<u64>,
    /// Each delay is scaled by a random factor in [1 - jitter, 1 + jitter].
    pub retry_jitter: f64,
    /// An endpoint has this long to answer, headers and body.
    pub request_timeout_ms: u64,
    /// At most this much of a response body is read; the rest is dropped unread.
    pub max_response_bytes: usize,
    /// The part of the body kept in the attempt record.
    pub response_excerpt_bytes: usize,
    /// Requests one endpoint may have open at once (its actor's own budget).
    pub max_in_flight_per_endpoint: usize,
    /// Due deliveries an endpoint's actor leases in one statement and holds until it has room.
    pub lease_batch_size: usize,
    /// Bytes of notification bodies kept in memory for the deliveries about to send them.
    pub payload_cache_bytes: u64,
    /// Requests per second for endpoints that set no limit of their own; 0 = unlimited.
    pub default_rate_limit_per_sec: u32,
    /// An endpoint whose deliveries failed without a success for this long is disabled.
    pub disable_after_failing_secs: u64,
    /// After a secret rotation the previous secret keeps signing this long.
    pub secret_rotation_overlap_secs: u64,
    /// Consecutive failed attempts that open an endpoint's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open endpoint breaker waits before one probe.
    pub breaker_open_ms: u64,
    /// How often due retries are looked up in the store.
    pub poll_interval_ms: u64,
    /// An endpoint actor with nothing in flight and no work for this long is retired.
    pub endpoint_idle_ms: u64,
    /// Targets on loopback addresses (127.0.0.0/8, ::1) are refused unless this is set.
    pub allow_loopback: bool,
    /// Targets on private, link-local, CGNAT, unique-local and cloud-metadata addresses
    /// are refused unless this is set.
    pub allow_private: bool,
    /// Attempt records are written in batches of up to this many…
    pub attempts_batch_size: usize,
    /// …or after this long, whichever comes first.
    pub attempts_flush_ms: u64,
    /// Ordered endpoints: a notification not fanned out yet holds back keyed deliveries
    /// accepted after it at most this long; then they go anyway (with a warning).
    pub ordering_settle_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            basic_auth_username: String::new(),
            basic_auth_password: Secret::default(),
            basic_auth_realm: "conveyor".into(),
            dedup_window_secs: 86_400,
            // Svix's schedule: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
            retry_schedule_ms: vec![0, 5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000],
            retry_jitter: 0.2,
            request_timeout_ms: 15_000,
            max_response_bytes: 64 * 1024,
            response_excerpt_bytes: 1024,
            max_in_flight_per_endpoint: 4,
            lease_batch_size: 100,
            payload_cache_bytes: 64 * 1024 * 1024,
            default_rate_limit_per_sec: 0,
            disable_after_failing_secs: 5 * 86_400,
            secret_rotation_overlap_secs: 86_400,
            breaker_failures: 5,
            breaker_open_ms: 30_000,
            poll_interval_ms: 1_000,
            endpoint_idle_ms: 30_000,
            allow_loopback: false,
            allow_private: false,
            attempts_batch_size: 100,
            attempts_flush_ms: 200,
            ordering_settle_ms: 30_000,
        }
    }
}

impl WebhooksConfig {
    pub(super) fn validate(&self) -> Result<(), InvalidConfig> {
        if self.retry_schedule_ms.is_empty() {
            return Err(invalid("webhooks.retry_schedule_ms", "needs at least one attempt"));
        }
        if !(0.0..1.0).contains(&self.retry_jitter) {
            return Err(invalid("webhooks.retry_jitter", "must be in [0, 1)"));
        }
        if self.request_timeout_ms == 0 || self.max_in_flight_per_endpoint == 0 || self.poll_interval_ms == 0 {
            return Err(invalid(
                "webhooks.request_timeout_ms",
                "request_timeout_ms, max_in_flight_per_endpoint and poll_interval_ms must be at least 1",
            ));
        }
        if self.endpoint_idle_ms == 0 {
            return Err(invalid("webhooks.endpoint_idle_ms", "must be at least 1"));
        }
        if self.response_excerpt_bytes > self.max_response_bytes {
            return Err(invalid("webhooks.response_excerpt_bytes", "must not exceed webhooks.max_response_bytes"));
        }
        if self.breaker_failures == 0 || self.attempts_batch_size == 0 || self.lease_batch_size == 0 {
            return Err(invalid(
                "webhooks.breaker_failures",
                "breaker_failures, attempts_batch_size and lease_batch_size must be at least 1",
            ));
        }
        if self.basic_auth_username.contains(':')
            || (self.basic_auth_username.is_empty() != self.basic_auth_password.is_empty())
        {
            return Err(invalid(
                "webhooks.basic_auth_username",
                "set both basic_auth_username (without ':') and basic_auth_password, or neither",
            ));
        }
        Ok(())
    }
}
