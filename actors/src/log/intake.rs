//! One partition's in-flight bound, counted where the backend hands records over.
//!
//! The bound used to be checked by the partition actor as it took each record out of its
//! mailbox. Under load the consumer delivered faster than that, so the mailbox held the
//! overshoot: 24,810 records in flight against a bound of 5,000 in the processing benchmark.
//! Counting at delivery holds the bound whatever the mailbox holds. A full partition does not
//! drop anything: the backend keeps the record it offered and offers it again once there is
//! room, which it learns from [`Intake::wait`] (async) or [`Intake::wait_blocking`] (the
//! Kafka consumer thread).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// At most this many records of room before a waiting backend is woken (a quarter of the
/// bound when that is smaller).
const WAKE_BATCH: usize = 256;

/// Records delivered to a partition's owner and not yet done, against the bound.
pub struct Intake {
    /// `processing.max_in_flight_per_partition`.
    max: usize,
    /// Where a waiting backend is woken: a batch below the bound, not at the first free
    /// slot. Waking it for every record done cost a futex wake and a context switch per
    /// record (4 % of the daemon's CPU under load).
    wake_at: usize,
    outstanding: AtomicUsize,
    /// Blocking waiters sleep on `room`; the lock orders a waiter's check before a notify.
    lock: Mutex<()>,
    room: Condvar,
    notify: Notify,
    /// Blocking waits that ended without room (the backend fell back to pausing).
    stalls: AtomicU64,
}

impl Intake {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Intake {
            max,
            wake_at: max - (max / 4).clamp(1, WAKE_BATCH),
            outstanding: AtomicUsize::new(0),
            lock: Mutex::new(()),
            room: Condvar::new(),
            notify: Notify::new(),
            stalls: AtomicU64::new(0),
        }
    }

    /// Counts one more record in flight if the bound allows it; `false` when full.
    pub fn try_admit(&self) -> bool {
        self.outstanding.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1)).is_ok()
    }

    /// `n` admitted records are done (processed, dead-lettered or parked).
    pub fn done(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| Some(o.saturating_sub(n)))
            .unwrap_or_else(|o| o);
        let after = before.saturating_sub(n);
        if before > self.wake_at && after <= self.wake_at {
            // A batch of room: whoever holds a record back may offer it and the next ones.
            drop(self.lock.lock().unwrap_or_else(PoisonError::into_inner));
            self.room.notify_all();
            self.notify.notify_waiters();
        }
    }

    pub fn has_room(&self) -> bool {
        self.outstanding() < self.max
    }

    /// At most half the bound in flight: where a partition paused at the log resumes, so
    /// that a refetch is paid for at most once per half a bound of records.
    pub fn half_empty(&self) -> bool {
        self.outstanding() <= self.max / 2
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Blocking waits that gave up (see [`Intake::wait_blocking`]).
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Whether a waiting backend would be woken now: a batch of room below the bound.
    fn room_for_a_batch(&self) -> bool {
        self.outstanding() <= self.wake_at
    }

    /// Waits until there is room for a batch of records, at most `timeout`; answers whether
    /// there is room at all.
    pub fn wait_blocking(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.room_for_a_batch() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if self.has_room() {
                    return true;
                }
                self.stalls.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            guard = self.room.wait_timeout(guard, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Waits until there is room for a batch of records.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a `done` in between is not missed.
            notified.as_mut().enable();
            if self.room_for_a_batch() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;

    #[test]
    fn admits_up_to_the_bound_and_again_once_records_are_done() {
        let intake = Intake::new(3);
        assert!((0..3).all(|_| intake.try_admit()));
        assert!(!intake.try_admit(), "the fourth record waits");
        assert_eq!(intake.outstanding(), 3, "a refusal counts nothing");
        assert!(!intake.half_empty());
        intake.done(1);
        assert!(intake.try_admit());
        intake.done(2);
        assert!(intake.half_empty(), "1 of 3");
        intake.done(5);
        assert_eq!(intake.outstanding(), 0, "more done than admitted never wraps");
    }

    #[test]
    fn a_blocking_wait_wakes_when_room_appears_and_counts_a_stall_when_none_does() {
        let intake = Arc::new(Intake::new(1));
        assert!(intake.try_admit());
        assert!(!intake.wait_blocking(Duration::from_millis(20)));
        assert_eq!(intake.stalls(), 1);
        let other = intake.clone();
        let freer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            other.done(1);
        });
        assert!(intake.wait_blocking(Duration::from_secs(30)), "woken by done, long before the timeout");
        freer.join().unwrap();
        assert_eq!(intake.stalls(), 1);
    }

    #[test]
    fn a_waiter_is_woken_for_a_batch_of_room_not_for_each_record() {
        let intake = Arc::new(Intake::new(8));
        assert!((0..8).all(|_| intake.try_admit()));
        intake.done(1);
        assert!(intake.has_room());
        assert!(!intake.room_for_a_batch(), "one free slot of 8 wakes nobody");
        intake.done(1);
        assert!(intake.room_for_a_batch(), "a quarter of the bound does");
        let big = Intake::new(5_000);
        assert_eq!(big.wake_at, 5_000 - WAKE_BATCH);
    }

    #[tokio::test]
    async fn an_async_wait_wakes_when_room_appears() {
        let intake = Arc::new(Intake::new(1));
        assert!(intake.try_admit());
        let waiter = tokio::spawn({
            let intake = intake.clone();
            async move { intake.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "full: the waiter waits");
        intake.done(1);
        tokio::time::timeout(Duration::from_secs(30), waiter).await.unwrap().unwrap();
    }
}
