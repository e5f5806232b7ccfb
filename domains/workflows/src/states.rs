//! The states workflows store: each is an enum, stored as its snake_case name (the same
//! strings the columns always held) and shown as an enum in the API document.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Due at `next_at` (new, waiting out a delay or a backoff, or replayed).
    Pending,
    /// Leased by a daemon that is executing it.
    Running,
    Succeeded,
    /// A step failed for good; a replay of its dead letter resumes it.
    Failed,
    /// An operator cancelled it: it stopped before its next step and never runs again.
    Cancelled,
}

impl RunStatus {
    /// States a runner may pick up.
    pub const LIVE: [RunStatus; 2] = [RunStatus::Pending, RunStatus::Running];
    /// States after which no runner holds the run.
    pub const FINAL: [RunStatus; 3] = [RunStatus::Succeeded, RunStatus::Failed, RunStatus::Cancelled];

    pub fn is_final(self) -> bool {
        Self::FINAL.contains(&self)
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Running,
    Succeeded,
    Failed,
    /// A condition before it said to skip it.
    Skipped,
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Http,
    Delay,
    Condition,
}

/// What starts runs of a workflow, and what started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    Event,
    Schedule,
    Manual,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_run_is_final_and_stored_as_cancelled() {
        assert!(RunStatus::Cancelled.is_final());
        assert!(!RunStatus::LIVE.contains(&RunStatus::Cancelled));
        assert_eq!(serde_json::to_value(RunStatus::Cancelled).unwrap_or_default(), "cancelled");
        assert_eq!(RunStatus::Cancelled.as_str(), "cancelled");
        assert_eq!(sea_orm::ActiveEnum::to_value(&RunStatus::Cancelled), "cancelled");
    }
}
