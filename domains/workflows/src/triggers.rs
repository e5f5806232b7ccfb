//! Event and schedule triggers. Active workflows are read from the store at most every
//! couple of seconds (a `definition.changed` command clears the copy at once). Event
//! triggers are matched by the notifications' fan-out; schedules by a [`Scheduler`] in each
//! daemon. A run's id is derived from what triggered it (workflow + notification, or
//! workflow + fire time), so a trigger seen twice — a redelivery, two daemons — starts one run.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::definition::{Trigger, WorkflowSpec};
use super::schedule::Schedule;
use super::supervisor::Runs;
use super::template;
use crate::states::{RunStatus, TriggerKind};
use crate::store::WorkflowStore;
use crate::store::{run, workflow};
use conveyor_actors::Error;
use conveyor_actors::recent::Recent;
use conveyor_webhooks::filter::pattern_matches;

const TTL: Duration = Duration::from_secs(2);

/// An active workflow as its trigger needs it.
#[derive(Clone)]
struct Armed {
    row: workflow::Model,
    trigger: Trigger,
    schedule: Option<Schedule>,
}

#[derive(Clone)]
pub struct Triggers {
    store: WorkflowStore,
    runs: Runs,
    armed: Recent<Vec<Armed>>,
}

/// The run row a trigger creates: pending, due now, with the workflow's spec as of now.
pub fn new_run(id: String, workflow: &workflow::Model, kind: TriggerKind, input: &Value) -> run::Model {
    let now = Utc::now();
    run::Model {
        id,
        workflow_id: workflow.id.clone(),
        owner: workflow.owner.clone(),
        status: RunStatus::Pending,
        trigger_kind: kind,
        input: input.to_string(),
        spec: workflow.spec.clone(),
        step_index: 0,
        next_at: now,
        lease_until: None,
        resumes: 0,
        error: None,
        created_at: now,
        started_at: None,
        finished_at: None,
        updated_at: now,
    }
}

/// A run id derived from what triggered it.
fn derived_id(workflow_id: &str, cause: &str) -> String {
    let name = format!("{workflow_id}/{cause}");
    format!("run_{}", uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).simple())
}

impl Triggers {
    pub fn new(store: WorkflowStore, runs: Runs) -> Self {
        Triggers { store, runs, armed: Recent::new(TTL) }
    }

    pub fn invalidate(&self) {
        self.armed.invalidate();
    }

    async fn armed(&self) -> Result<Arc<Vec<Armed>>, Error> {
        self.armed
            .get_or_load(|| async {
                let mut armed = Vec::new();
                for kind in [TriggerKind::Event, TriggerKind::Schedule] {
                    for row in self.store.active_workflows(kind).await? {
                        let Ok(spec) = serde_json::from_str::<WorkflowSpec>(&row.spec) else { continue };
                        let schedule = match &spec.trigger {
                            Trigger::Schedule { cron, timezone } => Schedule::parse(cron, timezone).ok(),
                            _ => None,
                        };
                        armed.push(Armed { row, trigger: spec.trigger, schedule });
                    }
                }
                Ok(armed)
            })
            .await
    }

    /// Starts a run of every active workflow whose event trigger matches this notification.
    pub async fn on_event(&self, notification_id: &str, event_type: &str, envelope: &Value) -> Result<usize, Error> {
        let input = serde_json::json!({ "input": envelope });
        let mut started = 0;
        for armed in self.armed().await?.iter() {
            let Trigger::Event { event_type: pattern, condition } = &armed.trigger else { continue };
            if !pattern_matches(pattern, event_type) {
                continue;
            }
            if let Some(condition) = condition {
                match template::truthy(condition, &input) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(workflow = %armed.row.id, error = %e, "an event trigger's condition failed; not triggered");
                        continue;
                    }
                }
            }
            let id = derived_id(&armed.row.id, notification_id);
            if self.store.insert_run(new_run(id.clone(), &armed.row, TriggerKind::Event, envelope)).await? {
                started += 1;
            }
            self.runs.wake(id);
        }
        Ok(started)
    }

    /// Fires every schedule that is due at `now` (missed fires coalesce into one).
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<usize, Error> {
        let mut fired = 0;
        for armed in self.armed().await?.iter() {
            let Some(schedule) = &armed.schedule else { continue };
            let last = armed.row.last_fired_at.unwrap_or(armed.row.created_at);
            let Some(at) = schedule.due(last, now) else { continue };
            // Whoever moves last_fired_at creates the run; the derived id covers the rest.
            if self.store.mark_fired(&armed.row.id, at).await? {
                let id = derived_id(&armed.row.id, &at.to_rfc3339());
                let input = serde_json::json!({"scheduled_for": at.to_rfc3339()});
                self.store.insert_run(new_run(id.clone(), &armed.row, TriggerKind::Schedule, &input)).await?;
                self.runs.wake(id);
                fired += 1;
            }
        }
        if fired > 0 {
            self.invalidate();
        }
        Ok(fired)
    }
}

/// Wall-clock time read through tokio's clock, so paused-time tests move it.
#[derive(Clone, Copy)]
pub struct Clock {
    wall: DateTime<Utc>,
    mono: tokio::time::Instant,
}

impl Clock {
    pub fn start() -> Self {
        Clock { wall: Utc::now(), mono: tokio::time::Instant::now() }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.wall + chrono::Duration::from_std(self.mono.elapsed()).unwrap_or_default()
    }
}

/// Evaluates schedules every `tick`; runs until the task is aborted.
pub struct Scheduler;

impl Scheduler {
    pub fn spawn<F, Fut>(tick: Duration, mut fire: F) -> tokio::task::JoinHandle<()>
    where
        F: FnMut(DateTime<Utc>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let clock = Clock::start();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                fire(clock.now()).await;
            }
        })
    }
}

/// Event triggers, as webhook fan-out calls them for each notification.
#[async_trait::async_trait]
impl conveyor_webhooks::fanout::NotificationTriggers for Triggers {
    async fn on_event(&self, notification_id: &str, event_type: &str, envelope: &Value) -> Result<usize, Error> {
        Triggers::on_event(self, notification_id, event_type, envelope).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_schedule_fires_on_time() {
        let schedule = Schedule::parse("@every 60s", "UTC").expect("parse");
        let created = Clock::start().now();
        let fired = Arc::new(Mutex::new(Vec::new()));
        let seen = fired.clone();
        let last = Arc::new(Mutex::new(created));
        let task = Scheduler::spawn(Duration::from_millis(500), move |now| {
            let (seen, last, schedule) = (seen.clone(), last.clone(), schedule.clone());
            async move {
                let mut last = last.lock().expect("lock");
                if let Some(at) = schedule.due(*last, now) {
                    *last = at;
                    seen.lock().expect("lock").push(at);
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(59_400)).await;
        assert!(fired.lock().expect("lock").is_empty(), "nothing before the minute");
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert_eq!(fired.lock().expect("lock").len(), 1, "fired once at the minute");
        let at = fired.lock().expect("lock")[0];
        assert_eq!((at - created).num_seconds(), 60);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(fired.lock().expect("lock").len(), 2, "and again a minute later");
        task.abort();
    }
}
