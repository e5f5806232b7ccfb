//! What supervisors of on-demand children (endpoint actors, run actors) share: noticing that
//! a child ended, and counting it when it failed.

use ractor::{ActorId, SupervisionEvent};

/// The id of a linked child that stopped or failed; a failure is logged and counted as a
/// restart of `kind` (the supervisor starts a fresh child the next time there is work).
pub(crate) fn ended(event: &SupervisionEvent, kind: &'static str) -> Option<ActorId> {
    match event {
        SupervisionEvent::ActorTerminated(cell, ..) => Some(cell.get_id()),
        SupervisionEvent::ActorFailed(cell, err) => {
            tracing::error!(error = %err, actor = kind, "child actor failed");
            crate::metrics::restarted(kind, kind);
            Some(cell.get_id())
        }
        _ => None,
    }
}
