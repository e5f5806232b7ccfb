//! One actor per executing run. It holds the run's lease (renewed while it works), executes
//! the first unfinished step, checkpoints the outcome, and only then moves on. After a
//! restart or a `kill -9` the run is picked up again at that step: finished steps are
//! never repeated, and every request carries `Idempotency-Key: {run_id}:{step}` so that
//! a target can recognise the one request a crash may have cut off before its checkpoint.
//! A graceful shutdown stops the actor the same way, between two checkpoints; its
//! supervisor then hands the lease back.
//!
//! A cancelled run (`POST /workflows/{id}/runs/{run_id}/cancel`) stops before its next
//! step: the store refuses to move a cancelled run on, a delay or a backoff is cut short by
//! the run's cancel token (set by this daemon's supervisor, or by the heartbeat when the
//! lease can no longer be renewed), and a request in flight is let finish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::context::RunContext;
use super::definition::{Otherwise, Step, WorkflowSpec};
use super::retry::{Next, after_attempt};
use super::template;
use crate::metrics::metrics;
use crate::states::{RunStatus, StepStatus};
use crate::store::{run, step};
use conveyor_actors::metrics::{ERROR_CLASS, OUTCOME, kv};
use conveyor_webhooks::client::{AttemptClass, Request};

/// The actor; its behaviour is in [`RunState`].
pub struct RunActor;

/// What a run actor is started with.
pub struct RunArgs {
    pub run: run::Model,
    pub ctx: Arc<RunContext>,
    /// Cancelled on shutdown: the step in progress is abandoned and the actor stops.
    pub stop: CancellationToken,
    /// Cancelled when the run is: waits end at once and no further step starts.
    pub cancel: CancellationToken,
}

/// One executing run.
pub struct RunState {
    run: run::Model,
    spec: WorkflowSpec,
    steps: Vec<step::Model>,
    ctx: Arc<RunContext>,
    stop: CancellationToken,
    cancel: CancellationToken,
    /// The store said the run was cancelled: no further step, nothing more written.
    cancelled: bool,
    heartbeat: tokio::task::JoinHandle<()>,
}

/// Everything a run actor is told.
pub enum RunMsg {
    /// Execute the first unfinished step (the actor sends itself one per step).
    Advance,
}

/// What a step led to.
enum Flow {
    /// Go on with the run's (updated) step index.
    Continue,
    /// Let go until this time (a long delay): the poll picks the run up again.
    Release(chrono::DateTime<Utc>),
    /// The run ended.
    Finish { failed: bool, error: Option<String> },
    /// The run was cancelled: stop before the next step.
    Cancelled,
}

impl Actor for RunActor {
    type Msg = RunMsg;
    type State = RunState;
    type Arguments = RunArgs;

    async fn pre_start(&self, myself: ActorRef<RunMsg>, args: RunArgs) -> Result<RunState, ActorProcessingErr> {
        let RunArgs { mut run, ctx, stop, cancel } = args;
        let spec: WorkflowSpec = serde_json::from_str(&run.spec)?;
        let steps = ctx.store.run_steps(&run.id).await?;
        let now = Utc::now();
        let resumed = run.status == RunStatus::Running || !steps.is_empty();
        if resumed {
            run.resumes += 1;
            metrics().workflow_runs.add(1, &[kv(OUTCOME, "resumed")]);
        } else {
            metrics().workflow_runs.add(1, &[kv(OUTCOME, "started")]);
        }
        run.status = RunStatus::Running;
        run.started_at.get_or_insert(now);
        run.updated_at = now;
        // Cancelled between its lease and now: the first Advance stops the actor.
        let cancelled = !ctx.store.save_run(run.clone(), false).await?;
        let heartbeat = tokio::spawn(renew_lease(ctx.clone(), run.id.clone(), stop.child_token(), cancel.clone()));
        myself.cast(RunMsg::Advance)?;
        Ok(RunState { run, spec, steps, ctx, stop, cancel, cancelled, heartbeat })
    }

    async fn handle(
        &self,
        myself: ActorRef<RunMsg>,
        _msg: RunMsg,
        state: &mut RunState,
    ) -> Result<(), ActorProcessingErr> {
        // Shutting down: drop the step where it stands. What it wrote is a checkpoint (each
        // one is a transaction); a step cut off is done again by whoever resumes the run.
        let stop = state.stop.clone();
        let flow = tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            flow = state.advance() => Some(flow?),
        };
        let Some(flow) = flow else {
            myself.stop(Some("shutdown".into()));
            return Ok(());
        };
        // Cancelled while the step ran: the step's outcome is recorded, the next one never starts.
        let flow = if state.cancelled || state.cancel.is_cancelled() { Flow::Cancelled } else { flow };
        match flow {
            Flow::Continue => myself.cast(RunMsg::Advance)?,
            Flow::Cancelled => {
                tracing::info!(run = %state.run.id, "workflow run cancelled; stopped before its next step");
                myself.stop(Some("cancelled".into()));
            }
            Flow::Release(at) => {
                state.run.next_at = at;
                state.run.lease_until = None;
                state.run.updated_at = Utc::now();
                state.ctx.store.save_run(state.run.clone(), true).await?;
                myself.stop(Some("released".into()));
            }
            Flow::Finish { failed, error } => {
                state.finish(failed, error).await?;
                myself.stop(Some("finished".into()));
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<RunMsg>, state: &mut RunState) -> Result<(), ActorProcessingErr> {
        // Wait for the heartbeat to end rather than abort it: a renewal already sent must
        // land before the supervisor clears the lease, never after.
        state.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut state.heartbeat).await.is_err() {
            state.heartbeat.abort();
        }
        Ok(())
    }
}

/// Keeps the lease while the actor lives; if renewal fails the lease lapses and another
/// daemon resumes the run from its last checkpoint.
/// A lease that cannot be renewed (the run was cancelled, or another daemon has it now)
/// cancels the run here: a wait in progress ends at once.
async fn renew_lease(ctx: Arc<RunContext>, run_id: String, stop: CancellationToken, cancel: CancellationToken) {
    let lease = Duration::from_millis(ctx.config.lease_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(lease / 3) => {}
            _ = stop.cancelled() => return,
        }
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        match ctx.store.lease_run(&run_id, now, until, true).await {
            Ok(true) => {}
            Ok(false) => {
                cancel.cancel();
                return;
            }
            Err(err) => tracing::warn!(error = %err, "renewing a run's lease"),
        }
    }
}

fn parse_output(text: &Option<String>) -> Value {
    text.as_deref().and_then(|t| serde_json::from_str(t).ok()).unwrap_or(Value::Null)
}

impl RunState {
    /// `input`, `steps.<name>` (finished steps' outputs) and `run`.
    fn context(&self) -> Value {
        let steps: serde_json::Map<String, Value> = self
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Succeeded)
            .map(|s| (s.name.clone(), parse_output(&s.output)))
            .collect();
        json!({
            "input": serde_json::from_str::<Value>(&self.run.input).unwrap_or(Value::Null),
            "steps": steps,
            "run": {"id": self.run.id, "workflow_id": self.run.workflow_id},
        })
    }

    fn row(&self, idx: usize) -> step::Model {
        self.steps.iter().find(|s| s.idx == idx as i32).cloned().unwrap_or_else(|| {
            let spec = &self.spec.steps[idx];
            step::Model {
                run_id: self.run.id.clone(),
                idx: idx as i32,
                name: spec.name().to_string(),
                kind: spec.kind(),
                status: StepStatus::Running,
                attempts: 0,
                response_code: None,
                output: None,
                error: None,
                started_at: None,
                finished_at: None,
                duration_ms: None,
            }
        })
    }

    /// Writes a step's row (and, with `next`, the run's new position) in one transaction.
    /// A cancelled run's step row is still written (the step ran) but the run stays put.
    async fn checkpoint(&mut self, row: step::Model, next: Option<usize>) -> Result<(), conveyor_actors::Error> {
        let run_row = next.map(|n| {
            self.run.step_index = n as i32;
            self.run.updated_at = Utc::now();
            self.run.clone()
        });
        if !self.ctx.store.checkpoint(row.clone(), run_row).await? {
            self.cancelled = true;
        }
        match self.steps.iter_mut().find(|s| s.idx == row.idx) {
            Some(existing) => *existing = row,
            None => self.steps.push(row),
        }
        Ok(())
    }

    /// Sleeps `delay` unless the run is cancelled first; `false` when it was.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.cancel.cancelled() => false,
        }
    }

    async fn advance(&mut self) -> Result<Flow, conveyor_actors::Error> {
        if self.cancelled || self.cancel.is_cancelled() {
            return Ok(Flow::Cancelled);
        }
        let idx = self.run.step_index.max(0) as usize;
        let Some(step) = self.spec.steps.get(idx).cloned() else {
            return Ok(Flow::Finish { failed: false, error: None });
        };
        let mut row = self.row(idx);
        row.started_at.get_or_insert(Utc::now());
        match step {
            Step::Condition { predicate, otherwise, .. } => {
                let value = match template::truthy(&predicate, &self.context()) {
                    Ok(v) => v,
                    Err(e) => return self.fail_step(row, format!("condition: {e}")).await,
                };
                self.succeed(&mut row, json!({"value": value}), None);
                match (value, otherwise) {
                    (true, _) => self.checkpoint(row, Some(idx + 1)).await?,
                    (false, Otherwise::Skip) => {
                        self.checkpoint(row, None).await?;
                        self.skip(idx + 1, idx + 2).await?;
                    }
                    (false, Otherwise::Stop) => {
                        self.checkpoint(row, None).await?;
                        self.skip(idx + 1, self.spec.steps.len()).await?;
                    }
                }
                Ok(Flow::Continue)
            }
            Step::Delay { seconds, .. } => {
                if row.attempts == 0 {
                    // The start of the wait is the checkpoint: a restart continues it.
                    row.attempts = 1;
                    self.checkpoint(row.clone(), None).await?;
                }
                let started = row.started_at.unwrap_or_else(Utc::now);
                let until = started + chrono::Duration::seconds(seconds as i64);
                let left = (until - Utc::now()).to_std().unwrap_or_default();
                if left > Duration::from_millis(self.ctx.config.lease_ms / 2) {
                    return Ok(Flow::Release(until));
                }
                if !self.pause(left).await {
                    return Ok(Flow::Cancelled);
                }
                self.succeed(&mut row, json!({"waited_secs": seconds}), None);
                self.checkpoint(row, Some(idx + 1)).await?;
                Ok(Flow::Continue)
            }
            Step::Http { method, url, headers, body, timeout_ms, .. } => {
                self.http(idx, row, (method, url, headers, body, timeout_ms)).await
            }
        }
    }

    fn succeed(&self, row: &mut step::Model, output: Value, code: Option<i32>) {
        let now = Utc::now();
        row.status = StepStatus::Succeeded;
        row.output = Some(output.to_string());
        row.response_code = code.or(row.response_code);
        row.error = None;
        row.finished_at = Some(now);
        row.duration_ms = row.started_at.map(|s| (now - s).num_milliseconds());
    }

    /// Marks steps `from..to` skipped and moves the run past them.
    async fn skip(&mut self, from: usize, to: usize) -> Result<(), conveyor_actors::Error> {
        let to = to.min(self.spec.steps.len());
        for i in from..to {
            let mut row = self.row(i);
            row.status = StepStatus::Skipped;
            row.finished_at = Some(Utc::now());
            self.checkpoint(row, Some(i + 1)).await?;
        }
        if from >= to {
            self.run.step_index = to as i32;
        }
        Ok(())
    }

    async fn fail_step(&mut self, mut row: step::Model, error: String) -> Result<Flow, conveyor_actors::Error> {
        let now = Utc::now();
        row.status = StepStatus::Failed;
        row.error = Some(error.clone());
        row.finished_at = Some(now);
        row.duration_ms = row.started_at.map(|s| (now - s).num_milliseconds());
        self.checkpoint(row.clone(), None).await?;
        Ok(Flow::Finish { failed: true, error: Some(format!("step {:?}: {error}", row.name)) })
    }

    async fn http(
        &mut self,
        idx: usize,
        mut row: step::Model,
        (method, url, headers, body, timeout_ms): (
            String,
            String,
            std::collections::BTreeMap<String, String>,
            Option<String>,
            Option<u64>,
        ),
    ) -> Result<Flow, conveyor_actors::Error> {
        let context = self.context();
        let rendered = (|| -> Result<_, template::TemplateError> {
            let url = template::render(&url, &context)?;
            let headers = headers
                .iter()
                .map(|(k, v)| Ok((k.clone(), template::render(v, &context)?)))
                .collect::<Result<Vec<_>, template::TemplateError>>()?;
            let body = body.as_deref().map(|b| template::render(b, &context)).transpose()?;
            Ok((url, headers, body))
        })();
        let (url, mut headers, body) = match rendered {
            Ok(r) => r,
            Err(e) => return self.fail_step(row, format!("template: {e}")).await,
        };
        let host = reqwest::Url::parse(&url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
        let breaker = self.ctx.breakers.get(&host);
        headers.push(("idempotency-key".into(), format!("{}:{}", self.run.id, row.name)));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let timeout = Duration::from_millis(
            timeout_ms.unwrap_or(self.ctx.config.step_timeout_ms).min(self.ctx.config.step_timeout_ms),
        );
        loop {
            let permit = match breaker.acquire() {
                Ok(p) => p,
                Err(_) => {
                    // An open breaker costs no attempt: wait for it to let a probe through.
                    if !self.pause(Duration::from_millis(self.ctx.config.breaker_open_ms.min(5_000))).await {
                        return Ok(Flow::Cancelled);
                    }
                    continue;
                }
            };
            row.attempts += 1;
            self.checkpoint(row.clone(), None).await?;
            let started = Instant::now();
            let request = Request {
                method: method.clone(),
                url: &url,
                headers: headers.clone(),
                body: bytes::Bytes::from(body.clone().unwrap_or_default()),
                timeout: Some(timeout),
            };
            let response = self.ctx.client.send(request).await;
            let downstream_failed =
                matches!(response.class, AttemptClass::Http5xx | AttemptClass::Connect | AttemptClass::Timeout);
            permit.record(downstream_failed);
            let next = after_attempt(&response, row.attempts as u32, &self.ctx.config, &mut rand::rng());
            let outcome = match next {
                Next::Done => "succeeded",
                Next::Retry(_) => "retried",
                Next::Fail => "failed",
            };
            metrics().workflow_step_attempts.add(1, &[kv(OUTCOME, outcome), kv(ERROR_CLASS, response.class.as_str())]);
            row.response_code = response.status.map(i32::from);
            row.error = response.error.clone();
            match next {
                Next::Done => {
                    let text = response.excerpt.clone().unwrap_or_default();
                    let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                    let code = row.response_code;
                    self.succeed(&mut row, json!({"status": response.status, "body": body}), code);
                    row.duration_ms = Some(started.elapsed().as_millis() as i64).max(row.duration_ms);
                    self.checkpoint(row, Some(idx + 1)).await?;
                    return Ok(Flow::Continue);
                }
                Next::Retry(delay) => {
                    self.checkpoint(row.clone(), None).await?;
                    if !self.pause(delay).await {
                        return Ok(Flow::Cancelled);
                    }
                }
                Next::Fail => {
                    let error = match (response.status, &response.error) {
                        (Some(code), _) => format!("HTTP {code} after {} attempt(s)", row.attempts),
                        (None, Some(e)) => format!("{e} after {} attempt(s)", row.attempts),
                        (None, None) => "failed".into(),
                    };
                    if let Some(excerpt) = &response.excerpt {
                        row.output = Some(json!({"status": response.status, "body": excerpt}).to_string());
                    }
                    return self.fail_step(row, error).await;
                }
            }
        }
    }

    async fn finish(&mut self, failed: bool, error: Option<String>) -> Result<(), conveyor_actors::Error> {
        let now = Utc::now();
        self.run.status = if failed { RunStatus::Failed } else { RunStatus::Succeeded };
        self.run.error = error;
        self.run.finished_at = Some(now);
        self.run.lease_until = None;
        self.run.updated_at = now;
        if !self.ctx.store.save_run(self.run.clone(), true).await? {
            // Cancelled after its last step: it stays cancelled, and is not dead-lettered.
            return Ok(());
        }
        metrics().workflow_runs.add(1, &[kv(OUTCOME, self.run.status.as_str())]);
        if failed {
            let attempts = self.steps.iter().map(|s| s.attempts).max().unwrap_or(0);
            self.ctx.dead_letter(&self.run, attempts).await;
        }
        self.ctx.finished.notify_waiters();
        Ok(())
    }
}
