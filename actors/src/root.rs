//! The root supervisor: owns the long-lived services (ledger, outbox relay, webhook
//! dispatcher, run supervisor, retention) and the consumer supervisors with their group
//! memberships, and restarts a failed child with backoff. A consumer supervisor is
//! restarted by leaving and rejoining its group, so the new child starts from committed
//! offsets; a service by spawning a fresh incarnation that its handles find in their slot.
//!
//! Services start before the groups (handlers call them) and stop after the groups have
//! drained and committed (a handler still draining may need its account actor).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::config::ProcessingConfig;
use crate::consumer::{ConsumerSupervisorHandle, DeadLetters, KeyHandler, ParkSpec, PartitionStatus};
use crate::log::{ConsumerHandle, GroupListener, LogBackend};
use crate::metrics;
use crate::retry::RetryPolicy;
use crate::supervision::{Service, restart_delay};

/// The top of the one supervision tree (drawn in the crate doc).
pub struct RootSupervisor;

/// One consumer group to run: which topic, with which handler.
#[derive(Clone)]
pub struct GroupSpec {
    pub group: String,
    pub topic: String,
    pub handler: Arc<dyn KeyHandler>,
    pub dead_letters: DeadLetters,
    /// Set when the topic's `processing.on_dead_letter` is `park`.
    pub park: Option<ParkSpec>,
}

/// What the root supervisor is started with.
pub struct RootArgs {
    pub log: Arc<dyn LogBackend>,
    /// Started first, in this order; stopped last, in reverse order.
    pub services: Vec<Arc<dyn Service>>,
    pub groups: Vec<GroupSpec>,
    pub policy: RetryPolicy,
    pub processing: ProcessingConfig,
}

/// Messages the root supervisor handles.
pub enum RootMsg {
    /// Report the partition actors of every group.
    Status { reply: RpcReplyPort<Vec<PartitionStatus>> },
    /// Report each group: its consumer supervisor's state, restarts and partitions.
    Groups { reply: RpcReplyPort<Vec<GroupStatus>> },
    /// Report each service: its state and restarts.
    Services { reply: RpcReplyPort<Vec<ServiceStatus>> },
    /// Restart the consumer of group number `index` (sent after a backoff).
    Restart { index: usize },
    /// Restart service number `index` (sent after a backoff).
    RestartService { index: usize },
    /// Test-only fault hook: make the named service's actor panic.
    InjectPanic { subsystem: String, reply: RpcReplyPort<Result<(), crate::Error>> },
    /// Leave every group (draining and committing), then reply; nothing restarts after it.
    LeaveGroups { reply: RpcReplyPort<()> },
    /// Leave every group left (as `LeaveGroups`), stop the services, then reply.
    Shutdown { reply: RpcReplyPort<()> },
}

/// Whether a child of the root supervisor is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    Running,
    /// Failed; a fresh incarnation starts after a backoff.
    Restarting,
}

impl ChildState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildState::Running => "running",
            ChildState::Restarting => "restarting",
        }
    }
}

/// One long-lived service as `/ready` and the status page show it.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    pub name: &'static str,
    pub kind: &'static str,
    pub state: ChildState,
    /// See [`Service::essential`].
    pub essential: bool,
    /// Restarts since the process started.
    pub restarts: u32,
}

/// One consumer group as the status page shows it.
#[derive(Debug, Clone)]
pub struct GroupStatus {
    pub group: String,
    pub topic: String,
    pub state: ChildState,
    /// Restarts since the process started.
    pub restarts: u32,
    pub partitions: Vec<PartitionStatus>,
}

/// How long shutdown waits for each service (and its children) to stop.
const SERVICE_STOP: Duration = Duration::from_secs(10);

struct Running {
    supervisor: ConsumerSupervisorHandle,
    membership: Box<dyn ConsumerHandle>,
}

/// Failures of one child: recent ones set the backoff, the total is reported.
#[derive(Clone, Copy)]
struct Restarts {
    recent: u32,
    last: Instant,
    /// Every restart since start-up (`recent` resets after ten quiet minutes; this does not).
    total: u32,
}

impl Restarts {
    fn new() -> Self {
        Restarts { recent: 0, last: Instant::now(), total: 0 }
    }

    /// Counts a failure and answers how long to wait before the restart.
    fn next_delay(&mut self) -> Duration {
        self.total += 1;
        if self.last.elapsed() > Duration::from_secs(600) {
            self.recent = 0;
        }
        self.last = Instant::now();
        self.recent += 1;
        restart_delay(self.recent)
    }
}

/// The root supervisor's children: what runs now and how often each failed.
pub struct RootState {
    args: RootArgs,
    running: Vec<Option<Running>>,
    restarts: Vec<Restarts>,
    /// The running incarnation of each service; `None` while it waits out a backoff.
    services: Vec<Option<ractor::ActorCell>>,
    service_restarts: Vec<Restarts>,
    stopping: bool,
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(&self, myself: ActorRef<RootMsg>, args: RootArgs) -> Result<RootState, ActorProcessingErr> {
        let n = args.groups.len();
        let s = args.services.len();
        let mut state = RootState {
            args,
            running: (0..n).map(|_| None).collect(),
            restarts: vec![Restarts::new(); n],
            services: vec![None; s],
            service_restarts: vec![Restarts::new(); s],
            stopping: false,
        };
        for index in 0..s {
            state.start_service(index, &myself).await?;
        }
        for index in 0..n {
            state.start_group(index, &myself).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Status { reply } => {
                let mut all = Vec::new();
                for r in state.running.iter().flatten() {
                    all.extend(r.supervisor.status().await);
                }
                let _ = reply.send(all);
            }
            RootMsg::Groups { reply } => {
                let mut groups = Vec::new();
                for (index, spec) in state.args.groups.iter().enumerate() {
                    let (child_state, partitions) = match &state.running[index] {
                        Some(r) => (ChildState::Running, r.supervisor.status().await),
                        None => (ChildState::Restarting, Vec::new()),
                    };
                    groups.push(GroupStatus {
                        group: spec.group.clone(),
                        topic: spec.topic.clone(),
                        state: child_state,
                        restarts: state.restarts[index].total,
                        partitions,
                    });
                }
                let _ = reply.send(groups);
            }
            RootMsg::Services { reply } => {
                let services = state
                    .args
                    .services
                    .iter()
                    .enumerate()
                    .map(|(index, service)| ServiceStatus {
                        name: service.name(),
                        kind: service.kind(),
                        essential: service.essential(),
                        state: if state.services[index].is_some() {
                            ChildState::Running
                        } else {
                            ChildState::Restarting
                        },
                        restarts: state.service_restarts[index].total,
                    })
                    .collect();
                let _ = reply.send(services);
            }
            RootMsg::Restart { index } => {
                if !state.stopping {
                    state.start_group(index, &myself).await?;
                }
            }
            RootMsg::RestartService { index } => {
                if !state.stopping && state.services[index].is_none() {
                    state.start_service(index, &myself).await?;
                }
            }
            RootMsg::InjectPanic { subsystem, reply } => {
                let service = state.args.services.iter().find(|s| s.name() == subsystem);
                let result = match service {
                    Some(service) => service.inject_panic(),
                    None => Err(crate::Error::NotFound { what: "subsystem" }),
                };
                let _ = reply.send(result);
            }
            RootMsg::LeaveGroups { reply } => {
                state.leave_groups().await;
                let _ = reply.send(());
            }
            RootMsg::Shutdown { reply } => {
                state.leave_groups().await;
                // After the groups, newest first: a handler still draining may need its
                // account actor. Leases were handed back before (`Conveyor::shutdown`).
                for (index, slot) in state.services.iter_mut().enumerate().rev() {
                    if let Some(cell) = slot.take() {
                        state.args.services[index].clear();
                        cell.stop_children_and_wait(Some("shutdown".into()), Some(SERVICE_STOP)).await;
                        if let Err(err) = cell.stop_and_wait(Some("shutdown".into()), Some(SERVICE_STOP)).await {
                            let name = state.args.services[index].name();
                            tracing::warn!(service = name, error = %err, "service did not stop in time");
                        }
                    }
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_default()),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        if state.stopping {
            return Ok(());
        }
        if let Some(index) = state.services.iter().position(|c| c.as_ref().is_some_and(|c| c.get_id() == id)) {
            state.services[index] = None;
            let service = &state.args.services[index];
            service.clear();
            // Its children (endpoint, run, account actors) belong to the dead incarnation;
            // the new one starts its own from the store.
            for orphan in cell.get_children() {
                orphan.stop(Some("supervisor died".into()));
            }
            let delay = state.service_restarts[index].next_delay();
            let name = service.name();
            tracing::error!(service = name, reason, delay_ms = delay.as_millis() as u64, "service died; restarting");
            metrics::restarted(service.kind(), name);
            myself.send_after(delay, move || RootMsg::RestartService { index });
            return Ok(());
        }
        let Some(index) =
            state.running.iter().position(|r| r.as_ref().is_some_and(|r| r.supervisor.actor().get_id() == id))
        else {
            return Ok(());
        };
        // Orphaned partition actors must not keep running (and committing) beside the new tree.
        for orphan in cell.get_children() {
            orphan.stop(Some("supervisor died".into()));
        }
        if let Some(dead) = state.running[index].take() {
            // Leaving the group revokes the dead child's partitions; nothing of theirs
            // was committed past what is done, so the restarted child loses nothing.
            let _ = dead.membership.stop().await;
        }
        let delay = state.restarts[index].next_delay();
        let group = &state.args.groups[index].group;
        tracing::error!(group, reason, delay_ms = delay.as_millis() as u64, "consumer supervisor died; restarting");
        metrics::restarted("consumer_supervisor", group);
        myself.send_after(delay, move || RootMsg::Restart { index });
        Ok(())
    }
}

impl RootState {
    async fn start_group(&mut self, index: usize, myself: &ActorRef<RootMsg>) -> Result<(), ActorProcessingErr> {
        let spec = self.args.groups[index].clone();
        self.args.log.ensure_topics(&[spec.topic.clone(), spec.dead_letters.topic.clone()]).await?;
        let supervisor = ConsumerSupervisorHandle::spawn(
            spec.group.clone(),
            spec.handler,
            spec.dead_letters,
            self.args.policy,
            self.args.processing.clone(),
            spec.park,
            Some(myself.get_cell()),
        )
        .await?;
        let listener: Arc<dyn GroupListener> = Arc::new(supervisor.clone());
        let membership = self.args.log.subscribe(&spec.group, &[spec.topic], listener).await?;
        self.running[index] = Some(Running { supervisor, membership });
        Ok(())
    }

    async fn leave_groups(&mut self) {
        self.stopping = true;
        for slot in self.running.iter_mut() {
            if let Some(r) = slot.take() {
                if let Err(err) = r.membership.stop().await {
                    tracing::error!(error = %crate::error::chain(&err), "leaving the group failed");
                }
                r.supervisor.actor().stop(Some("shutdown".into()));
            }
        }
    }

    async fn start_service(&mut self, index: usize, myself: &ActorRef<RootMsg>) -> Result<(), ActorProcessingErr> {
        let cell = self.args.services[index].spawn(myself.get_cell()).await?;
        self.services[index] = Some(cell);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::log::embedded::EmbeddedLog;
    use crate::log::{OutgoingRecord, Record};
    use crate::retry::HandlerError;

    #[derive(Default)]
    struct Count(AtomicUsize);

    #[async_trait]
    impl KeyHandler for Count {
        fn name(&self) -> &'static str {
            "count"
        }
        async fn handle(&self, _: &str, records: &[Record]) -> Result<(), HandlerError> {
            self.0.fetch_add(records.len(), Ordering::SeqCst);
            Ok(())
        }
    }

    async fn send(log: &EmbeddedLog, n: usize) {
        for i in 0..n {
            let record = OutgoingRecord {
                topic: "in".into(),
                key: Some(format!("k{i}")),
                payload: bytes::Bytes::from_static(b"{}"),
                headers: vec![],
            };
            log.producer().send(record, Duration::from_secs(5)).await.unwrap();
        }
    }

    async fn until(f: impl Fn() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition never held");
    }

    #[tokio::test]
    async fn a_dead_consumer_supervisor_is_restarted_and_consumption_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), 2).unwrap();
        let handler = Arc::new(Count::default());
        let args = RootArgs {
            log: Arc::new(log.clone()),
            groups: vec![GroupSpec {
                group: "g".into(),
                topic: "in".into(),
                handler: handler.clone(),
                dead_letters: DeadLetters {
                    producer: log.producer(),
                    topic: "dlq".into(),
                    timeout: Duration::from_secs(1),
                },
                park: None,
            }],
            services: vec![],
            policy: RetryPolicy { base: Duration::from_millis(5), cap: Duration::from_millis(10), max_attempts: 2 },
            processing: ProcessingConfig { commit_interval_ms: 10, ..ProcessingConfig::default() },
        };
        let (root, _) = Actor::spawn(None, RootSupervisor, args).await.unwrap();
        send(&log, 5).await;
        until(|| handler.0.load(Ordering::SeqCst) == 5).await;

        let child = root.get_children().into_iter().next().unwrap();
        child.kill();
        // Restarted after its backoff (1 s): it rejoins and owns both partitions again.
        let mut owned = 0;
        for _ in 0..300 {
            owned = ractor::call!(root, |reply| RootMsg::Status { reply }).unwrap().len();
            if owned == 2 && root.get_children().first().is_some_and(|c| c.get_id() != child.get_id()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(owned, 2);
        send(&log, 3).await;
        until(|| handler.0.load(Ordering::SeqCst) >= 8).await;
        ractor::call!(root, |reply| RootMsg::Shutdown { reply }).unwrap();
    }

    /// A service that counts pings and panics on request.
    struct Pinger;

    enum PingMsg {
        Ping { reply: RpcReplyPort<usize> },
        Panic,
    }

    impl Actor for Pinger {
        type Msg = PingMsg;
        type State = usize;
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<PingMsg>, (): ()) -> Result<usize, ActorProcessingErr> {
            Ok(0)
        }

        async fn handle(
            &self,
            _: ActorRef<PingMsg>,
            msg: PingMsg,
            pings: &mut usize,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                PingMsg::Ping { reply } => {
                    *pings += 1;
                    let _ = reply.send(*pings);
                }
                PingMsg::Panic => panic!("injected"),
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_panicking_service_is_reported_down_then_restarted_behind_its_slot() {
        use crate::supervision::{ActorService, Slot};

        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), 1).unwrap();
        let slot = Slot::new("pinger");
        let service = ActorService::new("Pinger", slot.clone(), || PingMsg::Panic, || (Pinger, ()));
        let args = RootArgs {
            log: Arc::new(log),
            services: vec![Arc::new(service)],
            groups: vec![],
            policy: RetryPolicy { base: Duration::from_millis(5), cap: Duration::from_millis(10), max_attempts: 2 },
            processing: ProcessingConfig::default(),
        };
        let (root, _) = Actor::spawn(None, RootSupervisor, args).await.unwrap();
        let ping = || async { ractor::call!(slot.get().unwrap(), |reply| PingMsg::Ping { reply }).unwrap() };
        assert_eq!(ping().await, 1);

        let injected = ractor::call!(root, |reply| RootMsg::InjectPanic { subsystem: "pinger".into(), reply });
        assert!(injected.unwrap().is_ok());
        let services = || async { ractor::call!(root, |reply| RootMsg::Services { reply }).unwrap() };
        until_async(|| async { services().await[0].state == ChildState::Restarting }).await;
        assert!(matches!(slot.get(), Err(crate::Error::SubsystemDown { subsystem: "pinger" })));

        // Back after its backoff (1 s) as a fresh incarnation, counted once.
        until_async(|| async { services().await[0].state == ChildState::Running }).await;
        assert_eq!(services().await[0].restarts, 1);
        assert_eq!(ping().await, 1, "a fresh incarnation starts from its arguments");
        let unknown = ractor::call!(root, |reply| RootMsg::InjectPanic { subsystem: "nope".into(), reply });
        assert!(matches!(unknown.unwrap(), Err(crate::Error::NotFound { .. })));
        ractor::call!(root, |reply| RootMsg::Shutdown { reply }).unwrap();
        assert!(slot.get().is_err(), "a stopped service is not reachable");
    }

    async fn until_async<F: std::future::Future<Output = bool>>(f: impl Fn() -> F) {
        for _ in 0..500 {
            if f().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition never held");
    }
}
