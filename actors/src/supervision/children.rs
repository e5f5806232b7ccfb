//! The on-demand children of a supervisor, one per key: an account actor per loyalty
//! account, an endpoint actor per webhook endpoint with work, a run actor per executing
//! run. Spawned linked on first use, forgotten when they stop or fail (the next piece of
//! work for that key spawns a fresh one).

use std::collections::HashMap;

use ractor::{Actor, ActorCell, ActorRef, SupervisionEvent};

use crate::Error;

/// Live children by key, each with a small piece of the supervisor's bookkeeping `V`
/// (operations forwarded, the run's owner).
pub struct Children<M: ractor::Message, V = ()> {
    /// The kind counted in `conveyor.actor.restarts` when one fails.
    kind: &'static str,
    live: HashMap<String, (ActorRef<M>, V)>,
}

impl<M: ractor::Message, V> Children<M, V> {
    pub fn new(kind: &'static str) -> Self {
        Children { kind, live: HashMap::new() }
    }

    /// The child for `key`, spawning it (linked to `supervisor`) when there is none.
    pub async fn get_or_spawn<A>(
        &mut self,
        key: &str,
        supervisor: ActorCell,
        spawn: impl FnOnce() -> (A, A::Arguments, V),
    ) -> Result<&mut (ActorRef<M>, V), Error>
    where
        A: Actor<Msg = M>,
    {
        if !self.live.contains_key(key) {
            let (actor, args, value) = spawn();
            let (child, _) = Actor::spawn_linked(None, actor, args, supervisor).await.map_err(|e| Error::Actor {
                actor: self.kind.into(),
                op: "spawn",
                source: Box::new(e),
            })?;
            self.live.insert(key.to_owned(), (child, value));
        }
        self.live.get_mut(key).ok_or(Error::SubsystemDown { subsystem: self.kind })
    }

    pub fn get(&self, key: &str) -> Option<&(ActorRef<M>, V)> {
        self.live.get(key)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.live.contains_key(key)
    }

    /// Forgets `key`'s child (it was retired, or its mailbox is gone).
    pub fn remove(&mut self, key: &str) -> Option<(ActorRef<M>, V)> {
        self.live.remove(key)
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub fn actors(&self) -> impl Iterator<Item = &ActorRef<M>> {
        self.live.values().map(|(a, _)| a)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.live.values().map(|(_, v)| v)
    }

    /// Every child, leaving none (shutdown).
    pub fn drain(&mut self) -> impl Iterator<Item = (String, ActorRef<M>, V)> + '_ {
        self.live.drain().map(|(k, (a, v))| (k, a, v))
    }

    /// Forgets a child that stopped or failed (a failure is logged and counted).
    pub fn on_event(&mut self, event: &SupervisionEvent) {
        if let Some(id) = super::ended(event, self.kind) {
            self.live.retain(|_, (actor, _)| actor.get_id() != id);
        }
    }
}
