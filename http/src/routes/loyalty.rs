//! `/loyalty` in seed 004's shapes, and `GET /sagas/{id}`. Users withdraw their own
//! points; admins deposit or withdraw for anyone. Every change goes through the account's
//! actor ([`conveyor_actors::loyalty::Ledger`]).

use conveyor_actors::saga::SagaView;
use conveyor_actors::store::loyalty::{LedgerOp, LedgerOutcome, transaction};
use http::{HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Authorize, Principal, roles};
use crate::body;
use crate::error::{ApiError, FieldError};
use crate::server::Ctx;
use crate::{AppState, Response, json_response};

#[derive(Deserialize)]
struct OperationForm {
    #[serde(default)]
    uuid: Option<String>,
    operation: String,
    #[serde(default)]
    comment: String,
    /// The amount, in seed 004's name for it.
    balance: i64,
}

fn owner_or_admin(principal: &Principal, uuid: &str) -> Result<(), ApiError> {
    principal.require(&[roles::USER, roles::ADMIN])?;
    if principal.sub == uuid || principal.has_role(roles::ADMIN) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("admin (or the account's owner)".into()))
    }
}

fn transaction_json(t: &transaction::Model) -> serde_json::Value {
    json!({
        "id": t.id,
        "operation": t.kind,
        "amount": t.amount,
        "comment": t.comment,
        "reason": t.reason,
        "balance_after": t.balance_after,
        "created_at": t.created_at,
    })
}

pub async fn operate(state: &AppState, req: Request<Incoming>, ctx: &Ctx) -> Result<Response, ApiError> {
    let principal = state.authenticate(req.headers()).await?;
    principal.require(&[roles::USER, roles::ADMIN])?;
    let key = crate::idempotency::header_key(req.headers())?;
    let f: OperationForm = body::object(req.into_body(), ctx.body_limit).await?;
    let admin = principal.has_role(roles::ADMIN);
    let mut errors = Vec::new();
    let kind = match f.operation.as_str() {
        "w" => "w",
        "d" => "d",
        _ => {
            errors.push(FieldError::new("operation", "must be \"w\" (withdraw) or \"d\" (deposit)"));
            "w"
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
        (Some(uuid), true) if !uuid.is_empty() && uuid.len() <= 128 => uuid.clone(),
        (Some(_), true) => {
            errors.push(FieldError::new("uuid", "must be 1 to 128 characters"));
            String::new()
        }
        (Some(uuid), false) if !uuid.is_empty() && *uuid != principal.sub => {
            return Err(ApiError::Forbidden("admin (a user may only use its own points)".into()));
        }
        _ => principal.sub.clone(),
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    if kind == "d" && !admin {
        return Err(ApiError::Forbidden("admin (only admins deposit points)".into()));
    }
    let op = LedgerOp {
        user_id: account.clone(),
        kind,
        amount: f.balance,
        comment: f.comment,
        reason: "manual",
        idempotency_key: key.map(|k| format!("api:{account}:{k}")),
    };
    let outcome = state.conveyor.ledger.apply(op, None).await?;
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
    let mut response = json_response(
        StatusCode::OK,
        &json!({"status": "Success", "uuid": account, "balance": t.balance_after, "transaction": transaction_json(&t)}),
    );
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

pub async fn balance(state: &AppState, req: &Request<Incoming>, uuid: &str) -> Result<Response, ApiError> {
    let principal = state.authenticate(req.headers()).await?;
    owner_or_admin(&principal, uuid)?;
    let account =
        state.conveyor.store.loyalty_account(uuid).await?.ok_or(ApiError::ResourceNotFound("loyalty account"))?;
    Ok(json_response(StatusCode::OK, &json!({"status": "Success", "uuid": uuid, "balance": account.balance})))
}

pub async fn transactions(state: &AppState, req: &Request<Incoming>, uuid: &str) -> Result<Response, ApiError> {
    let principal = state.authenticate(req.headers()).await?;
    owner_or_admin(&principal, uuid)?;
    let (mut after_id, mut limit, mut errors) = (0i64, 50u64, Vec::new());
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
        match (k.as_ref(), v.parse::<i64>()) {
            ("after_id", Ok(n)) if n >= 0 => after_id = n,
            ("limit", Ok(n)) if (1..=500).contains(&n) => limit = n as u64,
            ("after_id", _) => errors.push(FieldError::new("after_id", "must be a non-negative integer")),
            ("limit", _) => errors.push(FieldError::new("limit", "must be an integer from 1 to 500")),
            (other, _) => errors.push(FieldError::new(other.to_string(), "unknown parameter")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let rows = state.conveyor.store.loyalty_transactions(uuid, after_id, limit).await?;
    let next = (rows.len() as u64 == limit).then(|| rows.last().map(|t| t.id)).flatten();
    let items: Vec<_> = rows.iter().map(transaction_json).collect();
    Ok(json_response(StatusCode::OK, &json!({"uuid": uuid, "transactions": items, "next_after_id": next})))
}

pub async fn saga(state: &AppState, req: &Request<Incoming>, id: &str) -> Result<Response, ApiError> {
    let principal = state.authenticate(req.headers()).await?;
    principal.require(&[roles::USER, roles::ADMIN])?;
    match state.conveyor.store.saga(id).await? {
        // Someone else's saga is "not found": its existence is not the caller's business.
        Some((s, steps)) if s.user_id == principal.sub || principal.has_role(roles::ADMIN) => {
            Ok(json_response(StatusCode::OK, &serde_json::to_value(SagaView::new(s, steps)).unwrap_or_default()))
        }
        _ => Err(ApiError::ResourceNotFound("saga")),
    }
}
