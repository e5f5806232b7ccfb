//! Retention: deletes what the store no longer needs, so a daemon that runs for months
//! keeps bounded tables. One actor runs a purge round every `retention.interval_ms`: each
//! rule deletes in batches of `retention.batch_size` (children before their parents, in
//! one transaction per batch) until a batch comes back short, pausing between batches so
//! that request handlers and consumers always find a free connection. Nothing unfinished
//! is ever purged: pending deliveries, running runs, started sagas and unpublished outbox
//! records stay whatever their age.
//!
//! | rule | rows | key |
//! |---|---|---|
//! | deliveries | finished deliveries + their attempts | `deliveries_secs` |
//! | notifications | notifications no delivery refers to | `notifications_secs` |
//! | runs | succeeded/failed runs + their steps | `finished_runs_secs` |
//! | sagas | completed/compensated sagas + their steps | `finished_sagas_secs` |
//! | outbox | published outbox records | `outbox_relayed_secs` |
//! | dead letters | index entries whose record the log deleted, or older than | `dead_letters_secs` |
//! | tokens | expired refresh tokens and revocations | `expired_tokens_secs` |

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::Error;
use crate::config::Config;
use crate::log::LogBackend;
use crate::metrics::{TABLE, kv, metrics};
use crate::store::Store;
use crate::store::retention::{Batch, Table};
use crate::supervision::{ActorService, Slot};

/// One retention rule (named in logs and in a report's failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    Deliveries,
    Notifications,
    Runs,
    Sagas,
    Outbox,
    /// Index entries whose record is below its partition's log start.
    DeadLettersGone,
    /// Index entries older than `dead_letters_secs`.
    DeadLettersAge,
    RefreshTokens,
    Revocations,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Deliveries => "deliveries",
            Rule::Notifications => "notifications",
            Rule::Runs => "runs",
            Rule::Sagas => "sagas",
            Rule::Outbox => "outbox",
            Rule::DeadLettersGone => "dead_letters_gone",
            Rule::DeadLettersAge => "dead_letters_age",
            Rule::RefreshTokens => "refresh_tokens",
            Rule::Revocations => "revocations",
        }
    }
}

/// The effective rules: `None` keeps those rows for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub interval: Duration,
    pub batch_size: u64,
    pub batch_pause: Duration,
    pub deliveries: Option<Duration>,
    pub notifications: Option<Duration>,
    pub runs: Option<Duration>,
    pub sagas: Option<Duration>,
    pub outbox: Option<Duration>,
    pub dead_letters: Option<Duration>,
    pub tokens: Option<Duration>,
}

impl Rules {
    pub fn from_config(config: &Config) -> Self {
        let r = &config.retention;
        Rules {
            interval: r.interval(),
            batch_size: r.batch_size,
            batch_pause: r.batch_pause(),
            deliveries: r.deliveries(),
            notifications: r.notifications(config.webhooks.dedup_window_secs),
            runs: r.finished_runs(),
            sagas: r.finished_sagas(),
            outbox: r.outbox_relayed(),
            dead_letters: r.dead_letters(),
            tokens: r.expired_tokens(),
        }
    }

    /// The age-based rules with their cutoffs at `now`, parents before what refers to
    /// them: deliveries go before notifications, so a notification whose last delivery
    /// was purged goes in the same round.
    fn cutoffs(&self, now: DateTime<Utc>) -> Vec<(Rule, DateTime<Utc>)> {
        let at = |keep: Duration| now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        [
            (Rule::Deliveries, self.deliveries),
            (Rule::Notifications, self.notifications),
            (Rule::Runs, self.runs),
            (Rule::Sagas, self.sagas),
            (Rule::Outbox, self.outbox),
            (Rule::DeadLettersAge, self.dead_letters),
            (Rule::RefreshTokens, self.tokens),
            (Rule::Revocations, self.tokens),
        ]
        .into_iter()
        .filter_map(|(rule, keep)| keep.map(|keep| (rule, at(keep))))
        .collect()
    }
}

/// What one purge round removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Rows deleted per table (tables with none are absent).
    pub removed: BTreeMap<Table, u64>,
    /// Rules that hit a store or log error this round (logged; retried next round).
    pub failed: Vec<Rule>,
    /// Batches run (every rule runs at least one).
    pub batches: u64,
}

impl PurgeReport {
    pub fn total(&self) -> u64 {
        self.removed.values().sum()
    }

    pub fn of(&self, table: Table) -> u64 {
        self.removed.get(&table).copied().unwrap_or(0)
    }
}

impl fmt::Display for PurgeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (table, n) in &self.removed {
            write!(f, "{}{}={n}", if first { "" } else { " " }, table.as_str())?;
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
    let (store, rules) = (&args.store, &args.rules);
    for (rule, cutoff) in rules.cutoffs(now) {
        match rule {
            Rule::Deliveries => drain(rule, rules, &mut report, move |n| store.purge_deliveries(cutoff, n)).await,
            Rule::Notifications => drain(rule, rules, &mut report, move |n| store.purge_notifications(cutoff, n)).await,
            Rule::Runs => drain(rule, rules, &mut report, move |n| store.purge_runs(cutoff, n)).await,
            Rule::Sagas => drain(rule, rules, &mut report, move |n| store.purge_sagas(cutoff, n)).await,
            Rule::Outbox => drain(rule, rules, &mut report, move |n| store.purge_outbox(cutoff, n)).await,
            Rule::DeadLettersAge => {
                drain(rule, rules, &mut report, move |n| store.purge_dead_letters_before(cutoff, n)).await;
            }
            Rule::RefreshTokens => {
                drain(rule, rules, &mut report, move |n| store.purge_refresh_tokens(cutoff, n)).await
            }
            Rule::Revocations => drain(rule, rules, &mut report, move |n| store.purge_revocations(cutoff, n)).await,
            Rule::DeadLettersGone => {}
        }
    }
    purge_gone_dead_letters(args, &mut report).await;
    report
}

/// Index entries below their partition's log start describe records that no longer exist.
async fn purge_gone_dead_letters(args: &RetentionArgs, report: &mut PurgeReport) {
    let rule = Rule::DeadLettersGone;
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

fn failed(rule: Rule, err: &Error, report: &mut PurgeReport) {
    tracing::warn!(
        error = err as &dyn std::error::Error,
        rule = rule.as_str(),
        "retention: purge failed; retried next round"
    );
    report.failed.push(rule);
}

/// Runs `batch` until it selects fewer rows than the batch size, counting what it removed.
async fn drain<F, Fut>(rule: Rule, rules: &Rules, report: &mut PurgeReport, mut batch: F)
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
            metrics().retention_purged.add(rows, &[kv(TABLE, table.as_str())]);
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
