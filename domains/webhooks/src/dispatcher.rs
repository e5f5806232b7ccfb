//! The delivery supervisor: starts an [`EndpointActor`] for each endpoint with work, wakes
//! it when deliveries are created (or hands them over, leased already: [`crate::intake`]),
//! and polls the store for retries that came due (they may wait hours, so they live in the
//! store, not in timers).
//!
//! On a graceful shutdown each endpoint actor cuts off its requests in flight and hands
//! their deliveries back, so the next daemon sends them at once rather than after the lease.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio_util::sync::CancellationToken;

use super::context::DeliveryContext;
use super::endpoint_actor::{EndpointActor, EndpointArgs, EndpointMsg};
use crate::store::delivery;
use conveyor_actors::supervision::{ActorService, Children, Slot};

/// Starts and wakes endpoint actors; a service of the root supervisor.
pub struct DispatcherActor;

/// What the dispatcher starts with (cloned for every incarnation).
#[derive(Clone)]
pub struct DispatcherArgs {
    pub ctx: Arc<DeliveryContext>,
}

/// The running endpoint actors.
pub struct DispatcherState {
    ctx: Arc<DeliveryContext>,
    endpoints: Children<EndpointMsg>,
    /// Cancelled on shutdown (every endpoint actor holds a child token).
    stop: CancellationToken,
}

/// Everything the dispatcher is told.
pub enum DispatcherMsg {
    /// Deliveries may be due for this endpoint: start its actor if needed and wake it.
    Wake { endpoint_id: String },
    /// The fan-out wrote these deliveries leased for this endpoint's actor: start it if
    /// needed and hand them over; should that fail, they go back to the store, due.
    Hand { endpoint_id: String, deliveries: Vec<delivery::Model> },
    /// The endpoint changed in the store: its actor (if running) reads it again.
    Reload { endpoint_id: String },
    /// Timer: wake the endpoints whose retries came due.
    Poll,
    /// How many endpoint actors run.
    Running { reply: RpcReplyPort<usize> },
    /// Test-only fault hook ([`conveyor_actors::supervision::Service::inject_panic`]).
    InjectPanic,
    /// Graceful shutdown: every endpoint actor hands back the deliveries it had in flight
    /// and stops (each within `within`); nothing new starts. Answers how many were handed back.
    Shutdown { within: Duration, reply: RpcReplyPort<usize> },
}

impl Actor for DispatcherActor {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DispatcherMsg>,
        args: DispatcherArgs,
    ) -> Result<DispatcherState, ActorProcessingErr> {
        myself.send_interval(Duration::from_millis(args.ctx.config.poll_interval_ms), || DispatcherMsg::Poll);
        // Deliveries left pending by an earlier run start now, not one interval later.
        let _ = myself.cast(DispatcherMsg::Poll);
        Ok(DispatcherState {
            ctx: args.ctx,
            endpoints: Children::new("webhook-endpoint"),
            stop: CancellationToken::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<DispatcherMsg>,
        msg: DispatcherMsg,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        if state.stop.is_cancelled() && !matches!(msg, DispatcherMsg::Running { .. }) {
            if let DispatcherMsg::Hand { deliveries, .. } = msg {
                state.release(deliveries.into_iter().map(|d| d.id).collect());
            }
            return Ok(());
        }
        match msg {
            DispatcherMsg::Wake { endpoint_id } => {
                state.send(&myself, endpoint_id, EndpointMsg::Wake).await;
            }
            DispatcherMsg::Hand { endpoint_id, deliveries } => {
                let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
                if !state.send(&myself, endpoint_id, EndpointMsg::Handed(deliveries)).await {
                    state.release(ids);
                }
            }
            DispatcherMsg::Reload { endpoint_id } => {
                if let Some((actor, ())) = state.endpoints.get(&endpoint_id) {
                    let _ = actor.cast(EndpointMsg::Reload);
                }
            }
            DispatcherMsg::Poll => match state.ctx.store.due_endpoints(chrono::Utc::now(), 10_000).await {
                Ok(due) => {
                    for endpoint_id in due {
                        state.send(&myself, endpoint_id, EndpointMsg::Wake).await;
                    }
                }
                Err(err) => tracing::warn!(error = %err, "looking up due webhook deliveries"),
            },
            DispatcherMsg::Running { reply } => {
                let _ = reply.send(state.endpoints.len());
            }
            DispatcherMsg::InjectPanic => panic!("injected fault in the webhook dispatcher"),
            DispatcherMsg::Shutdown { within, reply } => {
                state.stop.cancel();
                let asks = state
                    .endpoints
                    .actors()
                    .map(|actor| actor.call(|reply| EndpointMsg::Shutdown { reply }, Some(within)));
                let mut released = 0;
                for answer in futures::future::join_all(asks).await {
                    match answer {
                        Ok(ractor::rpc::CallResult::Success(n)) => released += n,
                        Ok(ractor::rpc::CallResult::Timeout) => tracing::warn!(
                            "an endpoint actor did not hand back its deliveries in time; their leases will expire"
                        ),
                        // It had stopped already (idle): nothing in flight.
                        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {}
                    }
                }
                if released > 0 {
                    tracing::info!(released, "webhook delivery leases handed back");
                }
                let _ = reply.send(released);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<DispatcherMsg>,
        event: SupervisionEvent,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        // A stopped or failed endpoint actor is forgotten; the next wake or poll starts a
        // fresh one, and the deliveries it held come back when their leases expire.
        state.endpoints.on_event(&event);
        Ok(())
    }
}

impl DispatcherState {
    /// Sends `msg` to the endpoint's actor, starting one if none runs; false if it could
    /// not be delivered.
    async fn send(&mut self, myself: &ActorRef<DispatcherMsg>, endpoint_id: String, msg: EndpointMsg) -> bool {
        let args = || {
            let args =
                EndpointArgs { endpoint_id: endpoint_id.clone(), ctx: self.ctx.clone(), stop: self.stop.child_token() };
            (EndpointActor, args, ())
        };
        match self.endpoints.get_or_spawn(&endpoint_id, myself.get_cell(), args).await {
            // A mailbox that is gone belongs to an actor that just stopped: a wake is
            // dropped (the next wake or poll starts a fresh one), deliveries handed over
            // go back to the store.
            Ok((actor, ())) => {
                let sent = actor.cast(msg).is_ok();
                if !sent {
                    self.endpoints.remove(&endpoint_id);
                }
                sent
            }
            Err(err) => {
                tracing::error!(error = %err, "starting a webhook endpoint actor");
                false
            }
        }
    }

    /// Gives deliveries nobody took back to the store, due at once, off the actor's turn.
    fn release(&self, ids: Vec<String>) {
        let store = self.ctx.store.clone();
        tokio::spawn(async move { super::endpoint_actor::hand_back(&store, &ids).await });
    }
}

/// The typed handle callers use; it follows the dispatcher across restarts. A wake-up sent
/// while it is down is not lost: a fresh dispatcher polls the store for due deliveries first.
#[derive(Clone)]
pub struct Dispatcher {
    slot: Slot<DispatcherMsg>,
}

impl Dispatcher {
    /// The handle and the service the root supervisor runs it as.
    pub fn service(ctx: Arc<DeliveryContext>) -> (Self, ActorService<DispatcherActor>) {
        let slot = Slot::new("webhook-dispatcher");
        let args = DispatcherArgs { ctx };
        let service = ActorService::new(
            "DispatcherActor",
            slot.clone(),
            || DispatcherMsg::InjectPanic,
            move || (DispatcherActor, args.clone()),
        );
        (Dispatcher { slot }, service)
    }

    pub fn wake(&self, endpoint_id: String) {
        self.slot.cast(DispatcherMsg::Wake { endpoint_id });
    }

    /// Hands deliveries the fan-out wrote leased to their endpoints' actors; answers those
    /// it could not (the dispatcher is down), for the caller to give back.
    pub fn hand(&self, deliveries: Vec<delivery::Model>) -> Vec<delivery::Model> {
        if deliveries.is_empty() {
            return deliveries;
        }
        let Ok(actor) = self.slot.get() else { return deliveries };
        let mut by_endpoint: std::collections::HashMap<String, Vec<delivery::Model>> = Default::default();
        for d in deliveries {
            by_endpoint.entry(d.endpoint_id.clone()).or_default().push(d);
        }
        let mut refused = Vec::new();
        for (endpoint_id, deliveries) in by_endpoint {
            let count = deliveries.len();
            match actor.cast(DispatcherMsg::Hand { endpoint_id, deliveries }) {
                Ok(()) => {}
                Err(ractor::MessagingErr::SendErr(DispatcherMsg::Hand { deliveries, .. })) => {
                    refused.extend(deliveries)
                }
                Err(_) => tracing::warn!(
                    deliveries = count,
                    "the webhook dispatcher took no deliveries handed over; their leases will expire"
                ),
            }
        }
        refused
    }

    pub fn reload(&self, endpoint_id: String) {
        self.slot.cast(DispatcherMsg::Reload { endpoint_id });
    }

    /// Endpoint actors running now (for the status page).
    pub async fn running(&self) -> usize {
        let Ok(actor) = self.slot.get() else { return 0 };
        ractor::call!(actor, |reply| DispatcherMsg::Running { reply }).unwrap_or_default()
    }

    /// Graceful shutdown: the endpoint actors cut off their requests in flight and hand their
    /// deliveries back (within `within`); the root supervisor then stops the dispatcher.
    pub async fn hand_back_leases(&self, within: Duration) {
        let Ok(actor) = self.slot.get() else { return };
        // The hand-backs are store writes after the requests were cut off: a little beyond `within`.
        let asked =
            actor.call(|reply| DispatcherMsg::Shutdown { within, reply }, Some(within + Duration::from_secs(2)));
        if !matches!(asked.await, Ok(ractor::rpc::CallResult::Success(_))) {
            tracing::warn!("the webhook dispatcher did not hand back its deliveries in time; their leases will expire");
        }
    }
}
