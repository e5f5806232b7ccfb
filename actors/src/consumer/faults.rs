//! Test-only fault hook for drills (`faults.allow_panic_injection`): makes every handler call
//! for chosen keys fail as a retryable error, so a drill can hold a key in backoff and watch
//! it in the operator's stuck-key list, then heal it. Empty (and one atomic load per call)
//! unless `POST /admin/faults/keys/{key}/fail` was called.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, RwLock};

use crate::retry::HandlerError;

/// A set of keys a fault applies to, checked on every record: one relaxed atomic load while
/// it is empty, which is always outside drills.
struct KeySet {
    any: AtomicBool,
    keys: LazyLock<RwLock<HashSet<String>>>,
}

impl KeySet {
    const fn new() -> Self {
        KeySet { any: AtomicBool::new(false), keys: LazyLock::new(RwLock::default) }
    }

    fn insert(&self, key: &str) {
        let mut set = self.keys.write().unwrap_or_else(|e| e.into_inner());
        set.insert(key.to_string());
        self.any.store(true, Ordering::SeqCst);
    }

    /// Whether `key` was in the set; it is not any more.
    fn remove(&self, key: &str) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let mut set = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let removed = set.remove(key);
        self.any.store(!set.is_empty(), Ordering::SeqCst);
        removed
    }

    fn contains(&self, key: &str) -> bool {
        self.any.load(Ordering::Relaxed) && self.keys.read().unwrap_or_else(|e| e.into_inner()).contains(key)
    }
}

static FAILING: KeySet = KeySet::new();
static CRASHING: KeySet = KeySet::new();

/// The next record with `key` makes the partition actor that receives it panic, once: a
/// drill of the restart path (the rewind to the committed offset and the replay).
pub fn crash_partition_on(key: &str) {
    CRASHING.insert(key);
}

/// Whether a record with `key` is to crash its partition actor (and clears the request).
pub(super) fn crash_requested(key: &str) -> bool {
    CRASHING.remove(key)
}

/// The error a failing key's handler calls get.
#[derive(Debug, thiserror::Error)]
#[error("fault injected for key {key} (POST /admin/faults/keys/{{key}}/fail)")]
pub struct InjectedFault {
    pub key: String,
}

/// From now on, every handler call for `key` fails retryably.
pub fn fail_key(key: &str) {
    FAILING.insert(key);
}

/// Handler calls for `key` run normally again; `false` if it was not failing.
pub fn heal_key(key: &str) -> bool {
    FAILING.remove(key)
}

/// The injected failure for `key`, if it is failing.
pub(super) fn injected(key: &str) -> Option<HandlerError> {
    FAILING.contains(key).then(|| HandlerError::retryable(InjectedFault { key: key.to_string() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_key_fails_retryably_until_healed() {
        assert!(injected("faults-test-a").is_none());
        fail_key("faults-test-a");
        let err = injected("faults-test-a");
        assert!(err.as_ref().is_some_and(|e| e.class == crate::retry::ErrorClass::Retryable));
        assert!(err.is_some_and(|e| e.describe().contains("fault injected for key faults-test-a")));
        assert!(injected("faults-test-b").is_none(), "other keys are untouched");
        assert!(heal_key("faults-test-a"));
        assert!(!heal_key("faults-test-a"));
        assert!(injected("faults-test-a").is_none());
    }

    #[test]
    fn a_crash_is_requested_once_per_call() {
        assert!(!crash_requested("faults-test-c"));
        crash_partition_on("faults-test-c");
        assert!(!crash_requested("faults-test-d"));
        assert!(crash_requested("faults-test-c"));
        assert!(!crash_requested("faults-test-c"), "once");
    }
}
