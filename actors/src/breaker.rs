//! Circuit breakers, one per downstream (store, cache; later each webhook endpoint).
//!
//! ```text
//! Closed ──(N consecutive failures, or failure ratio ≥ r over ≥ m calls in the window)──▶ Open
//! Open ──(cool-down elapsed)──▶ HalfOpen ──(probe succeeds)──▶ Closed
//!                                  └──────(probe fails)─────▶ Open
//! ```
//! While a breaker is not closed, partition actors whose handler depends on it pause
//! consumption, and key tasks wait for it instead of spending retry attempts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::{self, kv, metrics};

pub use conveyor_config::BreakerConfig;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
    /// The gauge value: 0 closed, 1 half-open, 2 open.
    pub fn level(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

struct Inner {
    state: BreakerState,
    consecutive: u32,
    /// (when, failed) of recent calls, oldest first.
    window: VecDeque<(Instant, bool)>,
    probes_out: u32,
    /// Bumped on every opening, so a stale cool-down timer does nothing.
    epoch: u64,
}

/// One downstream's breaker; share it behind an `Arc`.
pub struct Breaker {
    name: &'static str,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    tx: watch::Sender<BreakerState>,
}

/// Leave to make one call; [`Permit::record`] reports how it went.
#[must_use = "report the call's outcome with Permit::record"]
pub struct Permit {
    breaker: Arc<Breaker>,
    /// Set when this permit holds a half-open probe slot (of the opening `epoch`).
    probe_epoch: Option<u64>,
}

impl Permit {
    pub fn record(mut self, failed: bool) {
        self.probe_epoch = None;
        self.breaker.record(failed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(epoch) = self.probe_epoch {
            let mut inner = self.breaker.lock();
            if inner.epoch == epoch && inner.state == BreakerState::HalfOpen {
                inner.probes_out = inner.probes_out.saturating_sub(1);
            }
        }
    }
}

/// The breaker refused the call.
#[derive(Debug)]
pub struct Refused {
    pub breaker: &'static str,
    pub state: BreakerState,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "circuit breaker {} is {}", self.breaker, self.state.as_str())
    }
}

impl std::error::Error for Refused {}

impl Breaker {
    pub fn new(name: &'static str, config: BreakerConfig) -> Arc<Self> {
        let (tx, _) = watch::channel(BreakerState::Closed);
        Arc::new(Breaker {
            name,
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive: 0,
                window: VecDeque::new(),
                probes_out: 0,
                epoch: 0,
            }),
            tx,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn state(&self) -> BreakerState {
        *self.tx.borrow()
    }

    /// Half-open with a probe slot free: a caller that was refused should try again now
    /// rather than wait for a change that only a probe can bring.
    pub fn probe_available(&self) -> bool {
        let inner = self.lock();
        inner.state == BreakerState::HalfOpen && inner.probes_out < self.config.half_open_probes
    }

    /// Follows state changes (partition actors pause and resume on these).
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.tx.subscribe()
    }

    /// Asks to make a call; report its outcome with [`Permit::record`]. A permit dropped
    /// without an outcome (its caller was cancelled) gives its probe slot back.
    pub fn acquire(self: &Arc<Self>) -> Result<Permit, Refused> {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => Ok(Permit { breaker: self.clone(), probe_epoch: None }),
            BreakerState::HalfOpen if inner.probes_out < self.config.half_open_probes => {
                inner.probes_out += 1;
                Ok(Permit { breaker: self.clone(), probe_epoch: Some(inner.epoch) })
            }
            state => Err(Refused { breaker: self.name, state }),
        }
    }

    /// Reports a call's outcome; `failed` only for failures of the downstream itself
    /// (unreachable, timing out), not for bad input it refused.
    fn record(self: &Arc<Self>, failed: bool) {
        let mut inner = self.lock();
        let now = Instant::now();
        let window = Duration::from_millis(self.config.window_ms);
        inner.window.push_back((now, failed));
        while inner.window.front().is_some_and(|(t, _)| now.duration_since(*t) > window) {
            inner.window.pop_front();
        }
        inner.consecutive = if failed { inner.consecutive + 1 } else { 0 };
        match (inner.state, failed) {
            (BreakerState::HalfOpen, false) => {
                inner.window.clear();
                self.transition(&mut inner, BreakerState::Closed);
            }
            (BreakerState::HalfOpen, true) => self.open(&mut inner),
            (BreakerState::Closed, true) if self.should_open(&inner) => self.open(&mut inner),
            _ => {}
        }
    }

    fn should_open(&self, inner: &Inner) -> bool {
        if inner.consecutive >= self.config.consecutive_failures {
            return true;
        }
        let calls = inner.window.len() as u32;
        let failures = inner.window.iter().filter(|(_, f)| *f).count() as f64;
        calls >= self.config.min_calls && failures / f64::from(calls) >= self.config.failure_ratio
    }

    fn open(self: &Arc<Self>, inner: &mut Inner) {
        inner.epoch += 1;
        let epoch = inner.epoch;
        self.transition(inner, BreakerState::Open);
        let me = self.clone();
        let cool_down = Duration::from_millis(self.config.cool_down_ms);
        tokio::spawn(async move {
            tokio::time::sleep(cool_down).await;
            let mut inner = me.lock();
            if inner.epoch == epoch && inner.state == BreakerState::Open {
                me.transition(&mut inner, BreakerState::HalfOpen);
            }
        });
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        let from = inner.state;
        inner.state = to;
        inner.probes_out = 0;
        if to == BreakerState::Closed {
            inner.consecutive = 0;
        }
        tracing::warn!(breaker = self.name, from = from.as_str(), to = to.as_str(), "circuit breaker transition");
        let m = metrics();
        m.breaker_transitions.add(1, &[kv(metrics::DOWNSTREAM, self.name), kv(metrics::STATE, to.as_str())]);
        self.tx.send_replace(to);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves consistent data (plain counters).
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn breaker() -> Arc<Breaker> {
        Breaker::new("store", BreakerConfig { cool_down_ms: 5_000, ..BreakerConfig::default() })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_recovers_through_half_open() {
        let b = breaker();
        for _ in 0..2 {
            b.acquire().unwrap().record(true);
        }
        assert_eq!(b.state(), BreakerState::Closed, "two failures are not enough");
        b.record(true);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.acquire().is_err());

        tokio::time::sleep(Duration::from_millis(4_900)).await;
        assert_eq!(b.state(), BreakerState::Open, "still cooling down");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.acquire().unwrap();
        assert!(b.acquire().is_err(), "only one probe at a time");
        probe.record(false);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_gives_its_slot_back() {
        let b = breaker();
        for _ in 0..3 {
            b.record(true);
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        let probe = b.acquire().unwrap();
        drop(probe); // the caller was cancelled before the call finished
        let again = b.acquire();
        assert!(again.is_ok(), "the slot must be free for the next probe");
        again.unwrap().record(false);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_another_cool_down() {
        let b = breaker();
        for _ in 0..3 {
            b.record(true);
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.acquire().unwrap().record(true);
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_ratio_over_the_window_opens_it() {
        let b = breaker();
        // Alternating failures never make three in a row, but half of 20 calls failed.
        for i in 0..19 {
            b.record(i % 2 == 1);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(true);
        assert_eq!(b.state(), BreakerState::Open, "10 of 20 calls failed");
    }

    #[tokio::test(start_paused = true)]
    async fn old_calls_leave_the_window() {
        let b = breaker();
        for i in 0..19 {
            b.record(i % 2 == 0);
        }
        tokio::time::sleep(Duration::from_secs(11)).await;
        b.record(false);
        assert_eq!(b.state(), BreakerState::Closed, "the earlier calls are outside the window");
    }

    #[tokio::test(start_paused = true)]
    async fn subscribers_see_every_transition() {
        let b = breaker();
        let mut rx = b.subscribe();
        for _ in 0..3 {
            b.record(true);
        }
        rx.changed().await.ok();
        assert_eq!(*rx.borrow_and_update(), BreakerState::Open);
        rx.changed().await.ok();
        assert_eq!(*rx.borrow_and_update(), BreakerState::HalfOpen);
    }
}
