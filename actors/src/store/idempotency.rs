//! `idempotency_keys`: the `Idempotency-Key`s a front end has seen, bound to the request
//! they came with and durable across restarts. A key is claimed by the first request
//! (`in_progress`), then holds that request's answer (`completed`) until its window ends;
//! a repeat with the same body gets the answer back, one with another body is refused.
//! The store, not a cache, keeps them: an answer promised once must survive a restart
//! and a cache eviction. Expired rows are taken over by the next claim and swept by the
//! retention actor ([`Store::purge_idempotency_keys_expired_before`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Expr, OnConflict};
use serde::{Deserialize, Serialize};

use super::Store;
use crate::Error;

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Claimed by a request that has not answered yet (or died: see `expires_at`).
    InProgress,
    /// Answered; repeats get the stored answer.
    Completed,
}

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The operation the key belongs to (e.g. `events`, `events-batch`): a key is only
    /// compared with keys of the same operation, so the scope stands for method and path.
    pub scope: String,
    /// Whose key: the token's subject (one client's keys never meet another's).
    pub subject: String,
    pub key: String,
    /// SHA-256 of the request body, hex: a key reused with another body is refused.
    pub request_sha256: String,
    pub state: KeyState,
    /// The answer's HTTP status and JSON body, once completed.
    pub response_status: Option<i32>,
    pub response_body: Option<Json>,
    pub created_at: ChronoDateTimeUtc,
    /// In progress: when the claim lapses (its request cannot still be running).
    /// Completed: when the window ends. Past it, the key is free again.
    pub expires_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// One key of one client for one operation, with the hash of the request that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedRequest {
    pub scope: String,
    pub subject: String,
    pub key: String,
    /// SHA-256 of the request body, hex.
    pub request_sha256: String,
}

/// A stored answer: what a repeat gets back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAnswer {
    pub status: u16,
    pub body: serde_json::Value,
}

/// What [`IdempotencyKeys::begin`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Begin {
    /// This request owns the key; finish with `complete` or `abandon`.
    Started,
    /// The key's first request answered this; same body, so this is the answer.
    Replay(StoredAnswer),
    /// The key's first request is still running.
    InProgress,
    /// The key was used with another request body.
    OtherBody,
}

/// The operations on `idempotency_keys`; cheap to clone.
#[derive(Clone)]
pub struct IdempotencyKeys {
    store: Store,
    /// How long a completed key answers repeats.
    window: Duration,
    /// How long an in-progress claim holds without an answer (longer than any request may run).
    lease: Duration,
}

fn after(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    at + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// How many times `begin` retries when a key vanishes or is taken over under it.
const BEGIN_ATTEMPTS: usize = 3;

impl IdempotencyKeys {
    pub fn new(store: Store, window: Duration, lease: Duration) -> Self {
        IdempotencyKeys { store, window, lease }
    }

    fn this(req: &KeyedRequest) -> sea_orm::Condition {
        sea_orm::Condition::all()
            .add(Column::Scope.eq(req.scope.as_str()))
            .add(Column::Subject.eq(req.subject.as_str()))
            .add(Column::Key.eq(req.key.as_str()))
    }

    /// Claims the key for `req` at `now`, or says why not.
    pub async fn begin(&self, req: &KeyedRequest, now: DateTime<Utc>) -> Result<Begin, Error> {
        let db = self.store.connection();
        for _ in 0..BEGIN_ATTEMPTS {
            let row = ActiveModel {
                scope: Set(req.scope.clone()),
                subject: Set(req.subject.clone()),
                key: Set(req.key.clone()),
                request_sha256: Set(req.request_sha256.clone()),
                state: Set(KeyState::InProgress),
                response_status: Set(None),
                response_body: Set(None),
                created_at: Set(now),
                expires_at: Set(after(now, self.lease)),
                ..Default::default()
            };
            let conflict = OnConflict::columns([Column::Scope, Column::Subject, Column::Key]).do_nothing().to_owned();
            let insert = Entity::insert(row).on_conflict(conflict).exec_without_returning(db);
            if self.store.guarded("idempotency_claim", insert).await? == 1 {
                return Ok(Begin::Started);
            }
            let found = Entity::find().filter(Self::this(req)).one(db);
            let Some(found) = self.store.guarded("idempotency_read", found).await? else {
                continue; // Swept between the two statements: claim again.
            };
            if found.expires_at <= now {
                // Lapsed: take it over, unless another request just did.
                let take = Entity::update_many()
                    .col_expr(Column::RequestSha256, Expr::value(req.request_sha256.clone()))
                    .col_expr(Column::State, Expr::value(KeyState::InProgress))
                    .col_expr(Column::ResponseStatus, Expr::value(Option::<i32>::None))
                    .col_expr(Column::ResponseBody, Expr::value(Option::<Json>::None))
                    .col_expr(Column::CreatedAt, Expr::value(now))
                    .col_expr(Column::ExpiresAt, Expr::value(after(now, self.lease)))
                    .filter(Self::this(req))
                    .filter(Column::ExpiresAt.lte(now))
                    .exec(db);
                if self.store.guarded("idempotency_claim", take).await?.rows_affected == 1 {
                    return Ok(Begin::Started);
                }
                continue;
            }
            if found.request_sha256 != req.request_sha256 {
                return Ok(Begin::OtherBody);
            }
            return Ok(match (found.state, found.response_status, found.response_body) {
                (KeyState::Completed, Some(status), Some(body)) => {
                    Begin::Replay(StoredAnswer { status: u16::try_from(status).unwrap_or(500), body })
                }
                _ => Begin::InProgress,
            });
        }
        Ok(Begin::InProgress)
    }

    /// Stores the answer of the request that claimed the key (at `claimed`); repeats get
    /// it until the window ends. False if the claim was lost (it lapsed and was taken over).
    pub async fn complete(
        &self,
        req: &KeyedRequest,
        claimed: DateTime<Utc>,
        answer: &StoredAnswer,
    ) -> Result<bool, Error> {
        let done = Entity::update_many()
            .col_expr(Column::State, Expr::value(KeyState::Completed))
            .col_expr(Column::ResponseStatus, Expr::value(i32::from(answer.status)))
            .col_expr(Column::ResponseBody, Expr::value(answer.body.clone()))
            .col_expr(Column::ExpiresAt, Expr::value(after(claimed, self.window)))
            .filter(Self::this(req))
            .filter(Column::State.eq(KeyState::InProgress))
            .filter(Column::RequestSha256.eq(req.request_sha256.as_str()))
            .exec(self.store.connection());
        Ok(self.store.guarded("idempotency_complete", done).await?.rows_affected == 1)
    }

    /// Releases the claim so that a retry can run (the request failed without an answer).
    pub async fn abandon(&self, req: &KeyedRequest) -> Result<(), Error> {
        let gone = Entity::delete_many()
            .filter(Self::this(req))
            .filter(Column::State.eq(KeyState::InProgress))
            .filter(Column::RequestSha256.eq(req.request_sha256.as_str()))
            .exec(self.store.connection());
        self.store.guarded("idempotency_abandon", gone).await.map(drop)
    }
}

#[cfg(test)]
mod tests;
