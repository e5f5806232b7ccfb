//! [`ReplayActor`]: runs every replay job in status `running`, one page at a time.
//!
//! A page is at most `dlq.replay_page_size` dead letters and at most one second's worth at
//! the job's rate, so a shutdown waits for one short page and several jobs take turns. Each
//! record goes through the single-replay path ([`DeadLetterAdmin::prepare`]); sends are
//! pipelined (started in id order, at the job's rate, up to [`IN_FLIGHT`] awaiting their
//! ack). After the page, one statement marks the sent records replayed, then the job's
//! cursor and counters are saved.
//!
//! The window for a duplicate is one page: records sent whose mark was not written (a crash
//! between the two) are sent again when the job resumes; the handlers' offset guards make
//! that harmless. Records marked but whose cursor was not saved are not: a record marked
//! replayed after the job started counts as done by the job without being sent again, so a
//! restart does not redo a finished page.
//!
//! Daemons sharing a store never run one job at once: a daemon claims a job for
//! [`LEASE`] before each page and hands its claims back when it stops.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sea_orm::sea_query::{Condition, Expr, SimpleExpr};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{Interrupts, filter_of};
use crate::Error;
use crate::dlq::DeadLetterAdmin;
use crate::log::Ack;
use crate::metrics::{OUTCOME, STATE, kv, metrics};
use crate::store::replay_job::{self, Column, Entity, ReplayStatus};

/// How long a claim on a job lasts; renewed before every page. A daemon killed without
/// handing back its claims holds its jobs up for at most this long.
pub const LEASE: Duration = Duration::from_secs(30);
/// Sends awaiting their ack at once, per job.
pub const IN_FLIGHT: usize = 64;
/// Running jobs advanced per round (the others wait for the next round).
const JOBS_PER_ROUND: u64 = 16;
/// Waits after a round that hit an error: doubling from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// Runs the replay jobs; one per daemon, under the root supervisor.
pub struct ReplayActor;

/// What the replay actor is asked to do.
pub enum ReplayMsg {
    /// A round: one page of each running job. Only the newest chain of ticks (`seq`) runs,
    /// so waking the actor never multiplies its rounds.
    Tick { seq: u64 },
    /// A job was created or resumed: start a round now.
    Wake,
    /// Test-only fault hook ([`crate::supervision::Service::inject_panic`]).
    InjectPanic,
}

/// What the replay actor runs with.
#[derive(Clone)]
pub struct ReplayArgs {
    pub admin: DeadLetterAdmin,
    pub interrupts: Interrupts,
    /// `dlq.replay_page_size`.
    pub page_size: u32,
    /// How often an idle runner looks for running jobs.
    pub poll: Duration,
    /// This daemon's name in the jobs' claims (one per process, so a restarted incarnation
    /// takes its jobs back at once).
    pub owner: String,
}

/// The replay actor's state: its arguments, the current tick chain, a rate limiter per job.
pub struct ReplayState {
    args: ReplayArgs,
    seq: u64,
    limiters: HashMap<i64, (i32, Arc<DefaultDirectRateLimiter>)>,
    backoff: Option<Duration>,
}

impl Actor for ReplayActor {
    type Msg = ReplayMsg;
    type State = ReplayState;
    type Arguments = ReplayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ReplayMsg>,
        args: ReplayArgs,
    ) -> Result<ReplayState, ActorProcessingErr> {
        // Jobs left running by the previous daemon (or incarnation) resume at once.
        myself.send_message(ReplayMsg::Tick { seq: 0 })?;
        Ok(ReplayState { args, seq: 0, limiters: HashMap::new(), backoff: None })
    }

    async fn handle(
        &self,
        myself: ActorRef<ReplayMsg>,
        msg: ReplayMsg,
        state: &mut ReplayState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ReplayMsg::InjectPanic => panic!("injected fault in the replay actor"),
            ReplayMsg::Wake => {
                state.seq += 1;
                myself.send_message(ReplayMsg::Tick { seq: state.seq })?;
            }
            ReplayMsg::Tick { seq } if seq == state.seq => {
                let busy = match state.round().await {
                    Ok(busy) => {
                        state.backoff = None;
                        busy
                    }
                    Err(err) => {
                        let next = state.backoff.map_or(BACKOFF.0, |b| (b * 2).min(BACKOFF.1));
                        state.backoff = Some(next);
                        tracing::warn!(error = %crate::error::chain(&err), retry_ms = next.as_millis() as u64, "dead-letter replay held up");
                        false
                    }
                };
                if busy {
                    // Through the mailbox, so a stop or a transition gets in between pages.
                    myself.send_message(ReplayMsg::Tick { seq })?;
                } else {
                    let wait = state.backoff.unwrap_or(state.args.poll);
                    myself.send_after(wait, move || ReplayMsg::Tick { seq });
                }
            }
            ReplayMsg::Tick { .. } => {}
        }
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<ReplayMsg>, state: &mut ReplayState) -> Result<(), ActorProcessingErr> {
        // Hand the claims back, so the next daemon resumes these jobs at once.
        let store = &state.args.admin.store;
        let release = Entity::update_many()
            .col_expr(Column::LeaseOwner, Expr::value(Option::<String>::None))
            .col_expr(Column::LeaseUntil, Expr::value(Option::<chrono::DateTime<Utc>>::None))
            .filter(Column::LeaseOwner.eq(state.args.owner.clone()))
            .exec(store.connection());
        if let Err(err) = store.guarded("release_replay_jobs", release).await {
            tracing::warn!(error = %crate::error::chain(&err), "replay jobs not handed back; their claims expire");
        }
        Ok(())
    }
}

/// What one page did.
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub cursor: i64,
    pub replayed: i64,
    pub skipped: i64,
    pub failed: i64,
    /// Sent and acknowledged: marked replayed (also past an error that ended the page).
    pub sent: Vec<i64>,
    /// Every record of the page was handled (none left for an interrupt or an error).
    pub whole: bool,
    /// A send that failed and is worth retrying: ends the page before that record.
    pub held_up: Option<Error>,
    /// The last error that made a record fail for good.
    pub failure: Option<String>,
}

/// One record's fate, in id order.
enum Step {
    /// Marked replayed after the job started: a page a crash cut short already sent it.
    Already(i64),
    Skipped(i64),
    Sent {
        id: i64,
        topic: String,
        result: Result<Ack, Error>,
    },
}

/// A record past its rate wait: handled already, or to send.
enum Ready {
    Done(Step),
    Send(i64, crate::log::OutgoingRecord),
}

/// A record's fate up to its send, with its rate wait when it is to be sent.
async fn prepare(
    admin: DeadLetterAdmin,
    started: chrono::DateTime<Utc>,
    limiter: Arc<DefaultDirectRateLimiter>,
    row: crate::store::dead_letter::Model,
) -> Ready {
    let id = row.id;
    if row.replayed_at.is_some_and(|at| at >= started) {
        return Ready::Done(Step::Already(id));
    }
    match admin.prepare(row) {
        Err(_) => Ready::Done(Step::Skipped(id)),
        Ok((record, _)) => {
            limiter.until_ready().await;
            Ready::Send(id, record)
        }
    }
}

/// Log and store outages: the page stops and is retried; anything else fails the record.
fn worth_retrying(err: &Error) -> bool {
    matches!(
        err,
        Error::LogUnavailable { .. }
            | Error::Kafka { .. }
            | Error::LogFull { .. }
            | Error::Store { .. }
            | Error::BreakerOpen { .. }
            | Error::Timeout { .. }
            | Error::ShuttingDown
    )
}

pub(crate) fn count_job(status: ReplayStatus) {
    metrics().dead_letter_replay_jobs.add(1, &[kv(STATE, status.as_str())]);
}

impl ReplayState {
    /// One page of each running job; true when one of them did something.
    async fn round(&mut self) -> Result<bool, Error> {
        let store = &self.args.admin.store;
        let query = Entity::find()
            .filter(Column::Status.eq(ReplayStatus::Running))
            .order_by_asc(Column::Id)
            .limit(JOBS_PER_ROUND);
        let jobs = store.guarded("running_replay_jobs", query.all(store.connection())).await?;
        self.limiters.retain(|id, _| jobs.iter().any(|j| j.id == *id));
        self.args.interrupts.keep_only(&jobs.iter().map(|j| j.id).collect::<Vec<_>>());
        let mut busy = false;
        let mut held_up = None;
        for job in jobs {
            match self.advance(&job).await {
                Ok(did) => busy |= did,
                Err(err) => held_up = Some(err),
            }
        }
        match held_up {
            Some(err) if !busy => Err(err),
            _ => Ok(busy),
        }
    }

    fn limiter(&mut self, job: &replay_job::Model) -> Arc<DefaultDirectRateLimiter> {
        let rate = job.rate;
        let entry = self.limiters.entry(job.id).or_insert_with(|| (rate, limiter(rate)));
        if entry.0 != rate {
            *entry = (rate, limiter(rate));
        }
        entry.1.clone()
    }

    /// Claims `job` and runs one page of it; finishes it when nothing is left.
    async fn advance(&mut self, job: &replay_job::Model) -> Result<bool, Error> {
        let args = &self.args;
        // Cleared before the claim, which re-reads the status: a change after it is seen.
        args.interrupts.clear(job.id);
        if !claim(args, job.id).await? {
            return Ok(false);
        }
        let size = u64::from(args.page_size).min(job.rate.max(1) as u64);
        let rows = args.admin.page(&filter_of(job), job.cursor, job.max_id, size).await?;
        let last_page = (rows.len() as u64) < size;
        let limiter = self.limiter(job);
        let page = run_page(&self.args, job, rows, &limiter).await;
        let args = &self.args;
        // Marked first: a record marked but not yet under the cursor is not sent again.
        args.admin.mark_replayed(&page.sent).await?;
        save(args, job, &page).await?;
        for (outcome, n) in [("replayed", page.replayed), ("skipped", page.skipped), ("failed", page.failed)] {
            if n > 0 {
                metrics().dead_letter_replay_records.add(n as u64, &[kv(OUTCOME, outcome)]);
            }
        }
        if let Some(err) = page.held_up {
            return Err(err);
        }
        if last_page && page.whole {
            finish(args, job, job.failed + page.failed).await?;
        }
        Ok(page.cursor > job.cursor || (last_page && page.whole))
    }
}

pub(crate) fn limiter(rate: i32) -> Arc<DefaultDirectRateLimiter> {
    let per_second = NonZeroU32::new(rate.max(1) as u32).unwrap_or(NonZeroU32::MIN);
    // A tenth of a second's worth at once: steady, yet not one timer per record at high rates.
    let burst = NonZeroU32::new(per_second.get() / 10).unwrap_or(NonZeroU32::MIN);
    Arc::new(RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)))
}

/// Claims `id` for this daemon for [`LEASE`] if it is running and nobody else holds it.
async fn claim(args: &ReplayArgs, id: i64) -> Result<bool, Error> {
    let now = Utc::now();
    let until = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
    let free = Condition::any()
        .add(Column::LeaseOwner.is_null())
        .add(Column::LeaseOwner.eq(args.owner.clone()))
        .add(Column::LeaseUntil.lt(now));
    let update = Entity::update_many()
        .col_expr(Column::LeaseOwner, Expr::value(Some(args.owner.clone())))
        .col_expr(Column::LeaseUntil, Expr::value(Some(until)))
        .filter(Column::Id.eq(id))
        .filter(Column::Status.eq(ReplayStatus::Running))
        .filter(free)
        .exec(args.admin.store.connection());
    Ok(args.admin.store.guarded("claim_replay_job", update).await?.rows_affected > 0)
}

/// Replays `rows` (one page of `job`, in id order) at the limiter's pace, stopping early
/// when the job's status changes on this daemon or a send fails in a way worth retrying.
pub(crate) async fn run_page(
    args: &ReplayArgs,
    job: &replay_job::Model,
    rows: Vec<crate::store::dead_letter::Model>,
    limiter: &Arc<DefaultDirectRateLimiter>,
) -> Page {
    let total = rows.len();
    let halted = Arc::new(AtomicBool::new(false));
    // Owned clones in the stream's closures: borrowed ones defeat the `Send` proof the
    // actor's handler needs.
    let (id, started) = (job.id, job.created_at);
    let (admin, interrupts) = (args.admin.clone(), args.interrupts.clone());
    let (prep_admin, stop) = (admin.clone(), halted.clone());
    let limiter = limiter.clone();
    // Sequential up to the send: each record waits for the rate, then for the check that
    // the job was not paused, cancelled or held up meanwhile (so a pause takes effect before
    // the next record, although `buffered` pulls records ahead); only the acks overlap.
    let steps = futures::stream::iter(rows)
        .then(move |row| prepare(prep_admin.clone(), started, limiter.clone(), row))
        .take_while(move |_| futures::future::ready(!stop.load(Ordering::Relaxed) && !interrupts.is_raised(id)))
        .map(move |ready| {
            let admin = admin.clone();
            async move {
                match ready {
                    Ready::Done(step) => step,
                    Ready::Send(id, record) => {
                        let topic = record.topic.clone();
                        Step::Sent { id, topic, result: admin.producer.send(record, admin.timeout).await }
                    }
                }
            }
        })
        // Started in order (so one key's records reach the log in id order), acked in any.
        .buffered(IN_FLIGHT);
    futures::pin_mut!(steps);
    let mut page = Page { cursor: job.cursor, ..Page::default() };
    let mut handled = 0;
    while let Some(step) = steps.next().await {
        let counted = page.held_up.is_none();
        match step {
            Step::Already(id) if counted => (page.cursor, page.replayed) = (id, page.replayed + 1),
            Step::Skipped(id) if counted => (page.cursor, page.skipped) = (id, page.skipped + 1),
            Step::Sent { id, topic, result: Ok(_) } => {
                page.sent.push(id);
                DeadLetterAdmin::count_replayed(&topic, 1);
                if counted {
                    (page.cursor, page.replayed) = (id, page.replayed + 1);
                }
            }
            Step::Sent { id, result: Err(err), .. } if counted => {
                if worth_retrying(&err) {
                    halted.store(true, Ordering::Relaxed);
                    page.held_up = Some(err);
                    continue;
                }
                tracing::warn!(job = job.id, id, error = %crate::error::chain(&err), "dead letter not replayed");
                page.failure = Some(err.to_string());
                (page.cursor, page.failed) = (id, page.failed + 1);
            }
            _ => continue,
        }
        handled += 1;
    }
    page.whole = page.held_up.is_none() && handled == total;
    page
}

/// Saves the page's cursor and counters (added to the stored ones) and the last error.
async fn save(args: &ReplayArgs, job: &replay_job::Model, page: &Page) -> Result<(), Error> {
    let last_error = match (&page.held_up, &page.failure) {
        (Some(err), _) => Some(err.to_string()),
        (None, Some(failure)) => Some(failure.clone()),
        (None, None) if page.cursor > job.cursor => None,
        (None, None) => job.last_error.clone(),
    };
    let update = Entity::update_many()
        .col_expr(Column::Cursor, Expr::value(page.cursor))
        .col_expr(Column::Replayed, plus(Column::Replayed, page.replayed))
        .col_expr(Column::Skipped, plus(Column::Skipped, page.skipped))
        .col_expr(Column::Failed, plus(Column::Failed, page.failed))
        .col_expr(Column::LastError, Expr::value(last_error))
        .col_expr(Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(Column::Id.eq(job.id))
        // Only from the cursor this page started at: a page is never counted twice.
        .filter(Column::Cursor.eq(job.cursor))
        .exec(args.admin.store.connection());
    args.admin.store.guarded("save_replay_job", update).await?;
    Ok(())
}

/// `column + n` (ExprTrait's `add`, named so it does not shadow `Ord::min` and friends).
fn plus(column: Column, n: i64) -> SimpleExpr {
    sea_orm::sea_query::ExprTrait::add(Expr::col(column), n)
}

/// Ends a job with nothing left: completed, or failed when records could not be replayed.
async fn finish(args: &ReplayArgs, job: &replay_job::Model, failed: i64) -> Result<(), Error> {
    let status = if failed > 0 { ReplayStatus::Failed } else { ReplayStatus::Completed };
    let now = Utc::now();
    let update = Entity::update_many()
        .col_expr(Column::Status, Expr::value(status))
        .col_expr(Column::FinishedAt, Expr::value(Some(now)))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .col_expr(Column::LeaseOwner, Expr::value(Option::<String>::None))
        .col_expr(Column::LeaseUntil, Expr::value(Option::<chrono::DateTime<Utc>>::None))
        .filter(Column::Id.eq(job.id))
        // A pause or cancel that got in first stands.
        .filter(Column::Status.eq(ReplayStatus::Running))
        .exec(args.admin.store.connection());
    if args.admin.store.guarded("finish_replay_job", update).await?.rows_affected > 0 {
        count_job(status);
        tracing::info!(job = job.id, status = status.as_str(), "dead-letter replay job finished");
    }
    Ok(())
}
