//! What follows an http step's attempt, by error class (minireipaz's retry design): 429
//! backs off honouring `Retry-After`; 500/502/503/504 back off exponentially with full
//! jitter (the runtime's [`RetryPolicy`]); a connection error or timeout is retried once at
//! once, then backs off; any other 4xx (and a redirect, a 410 or a refused target) fails
//! the run at once.

use std::time::Duration;

use rand::Rng;

use conveyor_actors::config::WorkflowsConfig;
use conveyor_actors::retry::RetryPolicy;
use conveyor_webhooks::client::{AttemptClass, Response};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The step is done.
    Done,
    /// Try again after this long.
    Retry(Duration),
    /// The run fails with this response recorded.
    Fail,
}

/// `attempt` is the one that just ended (1 for the first).
pub fn after_attempt(response: &Response, attempt: u32, config: &WorkflowsConfig, rng: &mut impl Rng) -> Next {
    let retryable = match response.class {
        AttemptClass::Succeeded => return Next::Done,
        AttemptClass::Http429 => true,
        AttemptClass::Http5xx => matches!(response.status, Some(500 | 502 | 503 | 504)),
        AttemptClass::Connect | AttemptClass::Timeout => true,
        AttemptClass::Http4xx | AttemptClass::Redirect | AttemptClass::Gone | AttemptClass::BlockedTarget => false,
    };
    if !retryable || attempt >= config.max_attempts {
        return Next::Fail;
    }
    let policy = RetryPolicy {
        base: Duration::from_millis(config.retry_base_ms),
        cap: Duration::from_millis(config.retry_cap_ms),
        max_attempts: config.max_attempts,
    };
    Next::Retry(match response.class {
        AttemptClass::Http429 => policy.backoff(attempt, response.retry_after, rng),
        AttemptClass::Connect | AttemptClass::Timeout if attempt == 1 => Duration::ZERO,
        AttemptClass::Connect | AttemptClass::Timeout => policy.backoff(attempt - 1, None, rng),
        _ => policy.backoff(attempt, None, rng),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(class: AttemptClass, status: Option<u16>, retry_after: Option<u64>) -> Response {
        Response {
            class,
            status,
            latency: Duration::ZERO,
            excerpt: None,
            error: None,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn each_class_has_its_policy() {
        let config = WorkflowsConfig { retry_base_ms: 100, retry_cap_ms: 1_000, max_attempts: 4, ..Default::default() };
        let mut rng = rand::rng();
        let ok = response(AttemptClass::Succeeded, Some(200), None);
        assert_eq!(after_attempt(&ok, 1, &config, &mut rng), Next::Done);
        let limited = response(AttemptClass::Http429, Some(429), Some(2));
        assert_eq!(after_attempt(&limited, 1, &config, &mut rng), Next::Retry(Duration::from_secs(2)));
        let unavailable = response(AttemptClass::Http5xx, Some(503), None);
        for attempt in 1..=3 {
            let Next::Retry(d) = after_attempt(&unavailable, attempt, &config, &mut rng) else { panic!("retry") };
            let ceiling = (100u64 << (attempt - 1)).min(1_000);
            assert!(d <= Duration::from_millis(ceiling), "full jitter within the ceiling: {d:?}");
        }
        assert_eq!(after_attempt(&unavailable, 4, &config, &mut rng), Next::Fail, "attempts exhausted");
        assert_eq!(after_attempt(&response(AttemptClass::Http5xx, Some(501), None), 1, &config, &mut rng), Next::Fail);
        let refused = response(AttemptClass::Connect, None, None);
        assert_eq!(after_attempt(&refused, 1, &config, &mut rng), Next::Retry(Duration::ZERO), "once at once");
        assert!(
            matches!(after_attempt(&refused, 2, &config, &mut rng), Next::Retry(d) if d <= Duration::from_millis(100)),
            "then backs off from the first step of the schedule"
        );
        assert_eq!(after_attempt(&response(AttemptClass::Http4xx, Some(400), None), 1, &config, &mut rng), Next::Fail);
    }
}
