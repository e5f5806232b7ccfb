//! The retry policy every handler shares: classify the failure, then back off
//! exponentially with full jitter, honour `Retry-After`, and give up after a bound.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryConfig;

/// How a failure should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth trying again: timeouts, connection errors, 5xx, 408, 429, deadlocks.
    Retryable,
    /// Retrying cannot help: the input itself is wrong.
    Permanent,
    /// A downstream's circuit breaker refused the call: wait for it, spend no attempt.
    Unavailable,
}

impl ErrorClass {
    /// A bounded label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Unavailable => "unavailable",
        }
    }
}

/// Parses a `Retry-After` header: delay-seconds, or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.with_timezone(&chrono::Utc) - now).to_std().unwrap_or_default())
}

/// A handler failure: its class, an optional server-requested delay, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{class:?} failure")]
pub struct HandlerError {
    pub class: ErrorClass,
    pub retry_after: Option<Duration>,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl HandlerError {
    pub fn retryable(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError { class: ErrorClass::Retryable, retry_after: None, source: source.into() }
    }
    pub fn permanent(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError { class: ErrorClass::Permanent, retry_after: None, source: source.into() }
    }
    pub fn unavailable(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError { class: ErrorClass::Unavailable, retry_after: None, source: source.into() }
    }
    /// Full cause chain as text, for dead-letter metadata and logs.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self.source.as_ref());
        while let Some(e) = cur {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }
}

/// Exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS, 2015):
/// attempt `n` (1-based) waits a uniform random time in `[0, min(cap, base · 2^(n-1))]`,
/// or what the server asked for (`Retry-After`), up to the cap. The one backoff every
/// retry uses: handlers' keys, the outbox relay, workflow steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub max_attempts: u32,
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        RetryPolicy {
            base: Duration::from_millis(c.base_ms),
            cap: Duration::from_millis(c.cap_ms),
            max_attempts: c.max_attempts,
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the jitter window after failed attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << shift).min(self.cap)
    }

    /// How long to wait after failed attempt `attempt` (1-based), whatever the attempt
    /// budget: what the server asked for (`Retry-After`: it said when), else full jitter.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        retry_after.unwrap_or_else(|| {
            let ceiling = self.ceiling(attempt).as_millis() as u64;
            Duration::from_millis(rng.random_range(0..=ceiling))
        })
    }

    /// What to do after failed attempt `attempt`: `None` to give up, or how long to wait.
    pub fn next_delay(&self, attempt: u32, err: &HandlerError, rng: &mut impl Rng) -> Option<Duration> {
        if err.class != ErrorClass::Retryable || attempt >= self.max_attempts {
            return None;
        }
        // A key waits at most the cap, whatever the server asked: longer would stall it
        // behind one downstream's wish.
        Some(self.backoff(attempt, err.retry_after.map(|after| after.min(self.cap)), rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy() -> RetryPolicy {
        RetryPolicy::from(&RetryConfig::default())
    }

    #[test]
    fn ceiling_doubles_to_cap() {
        let p = policy();
        let ceilings: Vec<u64> = (1..=8).map(|a| p.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn jitter_stays_within_window_and_varies() {
        let p = RetryPolicy { max_attempts: 100, ..policy() };
        let mut rng = StdRng::seed_from_u64(7);
        let err = HandlerError::retryable("boom");
        let delays: Vec<Duration> = (0..50).map(|_| p.next_delay(3, &err, &mut rng).unwrap_or_default()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)));
        assert!(delays.iter().any(|d| *d != delays[0]), "full jitter must vary");
    }

    #[test]
    fn permanent_and_exhausted_give_up() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(p.next_delay(1, &HandlerError::permanent("bad"), &mut rng), None);
        assert_eq!(p.next_delay(5, &HandlerError::retryable("x"), &mut rng), None);
        assert!(p.next_delay(4, &HandlerError::retryable("x"), &mut rng).is_some());
    }

    #[test]
    fn retry_after_is_waited_out_exactly_whatever_the_attempt() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(3);
        for attempt in 1..=8 {
            assert_eq!(p.backoff(attempt, Some(Duration::from_secs(3)), &mut rng), Duration::from_secs(3), "{attempt}");
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_cap() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(1);
        let mut err = HandlerError::retryable("429");
        err.retry_after = Some(Duration::from_secs(7));
        assert_eq!(p.next_delay(1, &err, &mut rng), Some(Duration::from_secs(7)));
        err.retry_after = Some(Duration::from_secs(600));
        assert_eq!(p.next_delay(1, &err, &mut rng), Some(Duration::from_secs(60)));
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc2822("Mon, 23 Nov 2026 03:00:00 GMT")
            .map(|d| d.with_timezone(&chrono::Utc))
            .unwrap_or_default();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Mon, 23 Nov 2026 03:00:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_retry_after("Mon, 23 Nov 2026 02:00:00 GMT", now),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn describe_keeps_the_cause_chain() {
        let io = std::io::Error::other("disk on fire");
        let err = HandlerError::retryable(io);
        assert_eq!(err.describe(), "disk on fire");
    }
}
