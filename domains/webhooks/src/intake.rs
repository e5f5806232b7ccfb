//! Which endpoint actors take new deliveries straight from the fan-out.
//!
//! Waking an endpoint actor so that it leases what the fan-out just wrote costs one lease
//! statement per endpoint per fan-out write: with ten endpoints, most of the store's
//! statements, and the embedded store has one writer. An actor that runs, is unordered,
//! has its breaker closed and room to hold more says so here; the fan-out then writes that
//! endpoint's deliveries leased already and hands them over in memory
//! ([`crate::dispatcher::Dispatcher::hand`]).
//!
//! A stale answer costs a statement, never a delivery: an actor that stopped meanwhile is
//! started again by the hand-over, one without room hands the rows back (lease cleared,
//! due at once), and rows nobody could take are released by the fan-out. Should the daemon
//! die in between, the leases expire and the poll finds the rows.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

/// The set of endpoints whose actors take deliveries leased at insert; cheap to clone.
#[derive(Clone, Default)]
pub struct Intake(Arc<RwLock<HashSet<String>>>);

impl Intake {
    /// Whether the fan-out may write `endpoint_id`'s deliveries leased and hand them over.
    pub fn takes(&self, endpoint_id: &str) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).contains(endpoint_id)
    }

    /// Set by the endpoint's actor whenever its answer changes (and cleared when it stops).
    pub fn set(&self, endpoint_id: &str, taking: bool) {
        let mut set = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if taking {
            set.insert(endpoint_id.to_owned());
        } else {
            set.remove(endpoint_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_takes_only_while_its_actor_says_so() {
        let intake = Intake::default();
        assert!(!intake.takes("ep"));
        intake.set("ep", true);
        assert!(intake.clone().takes("ep"));
        assert!(!intake.takes("other"));
        intake.set("ep", false);
        assert!(!intake.takes("ep"));
    }
}
