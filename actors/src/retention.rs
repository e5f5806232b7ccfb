//! Retention: deletes what the store no longer needs, so a daemon that runs for months
//! keeps bounded tables. One actor runs a purge round every `retention.interval_ms`: each
//! rule deletes in batches of `retention.batch_size` (children before their parents, in
//! one transaction per batch) until a batch comes back short, pausing between batches so
//! that request handlers and consumers always find a free connection. Nothing unfinished
//! is ever purged: pending deliveries, running runs, started sagas and unpublished outbox
//! records stay whatever their age.
//!
//! The rules come from the crates that own the tables ([`PurgeRule`]); the engine lists
//! them in `[retention]`'s order. The runtime's own rules remove dead-letter index entries
//! whose record the log deleted, or older than `dead_letters_secs`, idempotency keys
//! `idempotency_keys_secs` after their window ended, and finished replay jobs older than
//! `finished_replays_secs`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::Error;
use crate::config::RetentionConfig;
use crate::log::LogBackend;
use crate::metrics::{TABLE, kv, metrics};
use crate::store::Store;
use crate::store::retention::Batch;
use crate::supervision::{ActorService, Slot};

/// A batch purge: `(cutoff, limit)` → what one batch removed.
pub type PurgeFn = Arc<dyn Fn(DateTime<Utc>, u64) -> BoxFuture<'static, Result<Batch, Error>> + Send + Sync>;

/// One retention rule, registered by the crate that owns its tables.
#[derive(Clone)]
pub struct PurgeRule {
    /// Named in logs and in a report's failures.
    pub name: &'static str,
    /// Rows older than this go; `None` keeps them for ever.
    pub keep: Option<Duration>,
    pub purge: PurgeFn,
}

impl PurgeRule {
    pub fn new<F, Fut>(name: &'static str, keep: Option<Duration>, purge: F) -> Self
    where
        F: Fn(DateTime<Utc>, u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Batch, Error>> + Send + 'static,
    {
        PurgeRule { name, keep, purge: Arc::new(move |cutoff, limit| Box::pin(purge(cutoff, limit))) }
    }
}

impl fmt::Debug for PurgeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PurgeRule").field("name", &self.name).field("keep", &self.keep).finish()
    }
}

/// The dead-letter rule that purges entries whose record is below the log start.
pub const DEAD_LETTERS_GONE: &str = "dead_letters_gone";

/// The schedule and the effective rules.
#[derive(Debug, Clone)]
pub struct Rules {
    pub interval: Duration,
    pub batch_size: u64,
    pub batch_pause: Duration,
    /// Run in this order: parents before what refers to them (deliveries before
    /// notifications, so a notification whose last delivery was purged goes in the same
    /// round).
    pub rules: Vec<PurgeRule>,
}

impl Rules {
    /// The schedule from `[retention]`, `rules`, then the runtime's own: the dead-letter
    /// age rule and the expired idempotency keys.
    pub fn new(config: &RetentionConfig, store: &Store, rules: Vec<PurgeRule>) -> Self {
        let dead_letters = store.clone();
        let age = PurgeRule::new("dead_letters_age", config.dead_letters(), move |cutoff, n| {
            let store = dead_letters.clone();
            async move { store.purge_dead_letters_before(cutoff, n).await }
        });
        let keys = store.clone();
        let expired_keys = PurgeRule::new("idempotency_keys_expired", config.idempotency_keys(), move |cutoff, n| {
            let store = keys.clone();
            async move { store.purge_idempotency_keys_expired_before(cutoff, n).await }
        });
        let replays = store.clone();
        let finished_replays = PurgeRule::new("finished_replays", config.finished_replays(), move |cutoff, n| {
            let store = replays.clone();
            async move { store.purge_finished_replays_before(cutoff, n).await }
        });
        Rules {
            interval: config.interval(),
            batch_size: config.batch_size,
            batch_pause: config.batch_pause(),
            rules: rules.into_iter().chain([age, expired_keys, finished_replays]).collect(),
        }
    }

    /// The age-based rules with their cutoffs at `now`.
    fn cutoffs(&self, now: DateTime<Utc>) -> Vec<(&PurgeRule, DateTime<Utc>)> {
        let at = |keep: Duration| now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        self.rules.iter().filter_map(|rule| rule.keep.map(|keep| (rule, at(keep)))).collect()
    }
}

/// What one purge round removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Rows deleted per table (tables with none are absent).
    pub removed: BTreeMap<&'static str, u64>,
    /// Rules that hit a store or log error this round (logged; retried next round).
    pub failed: Vec<&'static str>,
    /// Batches run (every rule runs at least one).
    pub batches: u64,
}

impl PurgeReport {
    pub fn total(&self) -> u64 {
        self.removed.values().sum()
    }

    pub fn of(&self, table: &str) -> u64 {
        self.removed.get(table).copied().unwrap_or(0)
    }
}

impl fmt::Display for PurgeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (table, n) in &self.removed {
            write!(f, "{}{table}={n}", if first { "" } else { " " })?;
            first = false;
        }
        Ok(())
    }
}

/// Runs purge rounds on a timer; on its own so a long round never delays anyone else.
pub struct RetentionActor;

/// What the retention actor is asked to do.
pub enum RetentionMsg {
    /// The timer: runs a round, then schedules the next one `interval` after it ends.
    Tick,
    /// Runs a round now and answers what it removed (tests, admin).
    PurgeNow { reply: RpcReplyPort<PurgeReport> },
    /// Test-only fault hook ([`crate::supervision::Service::inject_panic`]).
    InjectPanic,
}

/// What the retention actor needs: the store it purges and the log whose start offsets
/// tell which dead letters are gone.
#[derive(Clone)]
pub struct RetentionArgs {
    pub store: Store,
    pub log: Arc<dyn LogBackend>,
    pub rules: Rules,
}

/// The actor's state: its arguments, and the rows removed since it started (status page).
pub struct RetentionState {
    args: RetentionArgs,
    removed_total: u64,
}

impl Actor for RetentionActor {
    type Msg = RetentionMsg;
    type State = RetentionState;
    type Arguments = RetentionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RetentionMsg>,
        args: RetentionArgs,
    ) -> Result<RetentionState, ActorProcessingErr> {
        // The first round waits an interval: start-up has better things to do with the store.
        myself.send_after(args.rules.interval, || RetentionMsg::Tick);
        Ok(RetentionState { args, removed_total: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<RetentionMsg>,
        msg: RetentionMsg,
        state: &mut RetentionState,
    ) -> Result<(), ActorProcessingErr> {
        if let RetentionMsg::InjectPanic = msg {
            panic!("injected fault in the retention actor");
        }
        let report = round(&state.args, Utc::now()).await;
        state.removed_total += report.total();
        if report.total() > 0 {
            tracing::info!(removed = report.total(), tables = %report, "retention: purged finished rows");
        }
        match msg {
            RetentionMsg::Tick => {
                myself.send_after(state.args.rules.interval, || RetentionMsg::Tick);
            }
            RetentionMsg::PurgeNow { reply } => {
                let _ = reply.send(report);
            }
            RetentionMsg::InjectPanic => {}
        }
        Ok(())
    }
}

/// One round: every rule, each until a batch comes back short. Errors end that rule for
/// this round only.
pub async fn round(args: &RetentionArgs, now: DateTime<Utc>) -> PurgeReport {
    let mut report = PurgeReport::default();
    let rules = &args.rules;
    for (rule, cutoff) in rules.cutoffs(now) {
        let purge = &rule.purge;
        drain(rule.name, rules, &mut report, move |n| purge(cutoff, n)).await;
    }
    purge_gone_dead_letters(args, &mut report).await;
    report
}

/// Index entries below their partition's log start describe records that no longer exist.
async fn purge_gone_dead_letters(args: &RetentionArgs, report: &mut PurgeReport) {
    let rule = DEAD_LETTERS_GONE;
    let topics = match args.store.dead_letter_topics().await {
        Ok(topics) => topics,
        Err(err) => return failed(rule, &err, report),
    };
    for topic in topics {
        let starts = match args.log.start_offsets(&topic).await {
            Ok(starts) => starts,
            Err(err) => {
                failed(rule, &err, report);
                continue;
            }
        };
        for (partition, start) in starts.into_iter().filter(|(_, start)| *start > 0) {
            let store = &args.store;
            let topic = topic.as_str();
            drain(rule, &args.rules, report, move |n| store.purge_dead_letters_below(topic, partition, start, n)).await;
        }
    }
}

fn failed(rule: &'static str, err: &Error, report: &mut PurgeReport) {
    tracing::warn!(error = %crate::error::chain(err), rule, "retention: purge failed; retried next round");
    report.failed.push(rule);
}

/// Runs `batch` until it selects fewer rows than the batch size, counting what it removed.
async fn drain<F, Fut>(rule: &'static str, rules: &Rules, report: &mut PurgeReport, mut batch: F)
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<Batch, Error>>,
{
    loop {
        report.batches += 1;
        let done = match batch(rules.batch_size).await {
            Ok(done) => done,
            Err(err) => return failed(rule, &err, report),
        };
        for (table, rows) in done.removed.into_iter().filter(|(_, rows)| *rows > 0) {
            metrics().retention_purged.add(rows, &[kv(TABLE, table)]);
            *report.removed.entry(table).or_default() += rows;
        }
        if done.selected < rules.batch_size {
            return;
        }
        tokio::time::sleep(rules.batch_pause).await;
    }
}

/// The retention actor's handle; it finds the current incarnation through its slot.
#[derive(Clone)]
pub struct Retention {
    slot: Slot<RetentionMsg>,
}

impl Retention {
    /// Runs a round now (after any round in progress) and answers what it removed.
    pub async fn purge_now(&self) -> Result<PurgeReport, Error> {
        let actor = self.slot.get()?;
        ractor::call!(actor, |reply| RetentionMsg::PurgeNow { reply }).map_err(|e| Error::Actor {
            actor: "retention".into(),
            op: "purge now",
            source: Box::new(e),
        })
    }

    /// Stops the running incarnation (only for an actor started with [`spawn`]; the root
    /// supervisor stops its services itself).
    pub fn stop(&self) {
        if let Ok(actor) = self.slot.get() {
            actor.stop(Some("shutdown".into()));
        }
    }
}

/// The retention actor as a service of the root supervisor, with its handle.
pub fn service(args: RetentionArgs) -> (Retention, ActorService<RetentionActor>) {
    let slot = Slot::new("retention");
    let service = ActorService::new(
        "RetentionActor",
        slot.clone(),
        || RetentionMsg::InjectPanic,
        move || (RetentionActor, args.clone()),
    )
    // Purging waits for the next round; nothing the daemon serves depends on it.
    .non_essential();
    (Retention { slot }, service)
}

/// Starts the retention actor on its own, linked to `supervisor` when one is given.
pub async fn spawn(args: RetentionArgs, supervisor: Option<ActorCell>) -> Result<Retention, Error> {
    let spawned = match supervisor {
        Some(sup) => Actor::spawn_linked(None, RetentionActor, args, sup).await,
        None => Actor::spawn(None, RetentionActor, args).await,
    };
    let (actor, _) =
        spawned.map_err(|e| Error::Actor { actor: "retention".into(), op: "spawn", source: Box::new(e) })?;
    Ok(Retention { slot: Slot::holding("retention", actor) })
}

#[cfg(test)]
mod tests;
