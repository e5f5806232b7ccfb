//! The root supervisor: owns the consumer supervisors and their group memberships, and
//! restarts a failed child with backoff (leaving and rejoining the group, so the new
//! child starts from committed offsets).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::config::ProcessingConfig;
use crate::consumer::{ConsumerSupervisorHandle, DeadLetters, KeyHandler, PartitionStatus};
use crate::log::{ConsumerHandle, GroupListener, LogBackend};
use crate::metrics;
use crate::retry::RetryPolicy;

/// The actor.
pub struct RootSupervisor;

/// One consumer group to run: which topic, with which handler.
#[derive(Clone)]
pub struct GroupSpec {
    pub group: String,
    pub topic: String,
    pub handler: Arc<dyn KeyHandler>,
    pub dead_letters: DeadLetters,
}

/// What the root supervisor is started with.
pub struct RootArgs {
    pub log: Arc<dyn LogBackend>,
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
    /// Restart the consumer of group number `index` (sent after a backoff).
    Restart { index: usize },
    /// Leave every group (draining and committing), stop the children, then reply.
    Shutdown { reply: RpcReplyPort<()> },
}

/// One consumer group as the status page shows it.
#[derive(Debug, Clone)]
pub struct GroupStatus {
    pub group: String,
    pub topic: String,
    /// `running`, or `restarting` while its supervisor waits out a backoff.
    pub state: &'static str,
    /// Restarts since the process started.
    pub restarts: u32,
    pub partitions: Vec<PartitionStatus>,
}

struct Running {
    supervisor: ConsumerSupervisorHandle,
    membership: Box<dyn ConsumerHandle>,
}

pub struct RootState {
    args: RootArgs,
    running: Vec<Option<Running>>,
    restarts: Vec<(u32, Instant)>,
    /// Every restart since start-up, per group (`restarts` resets; this does not).
    total_restarts: Vec<u32>,
    stopping: bool,
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(&self, myself: ActorRef<RootMsg>, args: RootArgs) -> Result<RootState, ActorProcessingErr> {
        let n = args.groups.len();
        let mut state = RootState {
            args,
            running: (0..n).map(|_| None).collect(),
            restarts: vec![(0, Instant::now()); n],
            total_restarts: vec![0; n],
            stopping: false,
        };
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
                    let (state_name, partitions) = match &state.running[index] {
                        Some(r) => ("running", r.supervisor.status().await),
                        None => ("restarting", Vec::new()),
                    };
                    groups.push(GroupStatus {
                        group: spec.group.clone(),
                        topic: spec.topic.clone(),
                        state: state_name,
                        restarts: state.total_restarts[index],
                        partitions,
                    });
                }
                let _ = reply.send(groups);
            }
            RootMsg::Restart { index } => {
                if !state.stopping {
                    state.start_group(index, &myself).await?;
                }
            }
            RootMsg::Shutdown { reply } => {
                state.stopping = true;
                for slot in state.running.iter_mut() {
                    if let Some(r) = slot.take() {
                        if let Err(err) = r.membership.stop().await {
                            tracing::error!(error = &err as &dyn std::error::Error, "leaving the group failed");
                        }
                        r.supervisor.actor().stop(Some("shutdown".into()));
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
        let delay = state.backoff(index);
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
            Some(myself.get_cell()),
        )
        .await?;
        let listener: Arc<dyn GroupListener> = Arc::new(supervisor.clone());
        let membership = self.args.log.subscribe(&spec.group, &[spec.topic], listener).await?;
        self.running[index] = Some(Running { supervisor, membership });
        Ok(())
    }

    /// 1 s, 2 s, 4 s … capped at 60 s; the count resets after ten quiet minutes.
    fn backoff(&mut self, index: usize) -> Duration {
        self.total_restarts[index] += 1;
        let (count, since) = &mut self.restarts[index];
        if since.elapsed() > Duration::from_secs(600) {
            *count = 0;
        }
        *since = Instant::now();
        *count += 1;
        RetryPolicy { base: Duration::from_secs(1), cap: Duration::from_secs(60), max_attempts: u32::MAX }
            .ceiling(*count)
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
            }],
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
}
