//! Partition actor behaviour: per-key order with keys in parallel, commit positions,
//! the in-flight bound, retries, dead letters and drain.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ractor::{Actor, ActorRef};
use tokio::sync::Semaphore;

use super::*;
use crate::config::ProcessingConfig;
use crate::log::{Ack, ConsumerControl, Delivery, Intake, OutgoingRecord, Producer, Record, TopicPartition};
use crate::retry::{HandlerError, RetryPolicy};

#[derive(Default)]
struct Control {
    log: Mutex<Vec<String>>,
}

impl Control {
    fn events(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
    fn last_commit(&self) -> Option<i64> {
        self.events().iter().rev().find_map(|e| e.strip_prefix("commit ").and_then(|o| o.parse().ok()))
    }
}

impl ConsumerControl for Control {
    fn pause(&self, _: &TopicPartition) {
        self.log.lock().unwrap().push("pause".into());
    }
    fn resume(&self, _: &TopicPartition) {
        self.log.lock().unwrap().push("resume".into());
    }
    fn commit(&self, _: &TopicPartition, next: i64) {
        self.log.lock().unwrap().push(format!("commit {next}"));
    }
    fn rewind(&self, _: &TopicPartition) {
        self.log.lock().unwrap().push("rewind".into());
    }
}

#[derive(Default)]
struct Dlq {
    sent: Mutex<Vec<OutgoingRecord>>,
}

#[async_trait]
impl Producer for Dlq {
    async fn send(&self, record: OutgoingRecord, _: Duration) -> Result<Ack, crate::Error> {
        let mut sent = self.sent.lock().unwrap();
        sent.push(record);
        Ok(Ack { partition: 0, offset: sent.len() as i64 - 1 })
    }
    async fn ping(&self, _: Duration) -> Result<(), crate::Error> {
        Ok(())
    }
}

/// Records what it saw; `gate` (when set) holds calls for key "slow"; `fail` makes a key fail.
#[derive(Default)]
struct Recorder {
    seen: Mutex<HashMap<String, Vec<i64>>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    attempts: AtomicUsize,
    gate: Option<Arc<Semaphore>>,
    retryable_failures_for_flaky: AtomicUsize,
}

#[async_trait]
impl KeyHandler for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    async fn handle(&self, key: &str, records: &[Record]) -> Result<(), HandlerError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        if key == "slow"
            && let Some(gate) = &self.gate
        {
            let _permit = gate.acquire().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        if records.iter().any(|r| r.payload.as_ref() == b"poison") {
            return Err(HandlerError::permanent(std::io::Error::other("cannot decode")));
        }
        if key == "flaky" && self.retryable_failures_for_flaky.load(Ordering::SeqCst) > 0 {
            self.retryable_failures_for_flaky.fetch_sub(1, Ordering::SeqCst);
            return Err(HandlerError::retryable(std::io::Error::other("store busy")));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.entry(key.to_string()).or_default().extend(records.iter().map(|r| r.offset));
        Ok(())
    }
}

fn record(offset: i64, key: &str, payload: &'static [u8]) -> Record {
    Record {
        tp: TopicPartition::new("t", 0),
        offset,
        key: Some(key.into()),
        payload: Bytes::from_static(payload),
        headers: vec![],
        timestamp_ms: 0,
    }
}

struct Fixture {
    actor: ActorRef<PartitionMsg>,
    /// Delivers as the log backends do, admitted against the in-flight bound.
    handle: PartitionHandle,
    control: Arc<Control>,
    handler: Arc<Recorder>,
    dlq: Arc<Dlq>,
}

/// A partition actor on partition t/0 over `handler`, with a recording control and DLQ.
async fn spawn(
    handler: Arc<dyn KeyHandler>,
    policy: RetryPolicy,
    processing: ProcessingConfig,
) -> (PartitionHandle, Arc<Control>, Arc<Dlq>) {
    let control = Arc::new(Control::default());
    let dlq = Arc::new(Dlq::default());
    let intake = Arc::new(Intake::new(processing.max_in_flight_per_partition));
    let args = PartitionArgs {
        intake: intake.clone(),
        tp: TopicPartition::new("t", 0),
        handler,
        control: control.clone(),
        dead_letters: DeadLetters { producer: dlq.clone(), topic: "t-dlq".into(), timeout: Duration::from_secs(1) },
        policy,
        processing,
        park: None,
    };
    let (actor, _) = Actor::spawn(None, PartitionActor, args).await.unwrap();
    (PartitionHandle { actor, intake, live: Arc::new(true.into()) }, control, dlq)
}

async fn start(handler: Recorder, processing: ProcessingConfig) -> Fixture {
    let handler = Arc::new(handler);
    let policy = RetryPolicy { base: Duration::from_millis(5), cap: Duration::from_millis(20), max_attempts: 3 };
    let (handle, control, dlq) = spawn(handler.clone(), policy, processing).await;
    Fixture { actor: handle.actor.clone(), handle, control, handler, dlq }
}

fn processing() -> ProcessingConfig {
    ProcessingConfig { commit_interval_ms: 10, ..ProcessingConfig::default() }
}

async fn status(actor: &ActorRef<PartitionMsg>) -> PartitionStatus {
    ractor::call!(actor, |reply| PartitionMsg::Status { reply }).unwrap()
}

async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition never held");
}

#[tokio::test]
async fn keys_keep_their_order_and_run_concurrently() {
    let f = start(Recorder::default(), ProcessingConfig { max_coalesce: 1, ..processing() }).await;
    let keys = ["a", "b", "c", "d"];
    for offset in 0..40 {
        f.actor.cast(PartitionMsg::Record(record(offset, keys[offset as usize % 4], b"{}"))).unwrap();
    }
    until(|| f.control.last_commit() == Some(40)).await;
    let seen = f.handler.seen.lock().unwrap().clone();
    for key in keys {
        let offsets = &seen[key];
        assert_eq!(offsets.len(), 10);
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{key} out of order: {offsets:?}");
    }
    assert!(f.handler.max_running.load(Ordering::SeqCst) > 1, "different keys must overlap");
    assert_eq!(status(&f.actor).await.active_keys, 0, "idle keys are passivated");
}

#[tokio::test]
async fn commit_stops_below_the_oldest_unfinished_record() {
    let gate = Arc::new(Semaphore::new(0));
    let f = start(Recorder { gate: Some(gate.clone()), ..Recorder::default() }, processing()).await;
    f.actor.cast(PartitionMsg::Record(record(0, "fast", b"{}"))).unwrap();
    f.actor.cast(PartitionMsg::Record(record(1, "slow", b"{}"))).unwrap();
    for offset in 2..10 {
        f.actor.cast(PartitionMsg::Record(record(offset, "fast", b"{}"))).unwrap();
    }
    until(|| f.handler.seen.lock().unwrap().get("fast").map(Vec::len) == Some(9)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.control.last_commit(), Some(1), "offset 1 is still running");
    gate.add_permits(1);
    until(|| f.control.last_commit() == Some(10)).await;
}

#[tokio::test]
async fn the_in_flight_bound_is_held_where_records_are_delivered() {
    let gate = Arc::new(Semaphore::new(0));
    let processing = ProcessingConfig { max_in_flight_per_partition: 4, max_coalesce: 1, ..processing() };
    let f = start(Recorder { gate: Some(gate.clone()), ..Recorder::default() }, processing).await;
    for offset in 0..4 {
        assert!(matches!(f.handle.deliver(record(offset, "slow", b"{}")), Delivery::Taken));
    }
    // Refused at once, before the actor has even looked at its mailbox.
    let Delivery::Full { record: back, intake } = f.handle.deliver(record(4, "slow", b"{}")) else {
        panic!("the fifth record is over the bound");
    };
    assert_eq!((back.offset, intake.outstanding()), (4, 4), "the record comes back; nothing more is counted");
    until(|| f.handler.running.load(Ordering::SeqCst) == 1).await;
    let s = status(&f.actor).await;
    assert!(s.full && !s.paused, "full is not a pause at the log: {s:?}");
    assert!(f.control.events().iter().all(|e| e != "pause"), "no pause: the backend holds the record back");
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(30), intake.wait()).await.unwrap();
    assert!(matches!(f.handle.deliver(back), Delivery::Taken), "room again once a record is done");
    gate.add_permits(100);
    until(|| f.control.last_commit() == Some(5)).await;
    assert_eq!(f.handle.intake.outstanding(), 0);
    assert!(!status(&f.actor).await.full);
}

#[tokio::test]
async fn a_failing_key_retries_without_holding_up_others() {
    let recorder = Recorder::default();
    recorder.retryable_failures_for_flaky.store(2, Ordering::SeqCst);
    let f = start(recorder, processing()).await;
    f.actor.cast(PartitionMsg::Record(record(0, "flaky", b"{}"))).unwrap();
    f.actor.cast(PartitionMsg::Record(record(1, "steady", b"{}"))).unwrap();
    until(|| f.control.last_commit() == Some(2)).await;
    let seen = f.handler.seen.lock().unwrap().clone();
    assert_eq!(seen["flaky"], vec![0], "processed after two retries");
    assert_eq!(f.handler.attempts.load(Ordering::SeqCst), 4, "3 attempts for flaky + 1 for steady");
    assert!(f.dlq.sent.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_poison_record_is_dead_lettered_alone_and_the_key_moves_on() {
    let f = start(Recorder::default(), ProcessingConfig { max_coalesce: 10, ..processing() }).await;
    let gate_key = "k";
    f.actor.cast(PartitionMsg::Record(record(0, gate_key, b"{}"))).unwrap();
    f.actor.cast(PartitionMsg::Record(record(1, gate_key, b"poison"))).unwrap();
    f.actor.cast(PartitionMsg::Record(record(2, gate_key, b"{}"))).unwrap();
    until(|| f.control.last_commit() == Some(3)).await;
    let sent = f.dlq.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "only the poison record is dead-lettered");
    assert_eq!(sent[0].payload.as_ref(), b"poison");
    assert_eq!(sent[0].topic, "t-dlq");
    let header = |name: &str| {
        sent[0].headers.iter().find(|h| h.name == name).map(|h| String::from_utf8_lossy(&h.value).into_owned())
    };
    assert_eq!(header("conveyor.dlq.source_offset").as_deref(), Some("1"));
    assert_eq!(header("conveyor.dlq.error_class").as_deref(), Some("permanent"));
    assert_eq!(header("conveyor.dlq.error").as_deref(), Some("cannot decode"));
    let seen = f.handler.seen.lock().unwrap().clone();
    assert_eq!(seen[gate_key], vec![0, 2]);
}

#[tokio::test]
async fn drain_answers_the_first_unfinished_offset_and_stops() {
    let gate = Arc::new(Semaphore::new(0));
    let f = start(Recorder { gate: Some(gate.clone()), ..Recorder::default() }, processing()).await;
    f.actor.cast(PartitionMsg::Record(record(5, "other", b"{}"))).unwrap();
    until(|| f.handler.seen.lock().unwrap().contains_key("other")).await;
    f.actor.cast(PartitionMsg::Record(record(6, "slow", b"{}"))).unwrap();
    f.actor.cast(PartitionMsg::Record(record(7, "slow", b"{}"))).unwrap();
    let actor = f.actor.clone();
    let drain = tokio::spawn(async move { ractor::call!(actor, |reply| PartitionMsg::Drain { reply }) });
    tokio::time::sleep(Duration::from_millis(30)).await;
    gate.add_permits(1); // the running call for 6 finishes; 7 was queued and is not started
    let position = drain.await.unwrap().unwrap();
    assert_eq!(position, Some(7), "6 is done, 7 was never started");
    until(|| f.actor.get_status() == ractor::ActorStatus::Stopped).await;
}

/// A store that is down: calls fail, the breaker opens, the partition pauses, keys wait
/// without spending attempts; when it returns, everything completes and nothing is dead-lettered.
struct FlakyStore {
    breaker: Arc<crate::breaker::Breaker>,
    down: std::sync::atomic::AtomicBool,
    done: Mutex<Vec<i64>>,
}

#[async_trait]
impl KeyHandler for FlakyStore {
    fn name(&self) -> &'static str {
        "flaky-store"
    }
    fn breakers(&self) -> Vec<Arc<crate::breaker::Breaker>> {
        vec![self.breaker.clone()]
    }
    async fn handle(&self, _: &str, records: &[Record]) -> Result<(), HandlerError> {
        let permit = self.breaker.acquire().map_err(HandlerError::unavailable)?;
        let down = self.down.load(Ordering::SeqCst);
        permit.record(down);
        if down {
            return Err(HandlerError::retryable(std::io::Error::other("connection refused")));
        }
        self.done.lock().unwrap().extend(records.iter().map(|r| r.offset));
        Ok(())
    }
}

#[tokio::test]
async fn an_outage_pauses_the_partition_and_spends_no_attempts() {
    let breaker = crate::breaker::Breaker::new(
        "store",
        crate::breaker::BreakerConfig { cool_down_ms: 50, ..crate::breaker::BreakerConfig::default() },
    );
    let store = Arc::new(FlakyStore { breaker: breaker.clone(), down: true.into(), done: Mutex::default() });
    // Two attempts only: an outage that spent attempts would dead-letter at once.
    let policy = RetryPolicy { base: Duration::from_millis(5), cap: Duration::from_millis(10), max_attempts: 2 };
    let (actor, control, dlq) = spawn(store.clone(), policy, processing()).await;
    let actor = actor.actor;
    for offset in 0..10 {
        actor.cast(PartitionMsg::Record(record(offset, ["a", "b", "c"][offset as usize % 3], b"{}"))).unwrap();
    }
    until(|| control.events().contains(&"pause".to_string())).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // several failed half-open probes
    assert!(store.done.lock().unwrap().is_empty());
    store.down.store(false, Ordering::SeqCst);
    until(|| control.last_commit() == Some(10)).await;
    assert!(control.events().contains(&"resume".to_string()));
    assert!(dlq.sent.lock().unwrap().is_empty(), "an outage must not dead-letter anything");
    let mut done = store.done.lock().unwrap().clone();
    done.sort_unstable();
    assert_eq!(done, (0..10).collect::<Vec<_>>());
}

/// Fails its first `failures` calls with a server-requested delay, noting when each came.
struct RetryAfter {
    failures: AtomicUsize,
    retry_after: Option<Duration>,
    calls: Mutex<Vec<tokio::time::Instant>>,
}

#[async_trait]
impl KeyHandler for RetryAfter {
    fn name(&self) -> &'static str {
        "retry-after"
    }
    async fn handle(&self, _: &str, _: &[Record]) -> Result<(), HandlerError> {
        self.calls.lock().unwrap().push(tokio::time::Instant::now());
        if self.failures.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        self.failures.fetch_sub(1, Ordering::SeqCst);
        let mut err = HandlerError::retryable(std::io::Error::other("429 Too Many Requests"));
        err.retry_after = self.retry_after;
        Err(err)
    }
}

async fn schedule(retry_after: Option<Duration>) -> Vec<Duration> {
    let handler = Arc::new(RetryAfter { failures: 3.into(), retry_after, calls: Mutex::default() });
    let policy = RetryPolicy { base: Duration::from_secs(1), cap: Duration::from_secs(60), max_attempts: 5 };
    let (actor, control, _) = spawn(handler.clone(), policy, processing()).await;
    let actor = actor.actor;
    actor.cast(PartitionMsg::Record(record(0, "k", b"{}"))).unwrap();
    until(|| control.last_commit() == Some(1)).await;
    let calls = handler.calls.lock().unwrap().clone();
    calls.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn backoff_waits_stay_inside_the_doubling_jitter_windows() {
    let gaps = schedule(None).await;
    assert_eq!(gaps.len(), 3, "three failures, then success");
    for (i, gap) in gaps.iter().enumerate() {
        let ceiling = Duration::from_secs(1 << i);
        assert!(*gap <= ceiling + Duration::from_millis(50), "wait {i} was {gap:?}, over {ceiling:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_out_exactly() {
    let gaps = schedule(Some(Duration::from_secs(3))).await;
    assert_eq!(gaps.len(), 3);
    for gap in gaps {
        assert!(gap >= Duration::from_secs(3) && gap < Duration::from_millis(3_100), "{gap:?}");
    }
}

/// Refuses its first call with a breaker that is already half-open by the time the key
/// task looks at it: nobody else will probe, so the key task itself must.
struct LateHalfOpen {
    breaker: Arc<crate::breaker::Breaker>,
    calls: AtomicUsize,
}

#[async_trait]
impl KeyHandler for LateHalfOpen {
    fn name(&self) -> &'static str {
        "late-half-open"
    }
    fn breakers(&self) -> Vec<Arc<crate::breaker::Breaker>> {
        vec![self.breaker.clone()]
    }
    async fn handle(&self, _: &str, _: &[Record]) -> Result<(), HandlerError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            for _ in 0..3 {
                self.breaker.acquire().unwrap().record(true);
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // past the cool-down
            return Err(HandlerError::unavailable(std::io::Error::other("breaker open")));
        }
        self.breaker.acquire().map_err(HandlerError::unavailable)?.record(false);
        Ok(())
    }
}

#[tokio::test]
async fn a_key_refused_before_half_open_probes_by_itself() {
    let breaker = crate::breaker::Breaker::new(
        "store",
        crate::breaker::BreakerConfig { cool_down_ms: 20, ..crate::breaker::BreakerConfig::default() },
    );
    let handler = Arc::new(LateHalfOpen { breaker: breaker.clone(), calls: 0.into() });
    let policy = RetryPolicy { base: Duration::from_millis(5), cap: Duration::from_millis(10), max_attempts: 2 };
    let (actor, control, _) = spawn(handler.clone(), policy, processing()).await;
    let actor = actor.actor;
    actor.cast(PartitionMsg::Record(record(0, "k", b"{}"))).unwrap();
    until(|| control.last_commit() == Some(1)).await;
    assert_eq!(breaker.state(), crate::breaker::BreakerState::Closed);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_key_in_backoff_is_listed_as_stuck_until_it_succeeds() {
    let recorder = Recorder::default();
    recorder.retryable_failures_for_flaky.store(3, Ordering::SeqCst);
    let handler = Arc::new(recorder);
    // Long enough a backoff to look at; 4 attempts, so the 3 failures never dead-letter.
    let policy = RetryPolicy { base: Duration::from_millis(300), cap: Duration::from_millis(300), max_attempts: 4 };
    let (actor, control, dlq) = spawn(handler.clone(), policy, processing()).await;
    let actor = actor.actor;
    actor.cast(PartitionMsg::Record(record(0, "flaky", b"{}"))).unwrap();
    actor.cast(PartitionMsg::Record(record(1, "steady", b"{}"))).unwrap();
    let mut seen = None;
    for _ in 0..500 {
        let s = status(&actor).await;
        if s.stuck_total == 1 {
            seen = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = seen.expect("the failing key is listed as stuck");
    let stuck = &s.stuck[0];
    assert_eq!((stuck.key.as_str(), stuck.topic.as_str(), stuck.partition, stuck.offset), ("flaky", "t", 0, 0));
    assert_eq!(stuck.handler, "recorder");
    assert_eq!(stuck.reason, StuckReason::Backoff);
    assert_eq!(stuck.error_class, StuckErrorClass::Retryable);
    assert_eq!(stuck.error, "store busy");
    assert!(stuck.attempts >= 1);
    assert!(stuck.next_attempt_ms.is_some_and(|n| n >= stuck.since_ms));
    until(|| control.last_commit() == Some(2)).await;
    let s = status(&actor).await;
    assert_eq!((s.stuck_total, s.stuck.len()), (0, 0), "the key left the list once it succeeded");
    assert!(dlq.sent.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_dead_lettered_key_is_no_longer_stuck() {
    let recorder = Recorder::default();
    recorder.retryable_failures_for_flaky.store(100, Ordering::SeqCst);
    let f = start(recorder, processing()).await;
    f.actor.cast(PartitionMsg::Record(record(0, "flaky", b"{}"))).unwrap();
    until(|| f.control.last_commit() == Some(1)).await;
    assert_eq!(f.dlq.sent.lock().unwrap().len(), 1, "exhausted and dead-lettered");
    assert_eq!(status(&f.actor).await.stuck_total, 0);
}

#[tokio::test]
async fn a_key_behind_an_open_breaker_is_stuck_without_a_next_attempt() {
    let breaker = crate::breaker::Breaker::new(
        "store",
        crate::breaker::BreakerConfig { cool_down_ms: 60_000, ..crate::breaker::BreakerConfig::default() },
    );
    let store = Arc::new(FlakyStore { breaker: breaker.clone(), down: true.into(), done: Mutex::default() });
    let policy = RetryPolicy { base: Duration::from_millis(5), cap: Duration::from_millis(10), max_attempts: 2 };
    let (actor, control, _dlq) = spawn(store.clone(), policy, processing()).await;
    let actor = actor.actor;
    for offset in 0..10 {
        actor.cast(PartitionMsg::Record(record(offset, ["a", "b", "c"][offset as usize % 3], b"{}"))).unwrap();
    }
    until(|| control.events().contains(&"pause".to_string())).await;
    let mut waiting = Vec::new();
    for _ in 0..500 {
        waiting = status(&actor).await.stuck;
        if waiting.len() == 3 && waiting.iter().all(|k| k.reason == StuckReason::BreakerOpen) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(waiting.iter().map(|k| k.key.as_str()).collect::<HashSet<_>>(), HashSet::from(["a", "b", "c"]));
    assert!(waiting.iter().all(|k| k.reason == StuckReason::BreakerOpen && k.next_attempt_ms.is_none()), "{waiting:?}");
}

/// A key task is spawned per key turn, so its future is allocated and moved per turn: the
/// retry, dead-letter and parking paths are boxed to keep it small (inlined, it was 22 KB,
/// and allocating it was a measurable share of the `keys` benchmark).
#[test]
fn a_key_turn_future_stays_small() {
    use tokio_util::sync::CancellationToken;
    let tp = TopicPartition::new("t", 0);
    let ctx = Arc::new(key_task::KeyCtx {
        handler: Arc::new(Recorder::default()),
        dead_letters: DeadLetters {
            producer: Arc::new(Dlq::default()),
            topic: "t-dlq".into(),
            timeout: Duration::from_secs(1),
        },
        policy: RetryPolicy { base: Duration::from_millis(5), cap: Duration::from_millis(20), max_attempts: 3 },
        cancel: CancellationToken::new(),
        labels: [crate::metrics::kv("topic", "t"), crate::metrics::kv("partition", 0i64)],
        breakers: vec![],
        stuck: stuck::StuckKeys::new(&tp, "recorder"),
        parking: None,
        max_coalesce: 1,
    });
    let turn = key_task::run(ctx, "k".into(), vec![record(0, "k", b"{}")]);
    let size = std::mem::size_of_val(&turn);
    assert!(size <= 2048, "a key turn's future is {size} bytes");
}

#[tokio::test]
async fn a_partition_actor_that_dies_paused_is_replaced_rewound_and_resumed() {
    let breaker = crate::breaker::Breaker::new("store", crate::breaker::BreakerConfig::default());
    let store = Arc::new(FlakyStore { breaker: breaker.clone(), down: true.into(), done: Mutex::default() });
    let policy = RetryPolicy { base: Duration::from_millis(5), cap: Duration::from_millis(10), max_attempts: 2 };
    let dead_letters =
        DeadLetters { producer: Arc::new(Dlq::default()), topic: "t-dlq".into(), timeout: Duration::from_secs(1) };
    let supervisor =
        ConsumerSupervisorHandle::spawn("g".into(), store.clone(), dead_letters, policy, processing(), None, None)
            .await
            .unwrap();
    let control = Arc::new(Control::default());
    let tp = TopicPartition::new("t", 0);
    crate::log::GroupListener::assigned(&supervisor, vec![tp.clone()], control.clone()).await;
    for offset in 0..10 {
        let delivered = crate::log::GroupListener::deliver(&supervisor, record(offset, "k", b"{}"));
        assert!(matches!(delivered, Delivery::Taken));
    }
    until(|| control.events().contains(&"pause".to_string())).await;
    let children = supervisor.actor().get_cell().get_children();
    assert_eq!(children.len(), 1, "one partition actor");
    children[0].kill();
    until(|| control.events().contains(&"rewind".to_string())).await;
    let events = control.events();
    let from = events.iter().position(|e| e == "rewind").unwrap();
    // Its successor starts believing the partition unpaused: nothing may leave it paused.
    assert_eq!(events[from..from + 2], ["rewind", "resume"], "{events:?}");
    until(|| supervisor.actor().get_cell().get_children().len() == 1).await;
    assert_eq!(supervisor.status().await.len(), 1, "the partition has an actor again");
    // Until the backend has rewound, what it delivers was read before the rewind and is read
    // again after it: the new actor must not see it first, or it would commit past the rest.
    store.down.store(false, Ordering::SeqCst);
    let early = crate::log::GroupListener::deliver(&supervisor, record(70, "k", b"{}"));
    assert!(matches!(early, Delivery::Taken));
    crate::log::GroupListener::rewound(&supervisor, &tp);
    for offset in 0..10 {
        let delivered = crate::log::GroupListener::deliver(&supervisor, record(offset, "k", b"{}"));
        assert!(matches!(delivered, Delivery::Taken));
    }
    until(|| control.last_commit() == Some(10)).await;
    let mut done = store.done.lock().unwrap().clone();
    done.sort_unstable();
    done.dedup();
    assert_eq!(done, (0..10).collect::<Vec<_>>(), "the replay, without the early record");
    supervisor.actor().stop(None);
}
