//! Identity's and loyalty's tables.

mod identity;
mod saga;

use conveyor_actors::store::migrations::Indexes;
use conveyor_actors::store::schema::prelude::*;

/// This crate's migrations, in order (the engine lists every crate's).
pub fn migrations() -> Vec<Box<dyn Migration>> {
    vec![
        Box::new(identity::CreateIdentity),
        Box::new(saga::CreateSagaAndLedger),
        // Indexes the retention purges use (once made by one migration for every crate).
        Box::new(Indexes {
            name: "m20261202_000011_identity_retention_indexes",
            indexes: &[
                ("sagas_finished", "sagas", &["status", "updated_at"]),
                ("outbox_published", "outbox", &["status", "published_at"]),
                ("refresh_tokens_expires_at", "refresh_tokens", &["expires_at"]),
            ],
        }),
    ]
}

/// The runtime's migrations and this crate's: for a store of its own in tests.
pub fn with_runtime() -> Vec<Box<dyn Migration>> {
    let mut all = conveyor_actors::store::migrations::migrations();
    all.extend(migrations());
    all
}
