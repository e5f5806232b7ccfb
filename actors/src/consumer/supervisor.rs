//! The consumer supervisor: one per consumer group. The log backend tells it which
//! partitions this process owns; it spawns a [`PartitionActor`] for each, routes records to
//! them, and on revoke drains them and hands back the offsets to commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::KeyHandler;
use super::dead_letter::DeadLetters;
use super::parking::ParkSpec;
use super::partition::{PartitionActor, PartitionArgs, PartitionHandle, PartitionMsg, PartitionStatus};
use crate::config::ProcessingConfig;
use crate::log::{ConsumerControl, Delivery, GroupListener, Intake, Record, TopicPartition};
use crate::metrics;
use crate::retry::RetryPolicy;

type Routes = Arc<RwLock<HashMap<TopicPartition, PartitionHandle>>>;

/// The actor; its behaviour is in [`SupervisorState`]'s methods.
pub struct ConsumerSupervisor;

/// What a consumer supervisor is started with.
pub struct ConsumerArgs {
    pub group: String,
    pub handler: Arc<dyn KeyHandler>,
    pub dead_letters: DeadLetters,
    pub policy: RetryPolicy,
    pub processing: ProcessingConfig,
    /// Set when the topic's `on_dead_letter` is `park`.
    pub park: Option<ParkSpec>,
    /// Shared with the [`ConsumerSupervisorHandle`] so records skip the supervisor's mailbox.
    pub routes: Routes,
}

/// Messages a consumer supervisor handles.
pub enum SupervisorMsg {
    /// The backend assigned these partitions; spawn an actor for each, then reply.
    Assigned { partitions: Vec<TopicPartition>, control: Arc<dyn ConsumerControl>, reply: RpcReplyPort<()> },
    /// The backend is taking these partitions away: drain their actors and reply with the
    /// offset to commit for each.
    Revoked { partitions: Vec<TopicPartition>, reply: RpcReplyPort<Vec<(TopicPartition, i64)>> },
    /// Report every partition actor's status.
    Status { reply: RpcReplyPort<Vec<PartitionStatus>> },
}

pub struct SupervisorState {
    args: ConsumerArgs,
    control: Option<Arc<dyn ConsumerControl>>,
    /// Partitions whose actor we are stopping on purpose (not a failure).
    releasing: Vec<TopicPartition>,
}

impl Actor for ConsumerSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ConsumerArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState { args, control: None, releasing: Vec::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Assigned { partitions, control, reply } => {
                state.control = Some(control);
                for tp in partitions {
                    state.spawn_partition(tp, true, &myself).await?;
                }
                let _ = reply.send(());
            }
            SupervisorMsg::Revoked { partitions, reply } => {
                let offsets = state.drain(partitions).await;
                let _ = reply.send(offsets);
            }
            SupervisorMsg::Status { reply } => {
                let actors: Vec<_> = state.routes_snapshot();
                let mut out = Vec::with_capacity(actors.len());
                for actor in actors {
                    if let Ok(s) = ractor::call!(actor, |reply| PartitionMsg::Status { reply }) {
                        out.push(s);
                    }
                }
                out.sort_by(|a, b| a.tp.cmp(&b.tp));
                let _ = reply.send(out);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            _ => return Ok(()),
        };
        let Some(tp) = state.partition_of(cell.get_id()) else { return Ok(()) };
        if let Some(i) = state.releasing.iter().position(|t| *t == tp) {
            state.releasing.swap_remove(i);
            return Ok(());
        }
        // A partition actor died unasked. Its records in memory are gone but none of them
        // was committed, so rewinding to the committed offset replays exactly those.
        tracing::error!(partition = %tp, reason = ?failure, "partition actor died; restarting from the committed offset");
        metrics::restarted("partition", &tp.to_string());
        if let Ok(mut routes) = state.args.routes.write() {
            routes.remove(&tp);
        }
        // The successor takes records only once the backend has rewound (it goes live in
        // `rewound`): it is routed before the rewind is asked for, so that none is missed.
        state.spawn_partition(tp.clone(), false, &myself).await?;
        if let Some(control) = &state.control {
            control.rewind(&tp);
            // It may have died with the partition paused for an open downstream; its
            // successor starts unpaused and pauses again if a downstream is still open.
            control.resume(&tp);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Normally the backend revoked everything first; anything left is stopped here.
        for actor in state.routes_snapshot() {
            actor.stop(Some("consumer supervisor stopped".into()));
        }
        if let Ok(mut routes) = state.args.routes.write() {
            routes.clear();
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn spawn_partition(
        &mut self,
        tp: TopicPartition,
        live: bool,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(control) = self.control.clone() else {
            return Err("partition assigned before the consumer control".into());
        };
        // A fresh count per actor: what the dead one had in flight is replayed, not done.
        let intake = Arc::new(Intake::new(self.args.processing.max_in_flight_per_partition));
        let args = PartitionArgs {
            intake: intake.clone(),
            tp: tp.clone(),
            handler: self.args.handler.clone(),
            control,
            dead_letters: self.args.dead_letters.clone(),
            policy: self.args.policy,
            processing: self.args.processing.clone(),
            park: self.args.park.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, PartitionActor, args, myself.get_cell()).await?;
        if let Ok(mut routes) = self.args.routes.write() {
            routes.insert(tp, PartitionHandle { actor, intake, live: Arc::new(AtomicBool::new(live)) });
        }
        Ok(())
    }

    /// Drains the partitions' actors concurrently and collects their commit positions.
    async fn drain(&mut self, partitions: Vec<TopicPartition>) -> Vec<(TopicPartition, i64)> {
        let mut actors = Vec::new();
        if let Ok(mut routes) = self.args.routes.write() {
            for tp in partitions {
                if let Some(handle) = routes.remove(&tp) {
                    actors.push((tp, handle.actor));
                }
            }
        }
        let timeout = self.args.processing.drain_timeout();
        let drains = actors.into_iter().map(|(tp, actor)| {
            self.releasing.push(tp.clone());
            async move {
                let answer = ractor::call_t!(actor, |reply| PartitionMsg::Drain { reply }, timeout.as_millis() as u64);
                match answer {
                    Ok(position) => position.map(|p| (tp, p)),
                    Err(err) => {
                        // Past the deadline nothing new is committed for it; the next owner
                        // starts from the last commit, and handlers are idempotent.
                        tracing::warn!(partition = %tp, error = %err, "partition did not drain in time");
                        actor.stop(Some("drain timeout".into()));
                        None
                    }
                }
            }
        });
        futures::future::join_all(drains).await.into_iter().flatten().collect()
    }

    fn routes_snapshot(&self) -> Vec<ActorRef<PartitionMsg>> {
        self.args.routes.read().map(|r| r.values().map(|h| h.actor.clone()).collect()).unwrap_or_default()
    }

    fn partition_of(&self, id: ractor::ActorId) -> Option<TopicPartition> {
        let routes = self.args.routes.read().ok()?;
        routes.iter().find(|(_, h)| h.actor.get_id() == id).map(|(tp, _)| tp.clone())
    }
}

/// The log backend's view of a consumer supervisor: it implements [`GroupListener`] and
/// routes fetched records straight to partition actors.
#[derive(Clone)]
pub struct ConsumerSupervisorHandle {
    actor: ActorRef<SupervisorMsg>,
    routes: Routes,
}

impl ConsumerSupervisorHandle {
    /// Spawns a consumer supervisor (linked to `supervisor` when given).
    pub async fn spawn(
        group: String,
        handler: Arc<dyn KeyHandler>,
        dead_letters: DeadLetters,
        policy: RetryPolicy,
        processing: ProcessingConfig,
        park: Option<ParkSpec>,
        supervisor: Option<ractor::ActorCell>,
    ) -> Result<Self, crate::Error> {
        let routes: Routes = Arc::default();
        let args = ConsumerArgs {
            group: group.clone(),
            handler,
            dead_letters,
            policy,
            processing,
            park,
            routes: routes.clone(),
        };
        let spawned = match supervisor {
            Some(sup) => Actor::spawn_linked(None, ConsumerSupervisor, args, sup).await,
            None => Actor::spawn(None, ConsumerSupervisor, args).await,
        };
        let (actor, _) = spawned.map_err(|e| crate::Error::Actor {
            actor: format!("consumer-supervisor:{group}"),
            op: "spawn",
            source: Box::new(e),
        })?;
        Ok(ConsumerSupervisorHandle { actor, routes })
    }

    pub fn actor(&self) -> &ActorRef<SupervisorMsg> {
        &self.actor
    }

    /// Every partition actor's status, sorted by partition.
    pub async fn status(&self) -> Vec<PartitionStatus> {
        ractor::call!(self.actor, |reply| SupervisorMsg::Status { reply }).unwrap_or_default()
    }
}

#[async_trait]
impl GroupListener for ConsumerSupervisorHandle {
    async fn assigned(&self, partitions: Vec<TopicPartition>, control: Arc<dyn ConsumerControl>) {
        tracing::info!(partitions = ?partitions.iter().map(ToString::to_string).collect::<Vec<_>>(), "partitions assigned");
        if let Err(err) = ractor::call!(self.actor, |reply| SupervisorMsg::Assigned { partitions, control, reply }) {
            tracing::error!(error = %err, "consumer supervisor did not take the assignment");
        }
    }

    fn deliver(&self, record: Record) -> Delivery {
        let route = self.routes.read().ok().and_then(|r| r.get(&record.tp).cloned());
        match route {
            Some(handle) => return handle.deliver(record),
            None => tracing::warn!(partition = %record.tp, "record for an unassigned partition left uncommitted"),
        }
        Delivery::Taken
    }

    fn rewound(&self, tp: &TopicPartition) {
        if let Some(handle) = self.routes.read().ok().and_then(|r| r.get(tp).cloned()) {
            handle.live.store(true, Ordering::Release);
            tracing::info!(partition = %tp, "partition rewound; its new actor takes records");
        }
    }

    async fn revoked(&self, partitions: Vec<TopicPartition>) -> Vec<(TopicPartition, i64)> {
        tracing::info!(partitions = ?partitions.iter().map(ToString::to_string).collect::<Vec<_>>(), "partitions revoked, draining");
        ractor::call!(self.actor, |reply| SupervisorMsg::Revoked { partitions, reply }).unwrap_or_default()
    }
}
