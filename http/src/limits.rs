//! Rate limits (governor token buckets): per client IP before authentication, per token
//! subject after it, with a stricter quota on `/auth/*`. The client IP is the socket's
//! peer, or the `X-Forwarded-For` entry a trusted proxy vouches for.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use conveyor_actors::config::{Quota, RateLimitConfig};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, RateLimiter};
use http::HeaderMap;
use opentelemetry::KeyValue;

use crate::error::ApiError;
use crate::extract::Peer;
use crate::metrics::{GROUP, SCOPE, metrics};

/// Which quota a route spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Registration, login, refresh, logout: guessing passwords must be slow.
    Auth,
    /// Everything that needs a token.
    Api,
    /// Probes and metrics.
    Exempt,
}

impl Group {
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Auth => "auth",
            Group::Api => "api",
            Group::Exempt => "exempt",
        }
    }
}

pub struct RateLimits {
    enabled: bool,
    trusted_proxies: Vec<IpAddr>,
    auth_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    api_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    api_per_subject: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

fn quota(q: Quota) -> governor::Quota {
    let period = Duration::from_secs(q.period_secs) / q.per_period.max(1);
    let burst = NonZeroU32::new(q.burst).unwrap_or(NonZeroU32::MIN);
    governor::Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> Arc<Self> {
        Arc::new(RateLimits {
            enabled: config.enabled,
            trusted_proxies: config.trusted_proxies.iter().filter_map(|p| p.parse().ok()).collect(),
            auth_per_ip: RateLimiter::keyed(quota(config.auth_per_ip)),
            api_per_ip: RateLimiter::keyed(quota(config.api_per_ip)),
            api_per_subject: RateLimiter::keyed(quota(config.api_per_subject)),
            clock: DefaultClock::default(),
        })
    }

    /// Forgets idle clients now and then so the key maps stay bounded.
    pub fn spawn_janitor(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(limits) = weak.upgrade() else { return };
                limits.auth_per_ip.retain_recent();
                limits.api_per_ip.retain_recent();
                limits.api_per_subject.retain_recent();
            }
        })
    }

    /// The client: the peer, unless the peer is a trusted proxy; then the right-most
    /// `X-Forwarded-For` address that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        forwarded.into_iter().rev().find(|ip| !self.trusted_proxies.contains(ip)).unwrap_or(peer)
    }

    /// Spends one request of `group`'s per-IP quota.
    pub fn check_ip(&self, group: Group, ip: IpAddr) -> Result<(), ApiError> {
        let limiter = match group {
            Group::Auth => &self.auth_per_ip,
            Group::Api => &self.api_per_ip,
            Group::Exempt => return Ok(()),
        };
        if !self.enabled {
            return Ok(());
        }
        limiter.check_key(&ip).map_err(|not_until| self.refuse(group, "ip", not_until.wait_time_from(self.clock.now())))
    }

    /// Spends one request of the subject's quota.
    pub fn check_subject(&self, subject: &str) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        self.api_per_subject
            .check_key(&subject.to_string())
            .map_err(|not_until| self.refuse(Group::Api, "subject", not_until.wait_time_from(self.clock.now())))
    }

    fn refuse(&self, group: Group, scope: &'static str, wait: Duration) -> ApiError {
        metrics().rate_limited.add(1, &[KeyValue::new(GROUP, group.as_str()), KeyValue::new(SCOPE, scope)]);
        ApiError::RateLimited { retry_after: wait }
    }
}

/// Route middleware: spends one request of the route's group from the client's quota
/// before the handler runs.
pub async fn spend(
    State(group): State<Group>,
    Extension(limits): Extension<Arc<RateLimits>>,
    Extension(Peer(peer)): Extension<Peer>,
    req: Request,
    next: Next,
) -> Response {
    let ip = limits.client_ip(peer, req.headers());
    match limits.check_ip(group, ip) {
        Ok(()) => next.run(req).await,
        Err(refused) => refused.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn limits(trusted: &[&str]) -> Arc<RateLimits> {
        let config = RateLimitConfig {
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            auth_per_ip: Quota { per_period: 1, period_secs: 60, burst: 3 },
            ..RateLimitConfig::default()
        };
        RateLimits::new(&config)
    }

    #[test]
    fn auth_quota_refuses_after_the_burst_with_a_wait() {
        let l = limits(&[]);
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..3 {
            assert!(l.check_ip(Group::Auth, ip).is_ok());
        }
        match l.check_ip(Group::Auth, ip) {
            Err(ApiError::RateLimited { retry_after }) => assert!(retry_after > Duration::from_secs(50)),
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(l.check_ip(Group::Auth, [10, 0, 0, 2].into()).is_ok(), "other clients are unaffected");
        assert!(l.check_ip(Group::Exempt, ip).is_ok());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let l = limits(&["127.0.0.1"]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9, 198.51.100.7"));
        assert_eq!(l.client_ip([127, 0, 0, 1].into(), &h), IpAddr::from([198, 51, 100, 7]));
        assert_eq!(l.client_ip([192, 0, 2, 1].into(), &h), IpAddr::from([192, 0, 2, 1]), "untrusted peer");
        assert_eq!(l.client_ip([127, 0, 0, 1].into(), &HeaderMap::new()), IpAddr::from([127, 0, 0, 1]));
    }
}
