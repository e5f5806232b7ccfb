//! The delivery path's batched statements: the fan-out writes many notifications' delivery
//! rows at once, an endpoint actor leases many due deliveries in one statement and writes
//! the outcomes of many attempts in one statement, instead of a round trip per delivery.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, LockBehavior, LockType, OnConflict, Order, Query};
use sea_orm::{
    ActiveEnum, ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult, QueryFilter,
    QueryTrait, Statement, Value,
};

use super::{DeliveryUpdate, WebhookStore, delivery, notification};
use crate::fanout::FanoutRows;
use crate::states::DeliveryStatus;
use conveyor_actors::Error;

/// Rows per multi-row statement: at most 11 bind parameters each stays far below SQLite's limit of
/// 32766 (and PostgreSQL's 65535).
const ROWS_PER_STATEMENT: usize = 1000;

impl WebhookStore {
    /// Leases up to `limit` due deliveries of one endpoint until `lease_until`, oldest due
    /// first, in one statement. Only the endpoint's own pending rows are read (the
    /// `webhook_deliveries_endpoint_due` index), so another endpoint's backlog costs nothing;
    /// rows another daemon is leasing right now are skipped (PostgreSQL: `FOR UPDATE SKIP
    /// LOCKED`, which checks the conditions again on the row it locks; SQLite has one writer).
    /// The outer update names rows by id only: a condition on `status` there would lead
    /// SQLite's planner to walk every pending row of every endpoint.
    pub async fn lease_due(
        &self,
        endpoint_id: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<delivery::Model>, Error> {
        use delivery::{Column, Entity};
        let due = Query::select()
            .column(Column::Id)
            .from(Entity)
            .and_where(Column::EndpointId.eq(endpoint_id))
            .and_where(Column::Status.eq(DeliveryStatus::Pending))
            .and_where(Column::NextAttemptAt.lte(now))
            .cond_where(Condition::any().add(Column::LeaseUntil.is_null()).add(Column::LeaseUntil.lt(now)))
            .order_by(Column::NextAttemptAt, Order::Asc)
            .order_by(Column::Id, Order::Asc)
            .limit(limit)
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            .to_owned();
        let update = Query::update()
            .table(Entity)
            .value(Column::LeaseUntil, lease_until)
            .and_where(Column::Id.in_subquery(due))
            .returning_all()
            .to_owned();
        let stmt = self.backend().build(&update);
        let mut rows = self.guarded("lease_due", Entity::find().from_raw_sql(stmt).all(self.connection())).await?;
        // RETURNING keeps no order.
        rows.sort_by(|a, b| (a.next_attempt_at, &a.id).cmp(&(b.next_attempt_at, &b.id)));
        Ok(rows)
    }

    /// Records many attempts' consequences on their deliveries and releases their leases.
    /// Only a leased row takes an outcome, so writing the same outcomes again (a refused
    /// group commit is retried caller by caller) counts no attempt twice:
    /// one statement per [`ROWS_PER_STATEMENT`] rows (a `VALUES` list joined to the table).
    pub async fn finish_attempts(&self, batch: &[(String, DeliveryUpdate)]) -> Result<(), Error> {
        for chunk in batch.chunks(ROWS_PER_STATEMENT) {
            let stmt = finish_statement(self.backend(), chunk, Utc::now());
            self.guarded("finish_attempts", self.connection().execute_raw(stmt)).await?;
        }
        Ok(())
    }

    /// Gives leases back without spending an attempt, due again at `until` (the endpoint's
    /// breaker opened while they waited).
    pub async fn defer_deliveries(&self, ids: &[String], until: DateTime<Utc>) -> Result<(), Error> {
        use delivery::{Column, Entity};
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let q = Entity::update_many()
                .col_expr(Column::NextAttemptAt, Expr::value(until))
                .col_expr(Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
                .filter(Column::Id.is_in(chunk.iter().cloned()))
                .filter(Column::Status.eq(DeliveryStatus::Pending))
                .exec(self.connection());
            self.guarded("defer_deliveries", q).await?;
        }
        Ok(())
    }
}

/// A delivery the fan-out creates (unless one exists for its notification and endpoint).
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub notification_id: String,
    pub endpoint_id: String,
    /// On an ordered endpoint, the notification's key (as stored: hashed when long).
    pub ordering_key: Option<String>,
    pub accepted_at: DateTime<Utc>,
    /// Leased at insert, until then, for the endpoint actor the fan-out hands it to;
    /// `None`: due for whichever actor leases it.
    pub lease_until: Option<DateTime<Utc>>,
}

#[derive(FromQueryResult)]
struct Received {
    id: String,
    received_at: DateTime<Utc>,
}

impl WebhookStore {
    /// The fan-out's write: stores the notifications (unless stored already: a posted one
    /// was, by the ingest), marks them fanned out, and creates their deliveries, in one
    /// transaction. Apart, an ordered lease could see a notification fanned out whose
    /// deliveries do not exist yet, and send a later one of its key first. Answers the
    /// deliveries it created leased (an existing one is left as it is and not answered).
    pub async fn fan_out(&self, rows: &[FanoutRows]) -> Result<Vec<delivery::Model>, Error> {
        use sea_orm::TransactionTrait;
        let work = async {
            let txn = self.connection().begin().await?;
            let accepted = upsert_notifications(&txn, rows.iter().map(|(n, _)| n.clone()).collect()).await?;
            let deliveries: Vec<NewDelivery> = rows
                .iter()
                .flat_map(|(n, endpoints)| {
                    // A posted notification was accepted when the ingest claimed it.
                    let accepted_at = accepted.get(&n.id).copied().unwrap_or(n.received_at);
                    endpoints.iter().map(move |target| NewDelivery {
                        notification_id: n.id.clone(),
                        endpoint_id: target.endpoint_id.clone(),
                        ordering_key: target.ordering_key.clone(),
                        accepted_at,
                        lease_until: target.lease_until,
                    })
                })
                .collect();
            let leased = insert_deliveries(&txn, &deliveries).await?;
            txn.commit().await?;
            Ok(leased)
        };
        self.guarded("fan_out", work).await
    }

    /// [`upsert_notifications`] on its own.
    pub async fn record_notifications(
        &self,
        rows: Vec<notification::Model>,
    ) -> Result<HashMap<String, DateTime<Utc>>, Error> {
        self.guarded("record_notifications", upsert_notifications(self.connection(), rows)).await
    }

    /// [`insert_deliveries`] on its own.
    pub async fn create_deliveries(&self, new: &[NewDelivery]) -> Result<Vec<delivery::Model>, Error> {
        self.guarded("create_deliveries", insert_deliveries(self.connection(), new)).await
    }
}

/// Stores notifications unless stored already and marks them fanned out, one statement
/// per [`ROWS_PER_STATEMENT`] rows. Answers each one's acceptance time as stored: a posted
/// notification's is its claim's.
async fn upsert_notifications(
    db: &impl ConnectionTrait,
    rows: Vec<notification::Model>,
) -> Result<HashMap<String, DateTime<Utc>>, DbErr> {
    use notification::{Column, Entity};
    let mut accepted = HashMap::with_capacity(rows.len());
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        // In the log, so accepted: a posted one's acceptance may not be written yet.
        let active = chunk.iter().cloned().map(|mut row| {
            row.fanned_out = true;
            row.accepted = true;
            notification::ActiveModel::from(row)
        });
        let mut insert = Entity::insert_many(active)
            .on_conflict(
                OnConflict::column(Column::Id).update_columns([Column::FannedOut, Column::Accepted]).to_owned(),
            )
            .into_query();
        insert.returning(Query::returning().columns([Column::Id, Column::ReceivedAt]));
        let stmt = db.get_database_backend().build(&insert);
        for row in Received::find_by_statement(stmt).all(db).await? {
            accepted.insert(row.id, row.received_at);
        }
    }
    Ok(accepted)
}

/// Creates one pending delivery, due now, per `(notification, endpoint)`; existing ones
/// are left alone. One statement per [`ROWS_PER_STATEMENT`] rows. Answers the ones it
/// created leased (`RETURNING` only where a chunk has any).
async fn insert_deliveries(db: &impl ConnectionTrait, new: &[NewDelivery]) -> Result<Vec<delivery::Model>, DbErr> {
    use delivery::{Column, Entity};
    let now = Utc::now();
    let mut leased = Vec::new();
    for chunk in new.chunks(ROWS_PER_STATEMENT) {
        let any_leased = chunk.iter().any(|d| d.lease_until.is_some());
        let rows = chunk.iter().map(|d| delivery::ActiveModel {
            id: Set(uuid::Uuid::now_v7().to_string()),
            notification_id: Set(d.notification_id.clone()),
            endpoint_id: Set(d.endpoint_id.clone()),
            status: Set(DeliveryStatus::Pending),
            attempts: Set(0),
            next_attempt_at: Set(now),
            lease_until: Set(d.lease_until),
            last_status_code: Set(None),
            last_error: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            ordering_key: Set(d.ordering_key.clone()),
            accepted_at: Set(Some(d.accepted_at)),
        });
        let insert = Entity::insert_many(rows)
            .on_conflict(OnConflict::columns([Column::NotificationId, Column::EndpointId]).do_nothing().to_owned());
        if !any_leased {
            insert.exec_without_returning(db).await?;
            continue;
        }
        // Only the rows inserted come back: a conflict returns nothing on either backend.
        let mut query = insert.into_query();
        query.returning_all();
        let stmt = db.get_database_backend().build(&query);
        let created = Entity::find().from_raw_sql(stmt).all(db).await?;
        leased.extend(created.into_iter().filter(|d| d.lease_until.is_some()));
    }
    Ok(leased)
}

/// `WITH u(…) AS (VALUES (…), …) UPDATE webhook_deliveries … FROM u WHERE id = u.id`: the
/// same text on both backends but for the placeholders (SQLite has UPDATE … FROM since 3.33).
fn finish_statement(backend: DbBackend, rows: &[(String, DeliveryUpdate)], now: DateTime<Utc>) -> Statement {
    let mut values: Vec<Value> = Vec::with_capacity(rows.len() * 5 + 1);
    let mut param = |v: Value| {
        values.push(v);
        match backend {
            DbBackend::Postgres => format!("${}", values.len()),
            _ => "?".to_string(),
        }
    };
    let mut tuples = Vec::with_capacity(rows.len());
    for (id, u) in rows {
        tuples.push(format!(
            "({}, {}, {}, {}, {})",
            param(id.clone().into()),
            param(u.status.to_value().into()),
            param(u.next_attempt_at.into()),
            param(u.status_code.into()),
            param(u.error.clone().into()),
        ));
    }
    let now = param(now.into());
    let sql = format!(
        "WITH u (id, status, next_attempt_at, last_status_code, last_error) AS (VALUES {}) \
         UPDATE webhook_deliveries SET status = u.status, attempts = webhook_deliveries.attempts + 1, \
         next_attempt_at = u.next_attempt_at, lease_until = NULL, last_status_code = u.last_status_code, \
         last_error = u.last_error, updated_at = {now} FROM u WHERE webhook_deliveries.id = u.id \
         AND webhook_deliveries.lease_until IS NOT NULL",
        tuples.join(", ")
    );
    Statement::from_sql_and_values(backend, sql, values)
}

#[cfg(test)]
pub(super) mod tests;
