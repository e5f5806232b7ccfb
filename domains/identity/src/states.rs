//! The states identity and loyalty store: each is an enum, stored as the same string the
//! column always held and shown as an enum in the API document.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which saga (one kind so far).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum SagaKind {
    Registration,
}

impl SagaKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaKind::Registration => "registration",
        }
    }
}

/// Where a saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    Started,
    Completed,
    Compensated,
}

impl SagaStatus {
    /// States after which nothing but a late, idempotent event arrives.
    pub const FINAL: [SagaStatus; 2] = [SagaStatus::Completed, SagaStatus::Compensated];
}

/// How a saga step went (also the `outcome` label of `conveyor.saga.steps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum SagaStepStatus {
    Started,
    Completed,
    Failed,
    Compensated,
}

impl SagaStepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStepStatus::Started => "started",
            SagaStepStatus::Completed => "completed",
            SagaStepStatus::Failed => "failed",
            SagaStepStatus::Compensated => "compensated",
        }
    }
}

/// Where an outbox record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum OutboxRecordStatus {
    Pending,
    Published,
    /// Publishing failed; retried with backoff.
    Failed,
}

impl OutboxRecordStatus {
    /// States the relay still has to publish.
    pub const UNPUBLISHED: [OutboxRecordStatus; 2] = [OutboxRecordStatus::Pending, OutboxRecordStatus::Failed];
}

/// Which way a ledger entry moves points (one-letter codes, as older clients send them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum LedgerKind {
    #[sea_orm(string_value = "d")]
    #[serde(rename = "d")]
    Deposit,
    #[sea_orm(string_value = "w")]
    #[serde(rename = "w")]
    Withdrawal,
}

/// Why a ledger entry was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum LedgerReason {
    /// Credited once per user by the registration saga.
    WelcomeBonus,
    /// Through the API.
    Manual,
    /// Taking back a welcome bonus whose saga was compensated.
    Reversal,
}
