//! What the workflow API shows.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::definition::{Step, Trigger, WorkflowSpec};
use crate::store::{run, step, workflow};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkflowView {
    pub id: String,
    pub owner: String,
    pub name: String,
    pub description: String,
    pub is_active: bool,
    pub trigger: Trigger,
    pub steps: Vec<Step>,
    /// Templates or conditions that do not compile: runs will fail at those steps.
    pub warnings: Vec<Warning>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Warning {
    /// e.g. `steps[2].body`.
    pub field: String,
    pub message: String,
}

impl WorkflowView {
    pub fn new(row: &workflow::Model) -> Self {
        let spec: Option<WorkflowSpec> = serde_json::from_str(&row.spec).ok();
        WorkflowView {
            id: row.id.clone(),
            owner: row.owner.clone(),
            name: row.name.clone(),
            description: row.description.clone(),
            is_active: row.is_active,
            trigger: spec.as_ref().map(|s| s.trigger.clone()).unwrap_or(Trigger::Manual),
            warnings: spec
                .as_ref()
                .map(super::definition::template_warnings)
                .unwrap_or_default()
                .into_iter()
                .map(|w| Warning { field: w.field.into_owned(), message: w.message })
                .collect(),
            steps: spec.map(|s| s.steps).unwrap_or_default(),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StepView {
    pub index: i32,
    pub name: String,
    pub kind: crate::states::StepKind,
    pub status: crate::states::StepStatus,
    pub attempts: i32,
    pub response_code: Option<i32>,
    pub duration_ms: Option<i64>,
    /// http: `{status, body}`; condition: `{value}`.
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<step::Model> for StepView {
    fn from(s: step::Model) -> Self {
        StepView {
            index: s.idx,
            name: s.name,
            kind: s.kind,
            status: s.status,
            attempts: s.attempts,
            response_code: s.response_code,
            duration_ms: s.duration_ms,
            output: s.output.and_then(|o| serde_json::from_str(&o).ok()),
            error: s.error,
            started_at: s.started_at,
            finished_at: s.finished_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunView {
    pub id: String,
    pub workflow_id: String,
    pub status: crate::states::RunStatus,
    pub trigger: crate::states::TriggerKind,
    pub input: Value,
    /// The first step not finished.
    pub step_index: i32,
    pub error: Option<String>,
    /// Times it was picked up again after a restart or another daemon's crash.
    pub resumes: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub steps: Vec<StepView>,
}

impl RunView {
    pub fn new(r: run::Model, steps: Vec<step::Model>) -> Self {
        RunView {
            id: r.id,
            workflow_id: r.workflow_id,
            status: r.status,
            trigger: r.trigger_kind,
            input: serde_json::from_str(&r.input).unwrap_or(Value::Null),
            step_index: r.step_index,
            error: r.error,
            resumes: r.resumes,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            steps: steps.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunSummary {
    pub id: String,
    pub workflow_id: String,
    pub status: crate::states::RunStatus,
    pub trigger: crate::states::TriggerKind,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<run::Model> for RunSummary {
    fn from(r: run::Model) -> Self {
        RunSummary {
            id: r.id,
            workflow_id: r.workflow_id,
            status: r.status,
            trigger: r.trigger_kind,
            error: r.error,
            created_at: r.created_at,
            finished_at: r.finished_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunCounts {
    pub succeeded: u64,
    pub failed: u64,
    /// Pending or running.
    pub pending: u64,
    /// Cancelled by an operator.
    pub cancelled: u64,
}

/// `GET /dashboard`: a user's workflow and run totals.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Dashboard {
    pub workflows: u64,
    pub runs: RunCounts,
    /// The ten most recent runs.
    pub recent: Vec<RunSummary>,
}
