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

/// Records delivered to a partition's owner and not yet done, against the bound.
pub struct Intake {
    /// `processing.max_in_flight_per_partition`.
    max: usize,
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
        Intake {
            max: max.max(1),
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
        if before >= self.max {
            // Full until now: whoever holds a record back may offer it again.
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

    pub fn max(&self) -> usize {
        self.max
    }

    /// Blocking waits that gave up (see [`Intake::wait_blocking`]).
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Waits until there is room, at most `timeout`; answers whether there is.
    pub fn wait_blocking(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.has_room() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.stalls.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            guard = self.room.wait_timeout(guard, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Waits until there is room.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a `done` in between is not missed.
            notified.as_mut().enable();
            if self.has_room() {
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
