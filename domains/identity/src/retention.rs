//! Retention of finished sagas (with their steps), relayed outbox records, and expired refresh tokens and revocations.

use chrono::{DateTime, Utc};
use sea_orm::ColumnTrait;
use sea_orm::sea_query::{Condition, ExprTrait};

use crate::states::{OutboxRecordStatus, SagaStatus};
use crate::store::IdentityStore;
use crate::store::sagas::{outbox, saga, saga_step};
use crate::store::users::{refresh_token, revocation};
use conveyor_actors::Error;
use conveyor_actors::config::RetentionConfig;
use conveyor_actors::retention::PurgeRule;
use conveyor_actors::store::retention::{Batch, Family};

/// The tables' metric labels.
const SAGAS: &str = "sagas";
const SAGA_STEPS: &str = "saga_steps";
const OUTBOX: &str = "outbox";
const REFRESH_TOKENS: &str = "refresh_tokens";
const REVOKED_TOKENS: &str = "revoked_tokens";

pub fn rules(store: &IdentityStore, config: &RetentionConfig) -> Vec<PurgeRule> {
    let (sagas, outbox, tokens, revocations) = (store.clone(), store.clone(), store.clone(), store.clone());
    vec![
        PurgeRule::new("sagas", config.finished_sagas(), move |cutoff, n| {
            let store = sagas.clone();
            async move { store.purge_sagas(cutoff, n).await }
        }),
        PurgeRule::new("outbox", config.outbox_relayed(), move |cutoff, n| {
            let store = outbox.clone();
            async move { store.purge_outbox(cutoff, n).await }
        }),
        PurgeRule::new("refresh_tokens", config.expired_tokens(), move |cutoff, n| {
            let store = tokens.clone();
            async move { store.purge_refresh_tokens(cutoff, n).await }
        }),
        PurgeRule::new("revocations", config.expired_tokens(), move |cutoff, n| {
            let store = revocations.clone();
            async move { store.purge_revocations(cutoff, n).await }
        }),
    ]
}

impl IdentityStore {
    /// Finished sagas last changed before `cutoff`, with their steps.
    pub async fn purge_sagas(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use saga::Column;
        let finished = move || Column::Status.is_in(SagaStatus::FINAL).and(Column::UpdatedAt.lt(cutoff));
        let family = Family::<saga::Entity, saga_step::Entity> {
            op: "purge_sagas",
            id: Column::Id,
            parent_of_child: saga_step::Column::SagaId,
            tables: (SAGAS, SAGA_STEPS),
        };
        self.purge_family(family, finished, limit).await
    }

    /// Outbox records published before `cutoff`; pending and failed ones stay.
    pub async fn purge_outbox(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use outbox::{Column, Entity};
        let published =
            Condition::all().add(Column::Status.eq(OutboxRecordStatus::Published)).add(Column::PublishedAt.lt(cutoff));
        self.purge_where::<Entity>("purge_outbox", OUTBOX, Column::Id, published, limit).await
    }

    /// Refresh tokens that expired before `cutoff` (an expired token fails verification
    /// before its row is looked up).
    pub async fn purge_refresh_tokens(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use refresh_token::{Column, Entity};
        let expired = Condition::all().add(Column::ExpiresAt.lt(cutoff));
        self.purge_where::<Entity>("purge_refresh_tokens", REFRESH_TOKENS, Column::Jti, expired, limit).await
    }

    /// Revocations that expired before `cutoff` (every token they covered has expired).
    pub async fn purge_revocations(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use revocation::{Column, Entity};
        let expired = Condition::all().add(Column::ExpiresAt.lt(cutoff));
        self.purge_where::<Entity>("purge_revocations", REVOKED_TOKENS, Column::Id, expired, limit).await
    }
}

#[cfg(test)]
mod tests;
