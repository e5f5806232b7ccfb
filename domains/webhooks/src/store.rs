//! `webhook_endpoints`, `notifications` (the dedup record and the payload deliveries send),
//! `webhook_deliveries` (one per notification and endpoint, with its retry schedule and a
//! lease so that two daemons never send the same delivery at once) and `webhook_attempts`.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
};

use conveyor_actors::Error;

use crate::states::{DeliveryStatus, DisabledReason};
use conveyor_actors::store::Store;

mod claims;
mod leases;
mod ordered;

pub use leases::NewDelivery;
pub use ordered::OrderedLease;

/// The store, with webhook delivery's tables; cheap to clone.
#[derive(Clone)]
pub struct WebhookStore(Store);

impl WebhookStore {
    pub fn new(store: Store) -> Self {
        WebhookStore(store)
    }
}

impl std::ops::Deref for WebhookStore {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.0
    }
}

pub mod endpoint {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_endpoints")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// The user id that created it.
        pub owner: String,
        /// Conveyor's own domain events go only to endpoints created by admins.
        pub owner_is_admin: bool,
        pub url: String,
        pub description: String,
        /// JSON array of exact types and `prefix.*` patterns; empty = every type.
        pub event_types: String,
        /// JSON array of project names; empty = every project.
        pub projects: String,
        pub rate_limit_per_sec: Option<i32>,
        pub secret: String,
        /// Still signs (as a second signature) until `previous_secret_until`.
        pub previous_secret: Option<String>,
        pub previous_secret_until: Option<ChronoDateTimeUtc>,
        pub disabled: bool,
        pub disabled_reason: Option<crate::states::DisabledReason>,
        /// Set by the first failed attempt after a success; cleared by a success.
        pub failing_since: Option<ChronoDateTimeUtc>,
        /// Where each notification's ordering key is ([`crate::ordering::OrderingKey`]);
        /// `None` = unordered.
        pub ordering_key: Option<String>,
        pub created_at: ChronoDateTimeUtc,
        pub updated_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod notification {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "notifications")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub event_type: String,
        pub project: Option<String>,
        /// The envelope as posted; it is the body every endpoint receives.
        pub payload: String,
        /// False while the log has not acknowledged it (the claim is released on failure).
        pub accepted: bool,
        pub received_at: ChronoDateTimeUtc,
        /// False from the ingest's claim until the fan-out has made its deliveries: ordered
        /// deliveries accepted later wait for it (the watermark, `store::ordered`).
        pub fanned_out: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod delivery {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_deliveries")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub notification_id: String,
        pub endpoint_id: String,
        pub status: crate::states::DeliveryStatus,
        pub attempts: i32,
        pub next_attempt_at: ChronoDateTimeUtc,
        pub lease_until: Option<ChronoDateTimeUtc>,
        pub last_status_code: Option<i32>,
        pub last_error: Option<String>,
        pub created_at: ChronoDateTimeUtc,
        pub updated_at: ChronoDateTimeUtc,
        /// Its key on an ordered endpoint (hashed when long); `None` = sent unordered.
        pub ordering_key: Option<String>,
        /// When its notification was accepted (the ingest's claim, or the fan-out for a
        /// domain event): a key's deliveries go in this order.
        pub accepted_at: Option<ChronoDateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod attempt {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_attempts")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub delivery_id: String,
        pub notification_id: String,
        pub endpoint_id: String,
        /// 1 for the first attempt.
        pub attempt: i32,
        pub outcome: crate::states::AttemptOutcome,
        pub error_class: crate::client::AttemptClass,
        pub status_code: Option<i32>,
        pub latency_ms: i64,
        pub response_excerpt: Option<String>,
        pub error: Option<String>,
        pub created_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What claiming a notification id found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Ours to publish.
    New,
    /// Accepted within the dedup window (or being accepted right now).
    Duplicate,
}

/// One delivery's result, written by its endpoint's actor.
#[derive(Debug, Clone)]
pub struct DeliveryUpdate {
    pub status: DeliveryStatus,
    pub next_attempt_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

/// Deliveries per status for one endpoint (the metrics API).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    pub succeeded: u64,
    pub failed: u64,
    pub pending: u64,
    pub discarded: u64,
}

#[derive(FromQueryResult)]
struct StatusCount {
    status: DeliveryStatus,
    n: i64,
}

#[derive(FromQueryResult)]
struct EndpointIdRow {
    endpoint_id: String,
}

impl WebhookStore {
    /// The log refused the notification: the client may post it again.
    pub async fn release_notification(&self, id: &str) -> Result<(), Error> {
        use notification::{Column, Entity};
        let q =
            Entity::delete_many().filter(Column::Id.eq(id)).filter(Column::Accepted.eq(false)).exec(self.connection());
        self.guarded("release_notification", q).await.map(|_| ())
    }

    /// Stores a notification that came from the log rather than `POST /notifications`
    /// (a domain event), so deliveries can find its payload.
    pub async fn record_notification(&self, row: notification::Model) -> Result<(), Error> {
        use notification::{Column, Entity};
        let active: notification::ActiveModel = row.into();
        let q = Entity::insert(active)
            .on_conflict(OnConflict::column(Column::Id).do_nothing().to_owned())
            .exec_without_returning(self.connection());
        self.guarded("record_notification", q).await.map(|_| ())
    }

    pub async fn get_notification(&self, id: &str) -> Result<Option<notification::Model>, Error> {
        self.guarded("get_notification", notification::Entity::find_by_id(id.to_string()).one(self.connection())).await
    }

    pub async fn insert_endpoint(&self, row: endpoint::Model) -> Result<(), Error> {
        let active: endpoint::ActiveModel = row.into();
        self.guarded("insert_endpoint", endpoint::Entity::insert(active).exec_without_returning(self.connection()))
            .await?;
        Ok(())
    }

    pub async fn get_endpoint(&self, id: &str) -> Result<Option<endpoint::Model>, Error> {
        self.guarded("get_endpoint", endpoint::Entity::find_by_id(id.to_string()).one(self.connection())).await
    }

    /// Endpoints of one owner, or every endpoint for `None`, oldest first.
    pub async fn list_endpoints(&self, owner: Option<&str>) -> Result<Vec<endpoint::Model>, Error> {
        use endpoint::{Column, Entity};
        let mut q = Entity::find().order_by_asc(Column::CreatedAt).order_by_asc(Column::Id);
        if let Some(owner) = owner {
            q = q.filter(Column::Owner.eq(owner));
        }
        self.guarded("list_endpoints", q.all(self.connection())).await
    }

    /// Endpoints deliveries may be created for.
    pub async fn enabled_endpoints(&self) -> Result<Vec<endpoint::Model>, Error> {
        use endpoint::{Column, Entity};
        self.guarded("enabled_endpoints", Entity::find().filter(Column::Disabled.eq(false)).all(self.connection()))
            .await
    }

    /// Writes the whole row (the caller read, changed and passes it back).
    pub async fn update_endpoint(&self, row: endpoint::Model) -> Result<(), Error> {
        let active: endpoint::ActiveModel = sea_orm::IntoActiveModel::into_active_model(row).reset_all();
        self.guarded("update_endpoint", endpoint::Entity::update(active).exec(self.connection())).await?;
        Ok(())
    }

    /// Disables an endpoint unless it is already disabled; true if this call disabled it.
    pub async fn disable_endpoint(&self, id: &str, reason: DisabledReason) -> Result<bool, Error> {
        use endpoint::{Column, Entity};
        let q = Entity::update_many()
            .col_expr(Column::Disabled, Expr::value(true))
            .col_expr(Column::DisabledReason, Expr::value(reason))
            .col_expr(Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(Column::Id.eq(id))
            .filter(Column::Disabled.eq(false))
            .exec(self.connection());
        Ok(self.guarded("disable_endpoint", q).await?.rows_affected == 1)
    }

    /// Remembers when an endpoint started failing (kept if already set) or clears it.
    pub async fn set_endpoint_failing(&self, id: &str, failing: bool) -> Result<(), Error> {
        use endpoint::{Column, Entity};
        let mut q = Entity::update_many().filter(Column::Id.eq(id));
        q = if failing {
            q.col_expr(Column::FailingSince, Expr::value(Utc::now())).filter(Column::FailingSince.is_null())
        } else {
            q.col_expr(Column::FailingSince, Expr::value(Option::<DateTime<Utc>>::None))
                .filter(Column::FailingSince.is_not_null())
        };
        self.guarded("set_endpoint_failing", q.exec(self.connection())).await.map(|_| ())
    }

    /// Deletes an endpoint; its pending deliveries are discarded.
    pub async fn delete_endpoint(&self, id: &str) -> Result<bool, Error> {
        use delivery::Column as D;
        let discard = delivery::Entity::update_many()
            .col_expr(D::Status, Expr::value(DeliveryStatus::Discarded))
            .col_expr(D::UpdatedAt, Expr::value(Utc::now()))
            .filter(D::EndpointId.eq(id))
            .filter(D::Status.eq(DeliveryStatus::Pending))
            .exec(self.connection());
        self.guarded("discard_deliveries", discard).await?;
        let q = endpoint::Entity::delete_by_id(id.to_string()).exec(self.connection());
        Ok(self.guarded("delete_endpoint", q).await?.rows_affected == 1)
    }

    /// Endpoints with a delivery due by `now` and not leased.
    pub async fn due_endpoints(&self, now: DateTime<Utc>, limit: u64) -> Result<Vec<String>, Error> {
        use delivery::{Column, Entity};
        let q = Entity::find()
            .select_only()
            .column(Column::EndpointId)
            .distinct()
            .filter(Column::Status.eq(DeliveryStatus::Pending))
            .filter(Column::NextAttemptAt.lte(now))
            .filter(Condition::any().add(Column::LeaseUntil.is_null()).add(Column::LeaseUntil.lt(now)))
            .limit(limit)
            .into_model::<EndpointIdRow>()
            .all(self.connection());
        Ok(self.guarded("due_endpoints", q).await?.into_iter().map(|r| r.endpoint_id).collect())
    }

    /// Clears the leases of pending deliveries whose requests were cut off (a graceful
    /// shutdown): no attempt spent, due time unchanged, so the next poll sends them at once.
    /// Answers how many were handed back.
    pub async fn release_deliveries(&self, ids: &[String]) -> Result<u64, Error> {
        use delivery::{Column, Entity};
        let q = Entity::update_many()
            .col_expr(Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .col_expr(Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(Column::Id.is_in(ids.iter().cloned()))
            .filter(Column::Status.eq(DeliveryStatus::Pending))
            .filter(Column::LeaseUntil.is_not_null())
            .exec(self.connection());
        Ok(self.guarded("release_deliveries", q).await?.rows_affected)
    }

    pub async fn get_delivery(&self, id: &str) -> Result<Option<delivery::Model>, Error> {
        self.guarded("get_delivery", delivery::Entity::find_by_id(id.to_string()).one(self.connection())).await
    }

    /// The delivery of a notification to an endpoint, if one was created.
    pub async fn find_delivery(
        &self,
        notification_id: &str,
        endpoint_id: &str,
    ) -> Result<Option<delivery::Model>, Error> {
        use delivery::{Column, Entity};
        let q = Entity::find()
            .filter(Column::NotificationId.eq(notification_id))
            .filter(Column::EndpointId.eq(endpoint_id))
            .one(self.connection());
        self.guarded("find_delivery", q).await
    }

    /// Deliveries of one notification (the records API).
    pub async fn deliveries_of_notification(&self, notification_id: &str) -> Result<Vec<delivery::Model>, Error> {
        use delivery::{Column, Entity};
        let q = Entity::find().filter(Column::NotificationId.eq(notification_id)).order_by_asc(Column::Id);
        self.guarded("deliveries_of_notification", q.all(self.connection())).await
    }

    /// Sends a finished delivery again with a fresh schedule; false if it is still pending.
    pub async fn resend_delivery(&self, id: &str) -> Result<bool, Error> {
        use delivery::{Column, Entity};
        let now = Utc::now();
        let q = Entity::update_many()
            .col_expr(Column::Status, Expr::value(DeliveryStatus::Pending))
            .col_expr(Column::Attempts, Expr::value(0))
            .col_expr(Column::NextAttemptAt, Expr::value(now))
            .col_expr(Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .col_expr(Column::UpdatedAt, Expr::value(now))
            .filter(Column::Id.eq(id))
            .filter(Column::Status.ne(DeliveryStatus::Pending))
            .exec(self.connection());
        Ok(self.guarded("resend_delivery", q).await?.rows_affected == 1)
    }

    /// Deliveries per status for one endpoint.
    pub async fn delivery_counts(&self, endpoint_id: &str) -> Result<DeliveryCounts, Error> {
        use delivery::{Column, Entity};
        let q = Entity::find()
            .select_only()
            .column(Column::Status)
            .column_as(Column::Id.count(), "n")
            .filter(Column::EndpointId.eq(endpoint_id))
            .group_by(Column::Status)
            .into_model::<StatusCount>()
            .all(self.connection());
        let mut counts = DeliveryCounts::default();
        for row in self.guarded("delivery_counts", q).await? {
            let n = Ord::max(row.n, 0) as u64;
            match row.status {
                DeliveryStatus::Succeeded => counts.succeeded = n,
                DeliveryStatus::Failed => counts.failed = n,
                DeliveryStatus::Pending => counts.pending = n,
                DeliveryStatus::Discarded => counts.discarded += n,
            }
        }
        Ok(counts)
    }

    /// Writes a batch of attempt records in one statement.
    pub async fn insert_attempts(&self, rows: Vec<attempt::Model>) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = rows.into_iter().map(|row| {
            let mut active: attempt::ActiveModel = row.into();
            active.id = sea_orm::ActiveValue::NotSet;
            active
        });
        self.guarded("insert_attempts", attempt::Entity::insert_many(rows).exec_without_returning(self.connection()))
            .await
            .map(|_| ())
    }

    /// Attempts for one endpoint, newest first, before the attempt id `before` if given.
    pub async fn attempts_of_endpoint(
        &self,
        endpoint_id: &str,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<attempt::Model>, Error> {
        use attempt::{Column, Entity};
        let mut q = Entity::find().filter(Column::EndpointId.eq(endpoint_id));
        if let Some(before) = before {
            q = q.filter(Column::Id.lt(before));
        }
        let q = q.order_by_desc(Column::Id).limit(limit).all(self.connection());
        self.guarded("attempts_of_endpoint", q).await
    }

    /// Attempts for one notification, oldest first, limited to `endpoints` when given.
    pub async fn attempts_of_notification(
        &self,
        notification_id: &str,
        endpoints: Option<&[String]>,
    ) -> Result<Vec<attempt::Model>, Error> {
        use attempt::{Column, Entity};
        let mut q = Entity::find().filter(Column::NotificationId.eq(notification_id));
        if let Some(endpoints) = endpoints {
            q = q.filter(Column::EndpointId.is_in(endpoints.iter().cloned()));
        }
        self.guarded("attempts_of_notification", q.order_by_asc(Column::Id).limit(1000).all(self.connection())).await
    }
}
