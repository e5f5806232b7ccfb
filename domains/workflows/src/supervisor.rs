//! The run supervisor: leases a run and starts its [`RunActor`], at most
//! `workflows.max_concurrent_runs_per_user` per user in this daemon (the rest wait as
//! `pending`), and polls the store for runs that are due again: new ones whose command was
//! missed, delays that ended, runs a dead daemon left behind.
//!
//! On a graceful shutdown it stops every run actor where it stands (each step's checkpoint
//! is written before and after the step, so a cut-off step is simply done again) and then
//! clears the leases it held, so that the next daemon resumes the runs at once instead of
//! waiting for the leases to expire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio_util::sync::CancellationToken;

use super::context::RunContext;
use super::run_actor::{RunActor, RunArgs, RunMsg};
use crate::states::RunStatus;
use crate::store::run;
use conveyor_actors::supervision::{ActorService, Children, Slot};

/// Leases due runs and starts their actors; a service of the root supervisor.
pub struct RunSupervisor;

/// What the run supervisor starts with (cloned for every incarnation).
#[derive(Clone)]
pub struct RunSupervisorArgs {
    pub ctx: Arc<RunContext>,
}

/// The executing run actors.
pub struct RunSupervisorState {
    ctx: Arc<RunContext>,
    /// Run id → (owner, actor).
    running: Children<RunMsg, String>,
    /// Cancelled on shutdown: every run actor stops where it stands.
    stop: CancellationToken,
    /// Run id → the cancel token of its executing actor.
    cancels: HashMap<String, CancellationToken>,
}

/// Everything the run supervisor is told.
pub enum RunSupervisorMsg {
    /// This run may be ready: lease it and start its actor (if its owner has a free slot).
    Start { run_id: String },
    /// Timer: start the runs that are due.
    Poll,
    /// How many run actors are executing.
    Running { reply: RpcReplyPort<usize> },
    /// The run was cancelled in the store: if its actor runs here, end its wait and let it
    /// stop before its next step.
    Cancel { run_id: String },
    /// Test-only fault hook ([`conveyor_actors::supervision::Service::inject_panic`]).
    InjectPanic,
    /// Graceful shutdown: stop every run actor, clear the leases they held, start nothing
    /// more; answers how many leases were handed back.
    Shutdown { within: Duration, reply: RpcReplyPort<usize> },
}

impl Actor for RunSupervisor {
    type Msg = RunSupervisorMsg;
    type State = RunSupervisorState;
    type Arguments = RunSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RunSupervisorMsg>,
        args: RunSupervisorArgs,
    ) -> Result<RunSupervisorState, ActorProcessingErr> {
        myself.send_interval(Duration::from_millis(args.ctx.config.poll_interval_ms), || RunSupervisorMsg::Poll);
        let _ = myself.cast(RunSupervisorMsg::Poll);
        Ok(RunSupervisorState {
            ctx: args.ctx,
            running: Children::new("workflow-run"),
            stop: CancellationToken::new(),
            cancels: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RunSupervisorMsg>,
        msg: RunSupervisorMsg,
        state: &mut RunSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if state.stop.is_cancelled() && !matches!(msg, RunSupervisorMsg::Running { .. }) {
            return Ok(());
        }
        match msg {
            RunSupervisorMsg::Start { run_id } => match state.ctx.store.get_run(&run_id).await {
                Ok(Some(run)) if run.next_at <= Utc::now() => state.start(&myself, run).await,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "reading a run to start; the poll will find it"),
            },
            RunSupervisorMsg::Poll => match state.ctx.store.due_runs(Utc::now(), 200).await {
                Ok(due) => {
                    for run in due {
                        state.start(&myself, run).await;
                    }
                }
                Err(err) => tracing::warn!(error = %err, "looking up due workflow runs"),
            },
            RunSupervisorMsg::Running { reply } => {
                let _ = reply.send(state.running.len());
            }
            RunSupervisorMsg::Cancel { run_id } => {
                if let Some(cancel) = state.cancels.get(&run_id) {
                    cancel.cancel();
                }
            }
            RunSupervisorMsg::InjectPanic => panic!("injected fault in the run supervisor"),
            RunSupervisorMsg::Shutdown { within, reply } => {
                let released = state.shutdown(within).await;
                let _ = reply.send(released);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<RunSupervisorMsg>,
        event: SupervisionEvent,
        state: &mut RunSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // A run actor that failed leaves its lease to expire; the poll resumes the run from
        // its last checkpoint.
        state.running.on_event(&event);
        let running = &state.running;
        state.cancels.retain(|id, _| running.contains(id));
        Ok(())
    }
}

impl RunSupervisorState {
    async fn start(&mut self, myself: &ActorRef<RunSupervisorMsg>, run: run::Model) {
        if self.running.contains(&run.id) || !RunStatus::LIVE.contains(&run.status) {
            return;
        }
        let mine = self.running.values().filter(|owner| **owner == run.owner).count();
        if mine >= self.ctx.config.max_concurrent_runs_per_user {
            return;
        }
        let now = Utc::now();
        let until = now + chrono::Duration::milliseconds(self.ctx.config.lease_ms as i64);
        match self.ctx.store.lease_run(&run.id, now, until, false).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                tracing::warn!(error = %err, "leasing a workflow run");
                return;
            }
        }
        let (id, owner) = (run.id.clone(), run.owner.clone());
        let cancel = CancellationToken::new();
        let ctx = self.ctx.clone();
        let (stop, token) = (self.stop.child_token(), cancel.clone());
        let args = || (RunActor, RunArgs { run, ctx, stop, cancel: token }, owner);
        match self.running.get_or_spawn(&id, myself.get_cell(), args).await {
            Ok(_) => {
                self.cancels.insert(id, cancel);
            }
            Err(err) => tracing::error!(error = %err, "starting a workflow run actor; its lease will expire"),
        }
    }

    /// Stops the run actors (within `within`) and hands back the leases of those that
    /// stopped; a run whose actor did not stop in time keeps its lease, which then expires.
    async fn shutdown(&mut self, within: Duration) -> usize {
        self.stop.cancel();
        self.cancels.clear();
        let deadline = tokio::time::Instant::now() + within;
        let mut stopped = Vec::with_capacity(self.running.len());
        for (id, actor, _) in self.running.drain() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match actor.wait(Some(left)).await {
                Ok(()) => stopped.push(id),
                Err(_) => tracing::warn!(run = %id, "run actor did not stop in time; its lease will expire"),
            }
        }
        if stopped.is_empty() {
            return 0;
        }
        match self.ctx.store.release_runs(&stopped).await {
            Ok(released) => {
                tracing::info!(released, "workflow run leases handed back");
                released as usize
            }
            Err(err) => {
                tracing::warn!(error = %err, "handing back workflow run leases; they will expire");
                0
            }
        }
    }
}

/// The typed handle; it follows the run supervisor across restarts. A wake-up sent while it
/// is down is not lost: a fresh supervisor polls the store for due runs first.
#[derive(Clone)]
pub struct Runs {
    slot: Slot<RunSupervisorMsg>,
}

impl Runs {
    /// The handle and the service the root supervisor runs it as.
    pub fn service(ctx: Arc<RunContext>) -> (Self, ActorService<RunSupervisor>) {
        let slot = Slot::new("workflow-runs");
        let args = RunSupervisorArgs { ctx };
        let service = ActorService::new(
            "RunSupervisor",
            slot.clone(),
            || RunSupervisorMsg::InjectPanic,
            move || (RunSupervisor, args.clone()),
        );
        (Runs { slot }, service)
    }

    pub fn wake(&self, run_id: String) {
        self.slot.cast(RunSupervisorMsg::Start { run_id });
    }

    /// The run was cancelled in the store: stop its actor here, if it runs here, before its
    /// next step (another daemon's actor notices through its lease within `lease_ms / 3`).
    pub fn cancel(&self, run_id: String) {
        self.slot.cast(RunSupervisorMsg::Cancel { run_id });
    }

    pub async fn running(&self) -> usize {
        let Ok(actor) = self.slot.get() else { return 0 };
        ractor::call!(actor, |reply| RunSupervisorMsg::Running { reply }).unwrap_or_default()
    }

    /// Graceful shutdown: stops every run where it stands and hands its lease back (within
    /// `within`); the root supervisor then stops the run supervisor.
    pub async fn hand_back_leases(&self, within: Duration) {
        let Ok(actor) = self.slot.get() else { return };
        // The release query runs after the actors stopped: a little beyond `within`.
        let asked =
            actor.call(|reply| RunSupervisorMsg::Shutdown { within, reply }, Some(within + Duration::from_secs(2)));
        if !matches!(asked.await, Ok(ractor::rpc::CallResult::Success(_))) {
            tracing::warn!("run supervisor did not hand back its leases in time; they will expire");
        }
    }
}
