//! `/loyalty` in seed 004's shapes, and `GET /sagas/{id}`. Users withdraw their own
//! points; admins deposit or withdraw for anyone. Every change goes through the account's
//! actor ([`conveyor_identity::loyalty::Ledger`]).

use axum::extract::{Request, State};
use conveyor_identity::loyalty::{LedgerOp, LedgerOutcome, TransactionView};
use conveyor_identity::saga::SagaView;
use conveyor_identity::states::{LedgerKind, LedgerReason};
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Authorize, Principal, roles};
use crate::body;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::extract::RawPath;
use crate::{App, Response, json_response};

#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"balance": 1, "comment": "purchase", "operation": "w", "uuid": "e66a298a-c835-4cfa-8c8e-60534f4c00f9"}))]
pub struct OperationForm {
    /// The account (admins only; a user's own account otherwise).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    uuid: Option<String>,
    /// `w` (withdraw) or `d` (deposit, admins only).
    #[schema(pattern = "^[wd]$")]
    operation: String,
    #[serde(default)]
    #[schema(max_length = 500)]
    comment: String,
    /// The amount of points.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "conveyor_actors::json::integer")]
    balance: i64,
}

#[derive(Serialize, ToSchema)]
pub struct OperationBody {
    /// `Success`.
    pub status: String,
    pub uuid: String,
    /// After the operation.
    pub balance: i64,
    pub transaction: TransactionView,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "Success", "uuid": "e66a298a-c835-4cfa-8c8e-60534f4c00f9", "balance": 78}))]
pub struct BalanceBody {
    pub status: String,
    pub uuid: String,
    pub balance: i64,
}

#[derive(Serialize, ToSchema)]
pub struct TransactionsPage {
    pub uuid: String,
    pub transactions: Vec<TransactionView>,
    /// Pass as `after_id` for the next page; null on the last.
    pub next_after_id: Option<i64>,
}

fn owner_or_admin(principal: &Principal, uuid: &str) -> Result<(), ApiError> {
    principal.require(&[roles::USER, roles::ADMIN])?;
    if principal.sub == uuid || principal.has_role(roles::ADMIN) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("admin (or the account's owner)".into()))
    }
}

/// Withdraw (own points) or, as an admin, deposit or withdraw for any account.
#[utoipa::path(post, path = "/loyalty", tag = "loyalty", request_body = OperationForm,
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,255}$", description = "1 to 255 visible ASCII characters; a repeat returns the first transaction")),
    responses((status = 200, body = OperationBody),
        (status = 409, body = ErrorBody, description = "`insufficient_balance`: the withdrawal exceeds the balance")))]
pub async fn operate(State(state): App, req: Request) -> Result<Response, ApiError> {
    let principal = state.authenticate(req.headers()).await?;
    principal.require(&[roles::USER, roles::ADMIN])?;
    let key = crate::idempotency::header_key(req.headers())?;
    let f: OperationForm = body::object(req).await?;
    let admin = principal.has_role(roles::ADMIN);
    let mut errors = Vec::new();
    let kind = match f.operation.as_str() {
        "w" => LedgerKind::Withdrawal,
        "d" => LedgerKind::Deposit,
        _ => {
            errors.push(FieldError::new("operation", "must be \"w\" (withdraw) or \"d\" (deposit)"));
            LedgerKind::Withdrawal
        }
    };
    if f.balance <= 0 || f.balance > 1_000_000_000 {
        errors.push(FieldError::new("balance", "must be a whole number of points from 1 to 1000000000"));
    }
    if f.comment.chars().count() > 500 {
        errors.push(FieldError::new("comment", "must be at most 500 characters"));
    }
    // An admin acts on the body's uuid; a user on its own account only.
    let account = match (&f.uuid, admin) {
        (Some(uuid), _) if uuid.is_empty() || uuid.chars().count() > 128 => {
            errors.push(FieldError::new("uuid", "must be 1 to 128 characters"));
            String::new()
        }
        (Some(uuid), true) => uuid.clone(),
        (Some(uuid), false) if *uuid != principal.sub => {
            return Err(ApiError::Forbidden("admin (a user may only use its own points)".into()));
        }
        _ => principal.sub.clone(),
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    if kind == LedgerKind::Deposit && !admin {
        return Err(ApiError::Forbidden("admin (only admins deposit points)".into()));
    }
    let op = LedgerOp {
        user_id: account.clone(),
        kind,
        amount: f.balance,
        comment: f.comment,
        reason: LedgerReason::Manual,
        idempotency_key: key.map(|k| format!("api:{account}:{k}")),
    };
    let outcome = state.conveyor.ledger.operate(op).await?;
    let (t, replayed) = match outcome {
        LedgerOutcome::Applied(t) => (t, false),
        LedgerOutcome::Replayed(t) => (t, true),
        LedgerOutcome::Insufficient { balance } => {
            return Err(ApiError::Conflict {
                code: "insufficient_balance",
                message: format!("the balance is {balance} points, less than the {} requested", f.balance),
            });
        }
    };
    let body = OperationBody { status: "Success".into(), uuid: account, balance: t.balance_after, transaction: t };
    let mut response = json_response(StatusCode::OK, &json!(body));
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// An account's balance, for its owner or an admin.
#[utoipa::path(get, path = "/loyalty/{uuid}", tag = "loyalty", params(("uuid" = String, Path, description = "The user id", example = "e66a298a-c835-4cfa-8c8e-60534f4c00f9")),
    responses((status = 200, body = BalanceBody), (status = 404, body = ErrorBody, description = "No loyalty account")))]
pub async fn balance(State(state): App, RawPath(uuid): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let principal = state.authenticate(req.headers()).await?;
    owner_or_admin(&principal, &uuid)?;
    let balance = state.conveyor.loyalty.balance(&uuid).await?.ok_or(ApiError::ResourceNotFound("loyalty account"))?;
    let body = BalanceBody { status: "Success".into(), uuid: uuid.to_string(), balance };
    Ok(json_response(StatusCode::OK, &json!(body)))
}

/// An account's ledger, oldest first, paged by id.
#[utoipa::path(get, path = "/loyalty/{uuid}/transactions", tag = "loyalty", params(
    ("uuid" = String, Path, description = "The user id", example = "e66a298a-c835-4cfa-8c8e-60534f4c00f9"),
    ("after_id" = Option<i64>, Query, minimum = 0), ("limit" = Option<i64>, Query, minimum = 1, maximum = 500),
), responses((status = 200, body = TransactionsPage)))]
pub async fn transactions(
    State(state): App,
    RawPath(uuid): RawPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let principal = state.authenticate(req.headers()).await?;
    owner_or_admin(&principal, &uuid)?;
    let (mut after_id, mut limit, mut errors) = (0i64, 50u64, Vec::new());
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
        match (k.as_ref(), conveyor_actors::json::parse_integer(&v)) {
            ("after_id", Some(n)) if n >= 0 => after_id = n,
            ("limit", Some(n)) if (1..=500).contains(&n) => limit = n as u64,
            ("after_id", _) => errors.push(FieldError::new("after_id", "must be a non-negative integer")),
            ("limit", _) => errors.push(FieldError::new("limit", "must be an integer from 1 to 500")),
            (other, _) => errors.push(FieldError::new(other.to_string(), "unknown parameter")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let transactions = state.conveyor.loyalty.transactions(&uuid, after_id, limit).await?;
    let next = (transactions.len() as u64 == limit).then(|| transactions.last().map(|t| t.id)).flatten();
    Ok(json_response(
        StatusCode::OK,
        &json!(TransactionsPage { uuid: uuid.to_string(), transactions, next_after_id: next }),
    ))
}

/// A saga's status and steps, for its user or an admin.
#[utoipa::path(get, path = "/sagas/{id}", tag = "loyalty", params(("id" = String, Path, description = "The saga id (see `/auth/info`)")),
    responses((status = 200, body = SagaView), (status = 404, body = ErrorBody)))]
pub async fn saga(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let principal = state.authenticate(req.headers()).await?;
    principal.require(&[roles::USER, roles::ADMIN])?;
    match state.conveyor.loyalty.saga(&id).await? {
        // Someone else's saga is "not found": its existence is not the caller's business.
        Some(saga) if saga.user_id == principal.sub || principal.has_role(roles::ADMIN) => {
            Ok(json_response(StatusCode::OK, &serde_json::to_value(saga).unwrap_or_default()))
        }
        _ => Err(ApiError::ResourceNotFound("saga")),
    }
}
