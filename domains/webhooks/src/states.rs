//! The states webhook delivery stores: each is an enum, stored as its snake_case name
//! (the same strings the columns always held) and shown as an enum in the API document.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Due now or at `next_attempt_at`.
    Pending,
    Succeeded,
    /// The schedule is exhausted or the endpoint refused it (dead-lettered).
    Failed,
    /// Its endpoint was deleted before it was sent.
    Discarded,
}

impl DeliveryStatus {
    /// States no worker will touch again (only an admin's resend revives one).
    pub const FINAL: [DeliveryStatus; 3] =
        [DeliveryStatus::Succeeded, DeliveryStatus::Failed, DeliveryStatus::Discarded];
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
        }
    }
}

/// Why an endpoint is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum DisabledReason {
    /// By its owner or an admin.
    Manual,
    /// It answered 410.
    Gone,
    /// It failed without a success for `disable_after_failing_secs`.
    Failing,
}

impl DisabledReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DisabledReason::Manual => "manual",
            DisabledReason::Gone => "gone",
            DisabledReason::Failing => "failing",
        }
    }
}
