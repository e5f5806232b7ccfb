//! `[dlq]`: the dead-letter index and replay, one-off and as jobs.

use serde::{Deserialize, Serialize};

use super::{InvalidConfig, invalid};

/// The highest rate (records per second) a replay job may ask for. A constant, not a key:
/// the API's schema states it, so a valid request is never refused by a deployment's setting.
pub const REPLAY_MAX_RATE: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DlqConfig {
    /// Consumer group that indexes dead-letter topics for the admin API.
    pub index_group: String,
    /// A record replayed this many times is not replayed again.
    pub max_replays: u32,
    /// Replay jobs: the rate (records per second) of a job created without one.
    pub replay_default_rate: u32,
    /// Replay jobs: dead letters read per page (a page is also at most one second's worth
    /// at the job's rate); a crash replays at most one page again.
    pub replay_page_size: u32,
    /// Replay jobs: a synchronous filtered replay (`POST /admin/dead-letters/replay`) refuses
    /// a set larger than this and points to the jobs.
    pub replay_sync_limit: u32,
}

impl Default for DlqConfig {
    fn default() -> Self {
        DlqConfig {
            index_group: "conveyor-dlq-index".into(),
            max_replays: 3,
            replay_default_rate: 100,
            replay_page_size: 500,
            replay_sync_limit: 100,
        }
    }
}

impl DlqConfig {
    pub(crate) fn validate(&self) -> Result<(), InvalidConfig> {
        if self.replay_default_rate == 0 || self.replay_default_rate > REPLAY_MAX_RATE {
            return Err(invalid("dlq.replay_default_rate", format!("must be from 1 to {REPLAY_MAX_RATE}")));
        }
        if self.replay_page_size == 0 || self.replay_page_size > 10_000 {
            return Err(invalid("dlq.replay_page_size", "must be from 1 to 10000"));
        }
        if self.replay_sync_limit == 0 || self.replay_sync_limit > 1_000 {
            return Err(invalid("dlq.replay_sync_limit", "must be from 1 to 1000"));
        }
        Ok(())
    }
}
