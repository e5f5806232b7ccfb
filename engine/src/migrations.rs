//! Every crate's schema migrations, applied in this order at start-up and by
//! `conveyor migrate`. A database records migrations by name, so a crate's own order is
//! what matters; this list keeps the order they were first released in.

use conveyor_actors::store::schema::Migration;

pub fn all() -> Vec<Box<dyn Migration>> {
    [
        conveyor_devices::migrations::migrations(),
        conveyor_actors::store::migrations::migrations(),
        conveyor_identity::migrations::migrations(),
        conveyor_webhooks::migrations::migrations(),
        conveyor_workflows::migrations::migrations(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
