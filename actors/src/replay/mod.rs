//! Dead-letter replay as a server-side job: after an outage with thousands of dead
//! letters, an operator starts one job (`POST /admin/replays`, `conveyor dlq replay`) that
//! sends every matching dead letter back to its source topic at a set rate, shows its
//! progress, can be paused, resumed and cancelled, and survives a restart.
//!
//! A job is a row of `replay_jobs` ([`crate::store::replay_job`]): its filter (a
//! [`DeadLetterFilter`] without paging), rate, status, counters and a cursor, the last
//! dead-letter id it handled. It covers the dead letters with an id up to the newest one at
//! creation, so the records it replays, dead-lettered again, do not feed the same job.
//! [`ReplayActor`] (a service of the root supervisor, "dead-letter-replay") runs every job
//! in status `running`, one page at a time, each record through the same replay path as a
//! single replay ([`DeadLetterAdmin`]).

mod runner;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Serialize;

use crate::Error;
use crate::config::REPLAY_MAX_RATE;
use crate::dlq::{DeadLetterAdmin, DeadLetterFilter};
use crate::error::FieldError;
use crate::store::replay_job::{self, Column, Entity, ReplayStatus};
use crate::supervision::{ActorService, Slot};

pub use runner::{ReplayActor, ReplayArgs, ReplayMsg, ReplayState};
#[cfg(test)]
use runner::{limiter, run_page};

/// Job states a transition or the runner may act on, and the final ones.
impl ReplayStatus {
    /// Completed, failed or cancelled: nothing changes any more (and retention may purge it).
    pub const FINAL: [ReplayStatus; 3] = [ReplayStatus::Completed, ReplayStatus::Failed, ReplayStatus::Cancelled];

    pub fn is_final(self) -> bool {
        Self::FINAL.contains(&self)
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayStatus::Running => "running",
            ReplayStatus::Paused => "paused",
            ReplayStatus::Cancelled => "cancelled",
            ReplayStatus::Completed => "completed",
            ReplayStatus::Failed => "failed",
        }
    }
}

/// What an operator may do to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayAction {
    Pause,
    Resume,
    Cancel,
}

impl ReplayAction {
    /// The states the action applies to.
    pub fn from(self) -> &'static [ReplayStatus] {
        match self {
            ReplayAction::Pause => &[ReplayStatus::Running],
            ReplayAction::Resume => &[ReplayStatus::Paused],
            ReplayAction::Cancel => &[ReplayStatus::Running, ReplayStatus::Paused],
        }
    }

    /// The state it leads to.
    pub fn to(self) -> ReplayStatus {
        match self {
            ReplayAction::Pause => ReplayStatus::Paused,
            ReplayAction::Resume => ReplayStatus::Running,
            ReplayAction::Cancel => ReplayStatus::Cancelled,
        }
    }

    /// The state after the action from `status`, or `None` when it does not apply.
    pub fn apply(self, status: ReplayStatus) -> Option<ReplayStatus> {
        self.from().contains(&status).then(|| self.to())
    }

    pub fn verb(self) -> &'static str {
        match self {
            ReplayAction::Pause => "pause",
            ReplayAction::Resume => "resume",
            ReplayAction::Cancel => "cancel",
        }
    }
}

/// A job to create: which dead letters, how fast (records per second; `None`: the
/// configured default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewReplay {
    pub filter: DeadLetterFilter,
    pub rate: Option<u32>,
}

/// What a job would do if it were created now (a dry run creates nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReplayDryRun {
    /// Always true: nothing was created or replayed.
    pub dry_run: bool,
    /// Dead letters matching the filter.
    pub matched: u64,
    /// Of those, the ones that would be replayed (below `dlq.max_replays`).
    pub would_replay: u64,
    /// Of those, the ones that would be skipped (replayed `dlq.max_replays` times already).
    pub would_skip: u64,
}

/// A job as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReplayJobView {
    pub id: i64,
    pub status: ReplayStatus,
    /// The filter: source topic, error class, last failure in `[since_ms, until_ms)` (ms
    /// since the epoch); null fields do not filter.
    pub source_topic: Option<String>,
    pub error_class: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Records per second.
    pub rate: u32,
    /// Dead letters matching when the job was created.
    pub matched: i64,
    /// Sent back to their source topic.
    pub replayed: i64,
    /// Not replayed: already replayed `dlq.max_replays` times.
    pub skipped: i64,
    /// Could not be replayed (an error retrying does not mend).
    pub failed: i64,
    /// Still to handle (0 once the job completed or failed).
    pub remaining: i64,
    /// The last dead-letter id handled (a restart resumes after it).
    pub cursor: i64,
    /// The last error that held the job up (it is retried); null once a page succeeds.
    pub last_error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When it completed, failed or was cancelled.
    pub finished_at: Option<DateTime<Utc>>,
}

impl ReplayJobView {
    pub fn of(m: &replay_job::Model) -> Self {
        let handled = m.replayed + m.skipped + m.failed;
        let remaining = match m.status {
            ReplayStatus::Completed | ReplayStatus::Failed => 0,
            _ => (m.matched - handled).max(0),
        };
        ReplayJobView {
            id: m.id,
            status: m.status,
            source_topic: m.source_topic.clone(),
            error_class: m.error_class.clone(),
            since_ms: m.since_ms,
            until_ms: m.until_ms,
            rate: m.rate.max(0) as u32,
            matched: m.matched,
            replayed: m.replayed,
            skipped: m.skipped,
            failed: m.failed,
            remaining,
            cursor: m.cursor,
            last_error: m.last_error.clone(),
            started_at: m.created_at,
            updated_at: m.updated_at,
            finished_at: m.finished_at,
        }
    }
}

/// The job's filter as the dead-letter queries take it.
pub(crate) fn filter_of(m: &replay_job::Model) -> DeadLetterFilter {
    DeadLetterFilter {
        source_topic: m.source_topic.clone(),
        error_class: m.error_class.clone(),
        since_ms: m.since_ms,
        until_ms: m.until_ms,
        after_id: None,
        limit: None,
    }
}

/// Jobs whose status changed under the runner: it checks this between records, so a
/// pause or cancel on this daemon takes effect before the next record, not the next page.
#[derive(Clone, Default)]
pub struct Interrupts(Arc<Mutex<HashSet<i64>>>);

impl Interrupts {
    fn raise(&self, id: i64) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(id);
    }
    fn is_raised(&self, id: i64) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).contains(&id)
    }
    fn clear(&self, id: i64) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }
    /// Forgets flags of jobs not in `running` (paused, cancelled, finished): only a job being
    /// paged needs one, and the set stays as small as the running jobs.
    fn keep_only(&self, running: &[i64]) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).retain(|id| running.contains(id));
    }
}

/// The replay jobs' handle: create, list, show, pause, resume, cancel.
#[derive(Clone)]
pub struct Replays {
    admin: DeadLetterAdmin,
    slot: Slot<ReplayMsg>,
    interrupts: Interrupts,
    default_rate: u32,
}

/// How many jobs `list` shows at most.
pub const MAX_LIST: u64 = 1_000;

impl Replays {
    /// Checks a new job: the rate within `[1, REPLAY_MAX_RATE]`, filter strings that are not blank. Errors name the field.
    pub fn validate(&self, new: &NewReplay) -> Result<u32, Error> {
        let mut fields = Vec::new();
        let rate = new.rate.unwrap_or(self.default_rate);
        if rate == 0 || rate > REPLAY_MAX_RATE {
            fields.push(FieldError::new("rate", format!("must be from 1 to {REPLAY_MAX_RATE} records per second")));
        }
        let f = &new.filter;
        // An empty time range (until at or before since) is a job that matches nothing and
        // completes at once, as the same filter lists nothing: not an error the schema could state.
        for (name, value) in [("source_topic", &f.source_topic), ("error_class", &f.error_class)] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                fields.push(FieldError::new(name, "must not be blank (leave it out to match any)"));
            }
        }
        if f.after_id.is_some() || f.limit.is_some() {
            fields.push(FieldError::new("filter", "after_id and limit do not apply to a replay job"));
        }
        if fields.is_empty() { Ok(rate) } else { Err(Error::InvalidInput { fields }) }
    }

    /// What a job with `new`'s filter would replay now; creates nothing.
    pub async fn dry_run(&self, new: &NewReplay) -> Result<ReplayDryRun, Error> {
        self.validate(new)?;
        let newest = self.admin.newest_id().await?;
        let matched = self.admin.count_between(&new.filter, 0, newest).await?;
        let would_skip = self.admin.count_exhausted(&new.filter, newest).await?;
        Ok(ReplayDryRun { dry_run: true, matched, would_replay: matched.saturating_sub(would_skip), would_skip })
    }

    /// Creates a running job and wakes the runner.
    pub async fn create(&self, new: &NewReplay) -> Result<ReplayJobView, Error> {
        let rate = self.validate(new)?;
        let newest = self.admin.newest_id().await?;
        let matched = self.admin.count_between(&new.filter, 0, newest).await?;
        let now = Utc::now();
        let f = &new.filter;
        let row = replay_job::ActiveModel {
            status: Set(ReplayStatus::Running),
            source_topic: Set(f.source_topic.clone()),
            error_class: Set(f.error_class.clone()),
            since_ms: Set(f.since_ms),
            until_ms: Set(f.until_ms),
            max_id: Set(newest),
            cursor: Set(0),
            rate: Set(rate as i32),
            matched: Set(matched as i64),
            replayed: Set(0),
            skipped: Set(0),
            failed: Set(0),
            last_error: Set(None),
            lease_owner: Set(None),
            lease_until: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            finished_at: Set(None),
            ..Default::default()
        };
        let store = &self.admin.store;
        let insert = Entity::insert(row).exec(store.connection());
        let id = store.guarded("create_replay_job", insert).await?.last_insert_id;
        runner::count_job(ReplayStatus::Running);
        tracing::info!(job = id, matched, rate, "dead-letter replay job created");
        self.slot.cast(ReplayMsg::Wake);
        self.get(id).await?.ok_or(Error::NotFound { what: "Replay job" })
    }

    /// The newest jobs first.
    pub async fn list(&self, limit: u64) -> Result<Vec<ReplayJobView>, Error> {
        let store = &self.admin.store;
        let query = Entity::find().order_by_desc(Column::Id).limit(limit.clamp(1, MAX_LIST));
        let rows = store.guarded("list_replay_jobs", query.all(store.connection())).await?;
        Ok(rows.iter().map(ReplayJobView::of).collect())
    }

    pub async fn get(&self, id: i64) -> Result<Option<ReplayJobView>, Error> {
        Ok(load(&self.admin, id).await?.as_ref().map(ReplayJobView::of))
    }

    /// Pauses, resumes or cancels a job: [`Error::NotFound`] for an unknown id,
    /// [`Error::Conflict`] when the action does not apply to the job's status. The change is
    /// one conditional update, so it cannot race the runner finishing the job.
    pub async fn act(&self, id: i64, action: ReplayAction) -> Result<ReplayJobView, Error> {
        let store = &self.admin.store;
        let now = Utc::now();
        let mut update = Entity::update_many()
            .col_expr(Column::Status, Expr::value(action.to()))
            .col_expr(Column::UpdatedAt, Expr::value(now));
        if action.to().is_final() {
            update = update.col_expr(Column::FinishedAt, Expr::value(Some(now)));
        }
        let update = update
            .filter(Column::Id.eq(id))
            .filter(Column::Status.is_in(action.from().iter().copied()))
            .exec(store.connection());
        let changed = store.guarded("change_replay_job", update).await?.rows_affected > 0;
        let Some(job) = load(&self.admin, id).await? else {
            return Err(Error::NotFound { what: "Replay job" });
        };
        if !changed {
            return Err(Error::Conflict {
                code: "replay_transition_not_allowed",
                message: format!("cannot {} a replay job that is {}", action.verb(), job.status.as_str()),
            });
        }
        runner::count_job(action.to());
        tracing::info!(job = id, status = action.to().as_str(), "dead-letter replay job changed");
        self.interrupts.raise(id);
        if action == ReplayAction::Resume {
            self.slot.cast(ReplayMsg::Wake);
        }
        Ok(ReplayJobView::of(&job))
    }
}

async fn load(admin: &DeadLetterAdmin, id: i64) -> Result<Option<replay_job::Model>, Error> {
    let store = &admin.store;
    store.guarded("get_replay_job", Entity::find_by_id(id).one(store.connection())).await
}

/// What the runner is configured with besides the dead-letter admin.
#[derive(Debug, Clone, Copy)]
pub struct ReplaySettings {
    /// `dlq.replay_default_rate`.
    pub default_rate: u32,
    /// `dlq.replay_page_size`.
    pub page_size: u32,
    /// How often an idle runner looks for running jobs (a new or resumed job wakes it at once).
    pub poll: Duration,
}

/// The replay runner as a service of the root supervisor, with the jobs' handle.
pub fn service(admin: DeadLetterAdmin, settings: ReplaySettings) -> (Replays, ActorService<ReplayActor>) {
    let slot = Slot::new("dead-letter-replay");
    let interrupts = Interrupts::default();
    let args = ReplayArgs {
        admin: admin.clone(),
        interrupts: interrupts.clone(),
        page_size: settings.page_size,
        poll: settings.poll,
        owner: uuid::Uuid::new_v4().to_string(),
    };
    let service =
        ActorService::new("ReplayActor", slot.clone(), || ReplayMsg::InjectPanic, move || (ReplayActor, args.clone()))
            // Replays wait while it restarts; nothing the daemon serves depends on it.
            .non_essential();
    let replays = Replays { admin, slot, interrupts, default_rate: settings.default_rate };
    (replays, service)
}

#[cfg(test)]
mod tests;
