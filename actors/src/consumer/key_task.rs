//! One key's turn: handle its queued records, retry with backoff, dead-letter what
//! exhausts the policy. Runs as its own task so a key waiting out a backoff never
//! holds up the other keys of its partition.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use opentelemetry::KeyValue;
use tokio_util::sync::CancellationToken;

use super::KeyHandler;
use super::dead_letter::{DeadLetters, Failure};
use super::key_run::KeyRun;
use super::parking::Parking;
use super::stuck::{StuckKey, StuckKeys, StuckReason};
use crate::breaker::{Breaker, BreakerState};
use crate::log::Record;
use crate::metrics::{self, ERROR_CLASS, OUTCOME, kv, metrics};
use crate::retry::{ErrorClass, HandlerError, RetryPolicy};

/// What a key task needs, shared by all key tasks of one partition.
pub(super) struct KeyCtx {
    pub handler: Arc<dyn KeyHandler>,
    pub dead_letters: DeadLetters,
    pub policy: RetryPolicy,
    /// Cancelled when the partition drains: tasks stop waiting and give their records back.
    pub cancel: CancellationToken,
    pub labels: [KeyValue; 2],
    /// The handler's downstreams: while one is not closed, failures cost no attempt.
    pub breakers: Vec<Arc<Breaker>>,
    /// Keys of this partition that are not advancing, for the operator.
    pub stuck: StuckKeys,
    /// The partition's parked keys, on a topic whose policy is `park`.
    pub parking: Option<Arc<Parking>>,
    /// `processing.max_coalesce`: also the page size of a release.
    pub max_coalesce: usize,
}

/// Labels of `conveyor.partition.records.processed`: topic, partition, outcome.
pub(super) fn processed(ctx: &KeyCtx, outcome: &'static str) -> [KeyValue; 3] {
    [ctx.labels[0].clone(), ctx.labels[1].clone(), kv(OUTCOME, outcome)]
}

/// How a key's turn ended.
pub(super) struct KeyOutcome {
    /// Offsets processed or dead-lettered.
    pub done: Vec<i64>,
    /// The partition is draining; records not in `done` stay uncommitted.
    pub abandoned: bool,
}

pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A handler call that turns a panic into a permanent failure instead of a stuck key.
pub(super) async fn call(ctx: &KeyCtx, key: &str, records: &[Record]) -> Result<(), HandlerError> {
    if let Some(err) = ctx.handler.fault_injectable().then(|| super::faults::injected(key)).flatten() {
        return Err(err);
    }
    match AssertUnwindSafe(ctx.handler.handle(key, records)).catch_unwind().await {
        Ok(result) => result,
        Err(_) => Err(HandlerError::permanent(std::io::Error::other("handler panicked"))),
    }
}

/// Handles `records` (same key, ascending offsets).
pub(super) async fn run(ctx: Arc<KeyCtx>, key: String, records: Vec<Record>) -> KeyOutcome {
    use opentelemetry::context::FutureExt;
    use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
    // A consumer span under the producing request's trace (the first record's, when several
    // records of one key are handled together).
    let parent = records.first().and_then(crate::trace::context_of);
    if !crate::trace::recording() {
        return match parent {
            Some(parent) => run_records(ctx, key, records).with_context(parent).await,
            // No trace to carry on: nothing to attach at every poll.
            None => run_records(ctx, key, records).await,
        };
    }
    let parent = parent.unwrap_or_default();
    let tracer = opentelemetry::global::tracer("conveyor.actors");
    let span = tracer
        .span_builder(format!("process {}", ctx.handler.name()))
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            ctx.labels[0].clone(),
            ctx.labels[1].clone(),
            kv("messaging.batch.message_count", records.len() as i64),
        ])
        .start_with_context(&tracer, &parent);
    let cx = parent.with_span(span);
    let outcome = run_records(ctx, key, records).with_context(cx.clone()).await;
    cx.span().end();
    outcome
}

async fn run_records(ctx: Arc<KeyCtx>, key: String, records: Vec<Record>) -> KeyOutcome {
    let started = Instant::now();
    let mut run = KeyRun { ctx: &ctx, key: &key, done: Vec::with_capacity(records.len()) };
    let abandoned = !run.all(records).await;
    let done = run.done;
    // The key's turn is over (done, dead-lettered or given back): it is stuck no longer.
    ctx.stuck.clear(&key);
    let m = metrics();
    m.processing_duration.record(started.elapsed().as_secs_f64(), &ctx.labels);
    KeyOutcome { done, abandoned }
}

/// What the operator sees of a key that is not advancing.
pub(super) struct Stuck<'a> {
    pub reason: StuckReason,
    pub since_ms: i64,
    pub attempts: u32,
    pub error: &'a HandlerError,
    pub next_attempt_ms: Option<i64>,
}

pub(super) fn mark_stuck(ctx: &KeyCtx, key: &str, record: &Record, s: Stuck<'_>) {
    ctx.stuck.set(StuckKey {
        topic: record.tp.topic.clone(),
        partition: record.tp.partition,
        key: key.to_string(),
        handler: ctx.handler.name().to_string(),
        offset: record.offset,
        reason: s.reason,
        since_ms: s.since_ms,
        attempts: s.attempts,
        error_class: s.error.class.into(),
        error: s.error.describe(),
        next_attempt_ms: s.next_attempt_ms,
    });
}

/// How one record went through the retry policy.
pub(super) enum Single {
    Processed,
    /// Written to the dead-letter topic, for this error.
    DeadLettered(HandlerError),
    /// The partition started draining first.
    Abandoned,
}

/// One record through the retry policy.
pub(super) async fn single(ctx: &KeyCtx, key: &str, record: &Record, mut known: Option<HandlerError>) -> Single {
    let m = metrics();
    let mut attempt = 0u32;
    let mut first_failure_ms = None;
    // When this record stopped advancing (a breaker wait counts, unlike for the dead letter).
    let mut stuck_since = None;
    loop {
        let result = match known.take() {
            Some(err) => Err(err),
            None => call(ctx, key, std::slice::from_ref(record)).await,
        };
        attempt += 1;
        let Err(err) = result else {
            ctx.stuck.clear(key);
            m.records_processed.add(1, &processed(ctx, "ok"));
            return Single::Processed;
        };
        let since_ms = *stuck_since.get_or_insert_with(now_ms);
        // A downstream outage is not this record's fault: wait for the breaker, spend
        // no attempt, and never dead-letter because of it.
        let downstream_down = err.class == ErrorClass::Unavailable
            || (err.class == ErrorClass::Retryable && ctx.breakers.iter().any(|b| b.state() == BreakerState::Open));
        if downstream_down {
            attempt -= 1;
            m.downstream_waits.add(1, &[]);
            let reason = StuckReason::BreakerOpen;
            let stuck = Stuck { reason, since_ms, attempts: attempt, error: &err, next_attempt_ms: None };
            mark_stuck(ctx, key, record, stuck);
            if !wait_for_downstream(ctx).await {
                return Single::Abandoned;
            }
            continue;
        }
        let now = now_ms();
        let first = *first_failure_ms.get_or_insert(now);
        let delay = ctx.policy.next_delay(attempt, &err, &mut rand::rng());
        let class = err.class.as_str();
        match delay {
            Some(delay) => {
                tracing::warn!(
                    handler = ctx.handler.name(), topic = %record.tp.topic, partition = record.tp.partition,
                    offset = record.offset, error.class = class, attempt, delay_ms = delay.as_millis() as u64,
                    trace_id = crate::trace::record_trace_id(record), error = %err.describe(),
                    "handler failed, retrying after backoff"
                );
                m.retries.add(1, &[kv(ERROR_CLASS, class)]);
                let next_attempt_ms = Some(now + delay.as_millis() as i64);
                let stuck =
                    Stuck { reason: StuckReason::Backoff, since_ms, attempts: attempt, error: &err, next_attempt_ms };
                mark_stuck(ctx, key, record, stuck);
                if !wait(ctx, delay).await {
                    return Single::Abandoned;
                }
            }
            None => {
                let failure = Failure { error: &err, attempts: attempt, first_failure_ms: first, last_failure_ms: now };
                if !dead_letter(ctx, key, record, &failure, since_ms).await {
                    return Single::Abandoned;
                }
                return Single::DeadLettered(err);
            }
        }
    }
}

/// Writes the dead letter, retrying until it lands: the record is not done before that.
async fn dead_letter(ctx: &KeyCtx, key: &str, record: &Record, failure: &Failure<'_>, since_ms: i64) -> bool {
    let class = failure.error.class;
    let mut attempt = 0u32;
    loop {
        match ctx.dead_letters.write(record, failure).await {
            Ok(()) => {
                tracing::error!(
                    handler = ctx.handler.name(), topic = %record.tp.topic, partition = record.tp.partition,
                    offset = record.offset, error.class = class.as_str(), attempts = failure.attempts,
                    dlq = %ctx.dead_letters.topic, trace_id = crate::trace::record_trace_id(record),
                    error = %failure.error.describe(), "record dead-lettered"
                );
                let labels = [kv(ERROR_CLASS, class.dlq_reason()), kv(metrics::TOPIC, record.tp.topic.clone())];
                metrics().dead_letters.add(1, &labels);
                metrics().records_processed.add(1, &processed(ctx, "dead_lettered"));
                ctx.stuck.clear(key);
                return true;
            }
            Err(err) => {
                attempt += 1;
                let delay = ctx.policy.ceiling(attempt);
                tracing::error!(
                    dlq = %ctx.dead_letters.topic, attempt, delay_ms = delay.as_millis() as u64,
                    error = %crate::error::chain(&err), "dead-letter write failed; record held"
                );
                let next_attempt_ms = Some(now_ms() + delay.as_millis() as i64);
                let reason = StuckReason::DeadLetterWrite;
                let attempts = failure.attempts;
                let stuck = Stuck { reason, since_ms, attempts, error: failure.error, next_attempt_ms };
                mark_stuck(ctx, key, record, stuck);
                if !wait(ctx, delay).await {
                    return false;
                }
            }
        }
    }
}

/// Waits until each of the handler's breakers is closed or has a probe slot free, or
/// has at least moved on from the state it was in; `false` if the partition drains first.
async fn wait_for_downstream(ctx: &KeyCtx) -> bool {
    let mut waited = false;
    for breaker in &ctx.breakers {
        let mut rx = breaker.subscribe();
        // Half-open with a free slot: go and probe. Waiting for a change there could wait
        // forever, since only a probe moves a half-open breaker.
        if *rx.borrow_and_update() == BreakerState::Closed || breaker.probe_available() {
            continue;
        }
        waited = true;
        tokio::select! {
            _ = rx.changed() => {}
            _ = ctx.cancel.cancelled() => return false,
        }
    }
    // Refused by a breaker that closed meanwhile: a short pause keeps this from spinning.
    waited || wait(ctx, ctx.policy.base.min(Duration::from_millis(100))).await
}

/// Sleeps unless the partition drains first; `false` when it did.
pub(super) async fn wait(ctx: &KeyCtx, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = ctx.cancel.cancelled() => false,
    }
}
