//! `replay_jobs`: dead-letter replay jobs ([`crate::replay`]). A job replays the dead letters
//! matching its filter whose id is at most `max_id` (the newest id when it was created, so
//! the records it replays, dead-lettered again, are not picked up by the same job), in id
//! order, from `cursor` on.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Where a replay job stands. `running` → `paused` ⇄ `running`; `running`/`paused` →
/// `cancelled`; `running` → `completed` or `failed` (it ended with records that could not be
/// replayed). The last three are final.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, utoipa::ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ReplayStatus {
    Running,
    Paused,
    Cancelled,
    Completed,
    Failed,
}

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "replay_jobs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub status: ReplayStatus,
    /// The filter (a `DeadLetterFilter` without paging).
    pub source_topic: Option<String>,
    pub error_class: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// The newest dead-letter id at creation: the job never goes past it.
    pub max_id: i64,
    /// The last dead-letter id handled (0 before the first); a restart resumes after it.
    pub cursor: i64,
    /// Records per second.
    pub rate: i32,
    /// Dead letters matching at creation.
    pub matched: i64,
    pub replayed: i64,
    /// Not replayed: already replayed `dlq.max_replays` times.
    pub skipped: i64,
    /// Could not be replayed (an error that retrying does not mend).
    pub failed: i64,
    /// The last error that held the job up (it retries); cleared by a page that succeeds.
    pub last_error: Option<String>,
    /// The daemon running it, until `lease_until` (so daemons sharing a store never run a
    /// job twice at once); released on shutdown.
    pub lease_owner: Option<String>,
    pub lease_until: Option<ChronoDateTimeUtc>,
    pub created_at: ChronoDateTimeUtc,
    pub updated_at: ChronoDateTimeUtc,
    pub finished_at: Option<ChronoDateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
