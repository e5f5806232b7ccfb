//! `[retention]`: how long finished rows stay in the store before the retention actor
//! deletes them (see `crate::retention`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{InvalidConfig, invalid};

const DAY: u64 = 86_400;

/// Every key is in seconds; 0 turns its rule off (the rows are kept for ever).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// How often a purge round runs.
    pub interval_ms: u64,
    /// Rows deleted per statement; a rule repeats until a batch comes back short.
    pub batch_size: u64,
    /// Pause between two batches, so a long purge never holds the store's pool.
    pub batch_pause_ms: u64,
    /// Finished webhook deliveries (succeeded, failed, discarded) and their attempts, this
    /// long after their last change. Pending deliveries are never purged.
    pub deliveries_secs: u64,
    /// Notifications this long after they were received, once no delivery refers to them.
    /// Unset: `webhooks.dedup_window_secs` (a shorter value would let duplicates through).
    pub notifications_secs: Option<u64>,
    /// Finished workflow runs (succeeded, failed) and their steps, this long after they finished.
    pub finished_runs_secs: u64,
    /// Finished sagas (completed, compensated) and their steps, this long after their last change.
    pub finished_sagas_secs: u64,
    /// Published outbox records, this long after publication (not at once: records with
    /// deterministic ids also keep a redelivered event from being announced twice).
    pub outbox_relayed_secs: u64,
    /// Dead-letter index entries this long after they were indexed (entries whose record
    /// the log no longer holds are purged whatever their age).
    pub dead_letters_secs: u64,
    /// Refresh tokens and revocations this long after they expired (they refuse nothing then).
    pub expired_tokens_secs: u64,
    /// Idempotency keys this long after their window (`ingest.idempotency_window_secs`)
    /// ended; an expired key replays and refuses nothing, so this only delays the sweep.
    pub idempotency_keys_secs: u64,
    /// Finished dead-letter replay jobs (completed, cancelled, failed), this long after they
    /// finished. Running and paused jobs are never purged.
    pub finished_replays_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            interval_ms: 60_000,
            batch_size: 1_000,
            batch_pause_ms: 10,
            deliveries_secs: 30 * DAY,
            notifications_secs: None,
            finished_runs_secs: 30 * DAY,
            finished_sagas_secs: 30 * DAY,
            outbox_relayed_secs: 7 * DAY,
            dead_letters_secs: 30 * DAY,
            expired_tokens_secs: 3_600,
            idempotency_keys_secs: 3_600,
            finished_replays_secs: 7 * DAY,
        }
    }
}

/// 0 means "keep for ever".
fn rule(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

impl RetentionConfig {
    pub(super) fn validate(&self, dedup_window_secs: u64) -> Result<(), InvalidConfig> {
        if self.interval_ms == 0 {
            return Err(invalid("retention.interval_ms", "must be at least 1"));
        }
        if self.batch_size == 0 || self.batch_size > 100_000 {
            return Err(invalid("retention.batch_size", "must be between 1 and 100000"));
        }
        if let Some(secs) = self.notifications_secs
            && secs != 0
            && secs < dedup_window_secs
        {
            return Err(invalid(
                "retention.notifications_secs",
                "must be 0 (off) or at least webhooks.dedup_window_secs, or a duplicate would be accepted",
            ));
        }
        Ok(())
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    pub fn batch_pause(&self) -> Duration {
        Duration::from_millis(self.batch_pause_ms)
    }
    pub fn deliveries(&self) -> Option<Duration> {
        rule(self.deliveries_secs)
    }
    /// The notifications rule, defaulting to the dedup window.
    pub fn notifications(&self, dedup_window_secs: u64) -> Option<Duration> {
        rule(self.notifications_secs.unwrap_or(dedup_window_secs))
    }
    pub fn finished_runs(&self) -> Option<Duration> {
        rule(self.finished_runs_secs)
    }
    pub fn finished_sagas(&self) -> Option<Duration> {
        rule(self.finished_sagas_secs)
    }
    pub fn outbox_relayed(&self) -> Option<Duration> {
        rule(self.outbox_relayed_secs)
    }
    pub fn dead_letters(&self) -> Option<Duration> {
        rule(self.dead_letters_secs)
    }
    pub fn expired_tokens(&self) -> Option<Duration> {
        rule(self.expired_tokens_secs)
    }
    pub fn idempotency_keys(&self) -> Option<Duration> {
        rule(self.idempotency_keys_secs)
    }

    pub fn finished_replays(&self) -> Option<Duration> {
        rule(self.finished_replays_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_default_to_the_dedup_window_and_never_undercut_it() {
        let c = RetentionConfig::default();
        assert_eq!(c.notifications(86_400), Some(Duration::from_secs(86_400)));
        assert_eq!(c.validate(86_400), Ok(()));
        let short = RetentionConfig { notifications_secs: Some(60), ..RetentionConfig::default() };
        assert_eq!(short.validate(86_400).map_err(|e| e.key), Err("retention.notifications_secs"));
        assert_eq!(short.validate(30), Ok(()));
        let off = RetentionConfig { notifications_secs: Some(0), ..RetentionConfig::default() };
        assert_eq!(off.validate(86_400), Ok(()));
        assert_eq!(off.notifications(86_400), None);
    }

    #[test]
    fn zero_turns_a_rule_off_and_batches_are_bounded() {
        let c = RetentionConfig { deliveries_secs: 0, ..RetentionConfig::default() };
        assert_eq!(c.deliveries(), None);
        assert_eq!(c.finished_runs(), Some(Duration::from_secs(30 * DAY)));
        let c = RetentionConfig { batch_size: 0, ..RetentionConfig::default() };
        assert_eq!(c.validate(1).map_err(|e| e.key), Err("retention.batch_size"));
        let c = RetentionConfig { interval_ms: 0, ..RetentionConfig::default() };
        assert_eq!(c.validate(1).map_err(|e| e.key), Err("retention.interval_ms"));
    }
}
