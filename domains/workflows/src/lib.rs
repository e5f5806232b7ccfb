//! Workflows (seeds 000/001): user-defined triggers and steps, run durably by actors.
//!
//! ```text
//! POST /workflows ── validate ── store (name unique per user) ── `definition.changed` ─┐
//! trigger: manual  POST /workflows/{id}/runs ── run row ── `run.requested` ──────────────┤ workflows.command
//!          event   a notification's fan-out matches the type (and condition) ── run row   │ (key = workflow id)
//!          schedule each daemon's Scheduler: cron or @every, missed fires coalesced     │
//! ConsumerSupervisor (group workflows) ── CommandHandler ◄──────────────────────────────┘
//! RunSupervisor ── leases a due run ── RunActor: step → checkpoint → step → checkpoint …
//!                  (polls for runs due again: delays, backoffs, a dead daemon's runs)
//! ```
//! http steps go out through the webhooks' client (same target policy, response cap) with
//! retries by error class ([`retry`]) and a circuit breaker per host.

pub mod commands;
pub mod context;
pub mod definition;
pub mod metrics;
pub mod migrations;
pub mod retention;
pub mod retry;
pub mod run_actor;
pub mod schedule;
pub mod states;
pub mod store;
pub mod supervisor;
pub mod template;
pub mod triggers;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use serde_json::Value;
use tokio::sync::Notify;

use self::commands::Command;
use self::definition::{Trigger, WorkflowSpec};
use self::states::TriggerKind;
use self::supervisor::Runs;
use self::triggers::{Triggers, new_run};
use self::views::{Dashboard, RunCounts, RunSummary, RunView, WorkflowView};
use crate::store::WorkflowStore;
use crate::store::workflow;
use conveyor_actors::Error;
use conveyor_actors::config::WorkflowsConfig;
use conveyor_actors::log::{OutgoingRecord, Producer};
use conveyor_webhooks::endpoints::Caller;

/// The workflow API's entry points; cheap to clone.
#[derive(Clone)]
pub struct Workflows {
    store: WorkflowStore,
    producer: Arc<dyn Producer>,
    config: Arc<WorkflowsConfig>,
    topic: String,
    produce_timeout: Duration,
    pub(crate) triggers: Triggers,
    runs: Runs,
    finished: Arc<Notify>,
}

impl Workflows {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: WorkflowStore,
        producer: Arc<dyn Producer>,
        config: &WorkflowsConfig,
        topic: String,
        produce_timeout: Duration,
        triggers: Triggers,
        runs: Runs,
        finished: Arc<Notify>,
    ) -> Self {
        Workflows {
            store,
            producer,
            config: Arc::new(config.clone()),
            topic,
            produce_timeout,
            triggers,
            runs,
            finished,
        }
    }

    async fn command(&self, workflow_id: &str, command: &Command) -> Result<(), Error> {
        let record = OutgoingRecord {
            topic: self.topic.clone(),
            key: Some(workflow_id.to_string()),
            payload: Bytes::from(serde_json::to_vec(command).unwrap_or_default()),
            headers: Vec::new(),
        };
        self.producer.send(record, self.produce_timeout).await.map(|_| ())
    }

    /// Announces a definition change; the store already has it, and every daemon's trigger
    /// cache expires within seconds anyway, so a failed announcement only costs latency.
    async fn changed(&self, workflow_id: &str) {
        self.triggers.invalidate();
        let command = Command::DefinitionChanged { workflow_id: workflow_id.to_string() };
        if let Err(err) = self.command(workflow_id, &command).await {
            tracing::warn!(error = %err, "announcing a workflow change");
        }
    }

    fn check(&self, spec: &WorkflowSpec) -> Result<(), Error> {
        let fields = definition::validate(spec, self.config.max_steps);
        if fields.is_empty() {
            return Ok(());
        }
        if fields.iter().all(|f| f.message.ends_with(definition::DUPLICATE)) {
            let names: Vec<String> = fields.iter().map(|f| f.message.clone()).collect();
            return Err(Error::Conflict {
                code: "duplicate_step_name",
                message: format!("step names must be unique: {}", names.join("; ")),
            });
        }
        Err(Error::InvalidInput { fields })
    }

    fn row(id: String, caller: &Caller, spec: &WorkflowSpec, created_at: chrono::DateTime<Utc>) -> workflow::Model {
        let (kind, event_type) = match &spec.trigger {
            Trigger::Event { event_type, .. } => (TriggerKind::Event, Some(event_type.clone())),
            Trigger::Schedule { .. } => (TriggerKind::Schedule, None),
            Trigger::Manual => (TriggerKind::Manual, None),
        };
        workflow::Model {
            id,
            owner: caller.user_id.clone(),
            name: spec.name.clone(),
            description: spec.description.clone(),
            is_active: spec.is_active,
            trigger_kind: kind,
            event_type,
            spec: serde_json::to_string(spec).unwrap_or_default(),
            last_fired_at: None,
            created_at,
            updated_at: Utc::now(),
        }
    }

    async fn visible(&self, caller: &Caller, id: &str) -> Result<workflow::Model, Error> {
        match self.store.get_workflow(id).await? {
            Some(row) if caller.admin || row.owner == caller.user_id => Ok(row),
            _ => Err(Error::NotFound { what: "workflow" }),
        }
    }

    pub async fn create(&self, caller: &Caller, spec: WorkflowSpec) -> Result<WorkflowView, Error> {
        self.check(&spec)?;
        let row = Self::row(format!("wf_{}", uuid::Uuid::now_v7().simple()), caller, &spec, Utc::now());
        self.store.insert_workflow(row.clone()).await?;
        self.changed(&row.id).await;
        Ok(WorkflowView::new(&row))
    }

    pub async fn list(&self, caller: &Caller) -> Result<Vec<WorkflowView>, Error> {
        let owner = (!caller.admin).then_some(caller.user_id.as_str());
        Ok(self.store.list_workflows(owner).await?.iter().map(WorkflowView::new).collect())
    }

    pub async fn get(&self, caller: &Caller, id: &str) -> Result<WorkflowView, Error> {
        Ok(WorkflowView::new(&self.visible(caller, id).await?))
    }

    /// Replaces the definition; runs already started keep the spec they started with.
    pub async fn replace(&self, caller: &Caller, id: &str, spec: WorkflowSpec) -> Result<WorkflowView, Error> {
        self.check(&spec)?;
        let old = self.visible(caller, id).await?;
        let owner = Caller { user_id: old.owner.clone(), admin: caller.admin };
        let mut row = Self::row(id.to_string(), &owner, &spec, old.created_at);
        // A schedule keeps counting from where it was.
        row.last_fired_at = old.last_fired_at;
        self.store.replace_workflow(row.clone()).await?;
        self.changed(id).await;
        Ok(WorkflowView::new(&row))
    }

    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<(), Error> {
        self.visible(caller, id).await?;
        self.store.delete_workflow(id).await?;
        self.changed(id).await;
        Ok(())
    }

    /// A manual run: stored as pending, then requested on the workflow's partition.
    pub async fn start_manual(&self, caller: &Caller, id: &str, input: Value) -> Result<RunView, Error> {
        let row = self.visible(caller, id).await?;
        if !row.is_active {
            return Err(Error::Conflict { code: "workflow_inactive", message: "the workflow is not active".into() });
        }
        let run_id = format!("run_{}", uuid::Uuid::now_v7().simple());
        let run = new_run(run_id.clone(), &row, TriggerKind::Manual, &input);
        self.store.insert_run(run.clone()).await?;
        let command = Command::RunRequested { workflow_id: id.to_string(), run_id: run_id.clone() };
        if let Err(err) = self.command(id, &command).await {
            // Not in the log: the caller is told, and the run does not happen behind its back.
            let _ = self.store.delete_run(&run_id).await;
            return Err(err);
        }
        Ok(RunView::new(run, Vec::new()))
    }

    pub async fn runs(&self, caller: &Caller, id: &str, limit: u64) -> Result<Vec<RunSummary>, Error> {
        self.visible(caller, id).await?;
        let rows = self.store.runs_of_workflow(id, limit.clamp(1, 500)).await?;
        Ok(rows.into_iter().map(RunSummary::from).collect())
    }

    /// A run with its steps; with `wait`, answers as soon as the run finishes (or when the
    /// wait is over, whichever comes first).
    pub async fn run(&self, caller: &Caller, id: &str, run_id: &str, wait: Option<Duration>) -> Result<RunView, Error> {
        self.visible(caller, id).await?;
        let wait = wait.unwrap_or_default().min(Duration::from_secs(self.config.max_wait_secs));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before reading, so a finish in between is not missed.
            let notified = self.finished.notified();
            let run = match self.store.get_run(run_id).await? {
                Some(run) if run.workflow_id == id => run,
                _ => return Err(Error::NotFound { what: "run" }),
            };
            let done = run.status.is_final();
            if done || tokio::time::Instant::now() >= deadline {
                let steps = self.store.run_steps(run_id).await?;
                return Ok(RunView::new(run, steps));
            }
            // Runs finishing in another daemon are seen by re-reading at least this often.
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(250)),
                notified,
            )
            .await;
        }
    }

    /// Cancels a pending or running run: it stops before its next step (a request in
    /// flight may finish, a delay is cut short), is stored as `cancelled` and never resumes.
    /// A finished run is a conflict (`run_finished`).
    pub async fn cancel(&self, caller: &Caller, id: &str, run_id: &str) -> Result<RunView, Error> {
        self.visible(caller, id).await?;
        let run = match self.store.get_run(run_id).await? {
            Some(run) if run.workflow_id == id => run,
            _ => return Err(Error::NotFound { what: "run" }),
        };
        let finished = |status: states::RunStatus| Error::Conflict {
            code: "run_finished",
            message: format!(
                "the run has already finished ({}); only pending or running runs can be cancelled",
                status.as_str()
            ),
        };
        if run.status.is_final() {
            return Err(finished(run.status));
        }
        if !self.store.cancel_run(run_id, Utc::now()).await? {
            // It finished between the read and the cancel.
            let status = self.store.get_run(run_id).await?.map_or(run.status, |r| r.status);
            return Err(finished(status));
        }
        metrics::metrics()
            .workflow_runs
            .add(1, &[conveyor_actors::metrics::kv(conveyor_actors::metrics::OUTCOME, "cancelled")]);
        self.runs.cancel(run_id.to_string());
        self.finished.notify_waiters();
        let run = self.store.get_run(run_id).await?.ok_or(Error::NotFound { what: "run" })?;
        let steps = self.store.run_steps(run_id).await?;
        Ok(RunView::new(run, steps))
    }

    pub async fn dashboard(&self, caller: &Caller) -> Result<Dashboard, Error> {
        let owner = (!caller.admin).then_some(caller.user_id.as_str());
        let workflows = self.store.list_workflows(owner).await?.len() as u64;
        let c = self.store.run_counts(owner).await?;
        let recent = self.store.recent_runs(owner, 10).await?.into_iter().map(RunSummary::from).collect();
        Ok(Dashboard {
            workflows,
            runs: RunCounts { succeeded: c.succeeded, failed: c.failed, pending: c.pending, cancelled: c.cancelled },
            recent,
        })
    }

    pub fn runs_handle(&self) -> Runs {
        self.runs.clone()
    }

    /// Run actors executing now.
    pub async fn running(&self) -> usize {
        self.runs.running().await
    }

    /// Graceful shutdown: stops every run where it stands and hands its lease back.
    pub async fn hand_back_leases(&self, within: std::time::Duration) {
        self.runs.hand_back_leases(within).await;
    }
}
