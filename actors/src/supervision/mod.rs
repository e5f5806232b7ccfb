//! What supervisors share: the long-lived services the root supervisor starts and restarts
//! ([`Service`], [`ActorService`], read by their handles through a [`Slot`]), and noticing
//! that an on-demand child (endpoint actor, run actor, account actor) ended.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use ractor::{Actor, ActorCell, ActorId, ActorRef, SupervisionEvent};

use crate::Error;

mod children;

pub use children::Children;

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

/// Where the current incarnation of a restartable actor lives. Handles read it on every
/// call, so a restart behind their back is picked up at once; while the actor is down the
/// slot is empty and calls fail with [`Error::SubsystemDown`] (retryable) instead of going
/// to a dead mailbox.
pub struct Slot<M: ractor::Message> {
    name: &'static str,
    current: Arc<RwLock<Option<ActorRef<M>>>>,
}

impl<M: ractor::Message> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Slot { name: self.name, current: Arc::clone(&self.current) }
    }
}

impl<M: ractor::Message> Slot<M> {
    /// An empty slot for the service `name`, filled when the root supervisor starts it.
    pub fn new(name: &'static str) -> Self {
        Slot { name, current: Arc::default() }
    }

    /// A slot that already holds `actor` (for actors run outside the tree, as in unit tests).
    pub fn holding(name: &'static str, actor: ActorRef<M>) -> Self {
        let slot = Slot::new(name);
        slot.set(Some(actor));
        slot
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The running actor, or [`Error::SubsystemDown`].
    pub fn get(&self) -> Result<ActorRef<M>, Error> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(Error::SubsystemDown { subsystem: self.name })
    }

    /// Sends without waiting; a message to a service that is down is dropped, which callers
    /// accept because every such service re-reads its work from the store when it starts.
    pub fn cast(&self, msg: M) {
        if let Ok(actor) = self.get() {
            let _ = actor.cast(msg);
        }
    }

    fn set(&self, actor: Option<ActorRef<M>>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = actor;
    }
}

/// A long-lived actor the root supervisor starts, restarts with backoff when it fails, and
/// stops after the consumer groups have drained.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// The subsystem's name in `/ready`, on the status page and in the restart metric.
    fn name(&self) -> &'static str;
    /// The actor type, for the status page.
    fn kind(&self) -> &'static str;
    /// Whether the daemon can do its job while this service restarts: if not, `/ready`
    /// answers 503 meanwhile; if so, it answers 200 `degraded`.
    fn essential(&self) -> bool;
    /// Spawns a fresh incarnation linked to `supervisor` and publishes it to the handles.
    async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, Error>;
    /// The incarnation ended: handles see the subsystem as down until the next `spawn`.
    fn clear(&self);
    /// Test-only fault hook: makes the running incarnation panic inside its handler.
    fn inject_panic(&self) -> Result<(), Error>;
}

/// Builds a service's actor and arguments anew for every incarnation.
type Make<A> = Box<dyn Fn() -> (A, <A as Actor>::Arguments) + Send + Sync>;

/// The [`Service`] of one actor type: how to make it, where its handles find it, and the
/// message that makes it panic (the actor answers that message with `panic!`).
pub struct ActorService<A: Actor> {
    kind: &'static str,
    essential: bool,
    make: Make<A>,
    slot: Slot<A::Msg>,
    panic: fn() -> A::Msg,
}

impl<A: Actor> ActorService<A> {
    pub fn new(
        kind: &'static str,
        slot: Slot<A::Msg>,
        panic: fn() -> A::Msg,
        make: impl Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    ) -> Self {
        ActorService { kind, essential: true, make: Box::new(make), slot, panic }
    }

    /// Marks a service the daemon does its job without (housekeeping such as retention).
    pub fn non_essential(mut self) -> Self {
        self.essential = false;
        self
    }
}

#[async_trait]
impl<A: Actor> Service for ActorService<A> {
    fn name(&self) -> &'static str {
        self.slot.name
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    fn essential(&self) -> bool {
        self.essential
    }

    async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, Error> {
        let (actor, args) = (self.make)();
        let (actor, _) = Actor::spawn_linked(None, actor, args, supervisor).await.map_err(|e| Error::Actor {
            actor: self.slot.name.into(),
            op: "spawn",
            source: Box::new(e),
        })?;
        let cell = actor.get_cell();
        self.slot.set(Some(actor));
        Ok(cell)
    }

    fn clear(&self) {
        self.slot.set(None);
    }

    fn inject_panic(&self) -> Result<(), Error> {
        self.slot.get()?.cast((self.panic)()).map_err(|e| Error::Actor {
            actor: self.slot.name.into(),
            op: "inject a panic",
            source: Box::new(e),
        })
    }
}

/// Restart delay after the `count`th failure in a row: 1 s, 2 s, 4 s … capped at 60 s
/// (the same exponential ceiling as every other retry here, without jitter: one child).
pub(crate) fn restart_delay(count: u32) -> Duration {
    crate::retry::RetryPolicy { base: Duration::from_secs(1), cap: Duration::from_secs(60), max_attempts: u32::MAX }
        .ceiling(count)
}
