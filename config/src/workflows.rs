//! `[workflows]`: step retries, limits, the scheduler.

use serde::{Deserialize, Serialize};

use super::{InvalidConfig, invalid};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkflowsConfig {
    /// Attempts per http step before the run fails.
    pub max_attempts: u32,
    /// First backoff; doubles per attempt up to `retry_cap_ms`, with jitter.
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// Longest a step may take when it sets no timeout of its own (and the most it may set).
    pub step_timeout_ms: u64,
    /// At most this many bytes of a response are read (and kept as the step's output).
    pub max_response_bytes: usize,
    /// Runs one user may have executing at once; more wait their turn.
    pub max_concurrent_runs_per_user: usize,
    /// Steps per workflow.
    pub max_steps: usize,
    /// How often runs left unfinished (a restart, another daemon's crash) are looked for.
    pub poll_interval_ms: u64,
    /// A running run's lease; a daemon that dies holding it lets go after this long.
    pub lease_ms: u64,
    /// How often schedule triggers are evaluated.
    pub scheduler_tick_ms: u64,
    /// Longest `?wait=` on a run.
    pub max_wait_secs: u64,
    /// Consecutive failures to one host that open its circuit breaker.
    pub breaker_failures: u32,
    /// How long an open host breaker waits before one probe.
    pub breaker_open_ms: u64,
    /// Targets on loopback addresses are refused unless this is set (tests set it).
    pub allow_loopback: bool,
    /// Targets on private, link-local and metadata addresses are refused unless this is set.
    pub allow_private: bool,
}

impl Default for WorkflowsConfig {
    fn default() -> Self {
        WorkflowsConfig {
            max_attempts: 5,
            retry_base_ms: 1_000,
            retry_cap_ms: 60_000,
            step_timeout_ms: 30_000,
            max_response_bytes: 64 * 1024,
            max_concurrent_runs_per_user: 10,
            max_steps: 50,
            poll_interval_ms: 1_000,
            lease_ms: 30_000,
            scheduler_tick_ms: 1_000,
            max_wait_secs: 60,
            breaker_failures: 5,
            breaker_open_ms: 30_000,
            allow_loopback: false,
            allow_private: false,
        }
    }
}

impl WorkflowsConfig {
    pub(super) fn validate(&self) -> Result<(), InvalidConfig> {
        if self.max_attempts == 0 || self.max_steps == 0 || self.max_concurrent_runs_per_user == 0 {
            return Err(invalid(
                "workflows.max_attempts",
                "max_attempts, max_steps and max_concurrent_runs_per_user must be at least 1",
            ));
        }
        if self.retry_base_ms == 0 || self.retry_base_ms > self.retry_cap_ms {
            return Err(invalid("workflows.retry_base_ms", "must be at least 1 and at most retry_cap_ms"));
        }
        if self.step_timeout_ms == 0 || self.poll_interval_ms == 0 || self.scheduler_tick_ms == 0 {
            return Err(invalid("workflows.step_timeout_ms", "timeouts and intervals must be at least 1"));
        }
        if self.lease_ms < self.step_timeout_ms {
            return Err(invalid("workflows.lease_ms", "must be at least workflows.step_timeout_ms"));
        }
        if self.breaker_failures == 0 {
            return Err(invalid("workflows.breaker_failures", "must be at least 1"));
        }
        Ok(())
    }
}
