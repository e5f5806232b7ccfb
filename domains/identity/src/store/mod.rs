//! Identity's and loyalty's tables on the runtime's store handle: users and tokens, the
//! ledger, the sagas and their outbox.

pub mod loyalty;
pub mod sagas;
pub mod users;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use conveyor_actors::store::Store;

/// The store, with identity's and loyalty's tables; cheap to clone.
#[derive(Clone)]
pub struct IdentityStore {
    store: Store,
    /// Ledger writes left to fail as if the database dropped the connection (`[faults]`).
    ledger_faults: Arc<AtomicU32>,
}

impl IdentityStore {
    pub fn new(store: Store) -> Self {
        IdentityStore { store, ledger_faults: Arc::default() }
    }

    /// Makes the next `n` ledger writes fail like a dropped connection (`[faults]`).
    pub fn with_ledger_faults(self, n: u32) -> Self {
        self.ledger_faults.store(n, Ordering::Release);
        self
    }

    /// Spends one injected ledger failure, if any are left.
    fn injected_ledger_failure(&self) -> bool {
        self.ledger_faults.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }
}

impl std::ops::Deref for IdentityStore {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}
