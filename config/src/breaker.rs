//! `[breaker]`: one circuit breaker's settings (the store's, the cache's, the log's).

use serde::{Deserialize, Serialize};

/// A breaker's settings (`[breaker]` in config.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Failure ratio over the window that opens the breaker (with at least `min_calls`).
    pub failure_ratio: f64,
    pub min_calls: u32,
    pub window_ms: u64,
    /// How long an open breaker refuses calls before letting probes through.
    pub cool_down_ms: u64,
    /// Calls let through while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_calls: 20,
            window_ms: 10_000,
            cool_down_ms: 5_000,
            half_open_probes: 1,
        }
    }
}
