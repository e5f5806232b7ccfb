//! Webhook delivery (seed 002): Conveyor's own replacement for the SaaS Gwook forwarded to.
//!
//! ```text
//! POST /notifications ── claim id (dedup) ── produce ──► notifications topic ──► 202
//!                                                              │
//!  ConsumerSupervisor (group webhooks-fanout) ── FanoutHandler ┘ one delivery row per
//!                                                  │             matching endpoint
//!  DispatcherActor ◄── wake(endpoint) ─────────────┘  + poll for retries that came due
//!  ├── EndpointActor ep_a   rate limiter, breaker, in-flight budget; leases due deliveries,
//!  ├── EndpointActor ep_b   signs (Standard Webhooks), sends, records the attempt, schedules
//!  └── …                    the next one or dead-letters the delivery; 410 disables
//! ```
//! Deliveries and their schedule live in the store, so a retry due in ten hours survives a
//! restart, and two daemons never send one delivery at once (a lease per delivery).

pub mod attempts;
pub mod claims;
pub mod client;
pub mod context;
pub mod directory;
pub mod dispatcher;
pub mod domain;
pub mod endpoint_actor;
pub mod endpoints;
pub mod envelope;
pub mod fanout;
pub mod filter;
pub mod intake;
pub mod metrics;
pub mod migrations;
pub mod ordering;
pub mod records;
pub mod retention;
pub mod signing;
pub mod states;
pub mod store;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use self::claims::Claims;
use self::directory::Directory;
use self::dispatcher::Dispatcher;
use self::endpoints::{
    Caller, CreatedEndpoint, EndpointPatch, EndpointView, NewEndpoint, RotateSecret, SecretView, view,
};
use self::records::{AttemptView, DeliveryView, EndpointStats, NotificationRecords};
use self::target::TargetPolicy;
use crate::metrics::metrics;
use crate::store::WebhookStore;
use crate::store::{Claim, endpoint, notification};
use conveyor_actors::Error;
use conveyor_actors::config::WebhooksConfig;
use conveyor_actors::error::FieldError;
use conveyor_actors::log::{Ack, Header, OutgoingRecord, Producer};
use conveyor_actors::metrics::{OUTCOME, kv};

/// The webhook API's entry points; cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    store: WebhookStore,
    producer: Arc<dyn Producer>,
    config: Arc<WebhooksConfig>,
    topic: String,
    produce_timeout: Duration,
    policy: TargetPolicy,
    directory: Directory,
    dispatcher: Dispatcher,
    /// Concurrent posts' dedup statements, written together.
    claims: Claims,
}

/// Where an accepted notification landed.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: String,
    pub ack: Ack,
}

impl Webhooks {
    pub fn new(
        store: WebhookStore,
        producer: Arc<dyn Producer>,
        config: &WebhooksConfig,
        topic: String,
        produce_timeout: Duration,
        directory: Directory,
        dispatcher: Dispatcher,
    ) -> Self {
        let policy = TargetPolicy { allow_loopback: config.allow_loopback, allow_private: config.allow_private };
        let window = chrono::Duration::seconds(config.dedup_window_secs as i64);
        let claims = Claims::start(store.clone(), window, claims::stale_after(produce_timeout));
        Webhooks {
            store,
            producer,
            config: Arc::new(config.clone()),
            topic,
            produce_timeout,
            policy,
            directory,
            dispatcher,
            claims,
        }
    }

    pub fn config(&self) -> &WebhooksConfig {
        &self.config
    }

    /// Checks `Authorization: Basic …` against `webhooks.basic_auth_*`; `None` when the
    /// header is not Basic (a bearer token may still be valid).
    pub fn check_basic(&self, authorization: &str) -> Option<bool> {
        let (scheme, encoded) = authorization.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let c = &self.config;
        if c.basic_auth_username.is_empty() {
            return Some(false);
        }
        use base64::Engine;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return Some(false) };
        let expected = format!("{}:{}", c.basic_auth_username, c.basic_auth_password.expose());
        Some(signing::constant_time_eq(&decoded, expected.as_bytes()))
    }

    /// Validates, deduplicates and publishes a posted notification; `Ok` means the log
    /// acknowledged it. A repeated id within the dedup window is a `duplicate_notification`
    /// conflict.
    pub async fn publish(&self, body: Bytes, headers: Vec<Header>) -> Result<Published, Error> {
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| Error::InvalidNotification {
            fields: vec![FieldError::new("body", format!("not valid JSON ({e})"))],
        })?;
        let envelope = envelope::validate(&value).map_err(|fields| Error::InvalidNotification { fields })?;
        let row = notification::Model {
            id: envelope.id.clone(),
            event_type: envelope.event_type.clone(),
            project: envelope.project.clone(),
            payload: String::from_utf8_lossy(&body).into_owned(),
            accepted: false,
            received_at: chrono::Utc::now(),
            fanned_out: false,
        };
        if self.claims.claim.submit(row).await? == Claim::Duplicate {
            metrics().webhook_notifications.add(1, &[kv(OUTCOME, "duplicate")]);
            return Err(Error::Conflict {
                code: "duplicate_notification",
                message: format!("notification {:?} was already accepted", envelope.id),
            });
        }
        let record =
            OutgoingRecord { topic: self.topic.clone(), key: Some(envelope.id.clone()), payload: body, headers };
        match self.producer.send(record, self.produce_timeout).await {
            Ok(ack) => {
                // Not awaited: until it is written the unaccepted claim refuses a repeat just
                // the same, and the fan-out marks the notification accepted too.
                let (accept, id) = (self.claims.accept.clone(), envelope.id.clone());
                tokio::spawn(async move {
                    if let Err(err) = accept.submit(vec![id]).await {
                        tracing::warn!(error = %err, "marking a notification accepted");
                    }
                });
                metrics().webhook_notifications.add(1, &[kv(OUTCOME, "accepted")]);
                Ok(Published { id: envelope.id, ack })
            }
            Err(err) => {
                if let Err(release) = self.store.release_notification(&envelope.id).await {
                    tracing::warn!(error = %release, "releasing a notification the log refused");
                }
                Err(err)
            }
        }
    }

    async fn visible(&self, caller: &Caller, id: &str) -> Result<endpoint::Model, Error> {
        match self.store.get_endpoint(id).await? {
            Some(row) if caller.may_see(&row) => Ok(row),
            _ => Err(Error::NotFound { what: "endpoint" }),
        }
    }

    fn changed(&self, id: &str) {
        self.directory.invalidate();
        self.dispatcher.reload(id.to_string());
    }

    pub async fn create_endpoint(&self, caller: &Caller, spec: NewEndpoint) -> Result<CreatedEndpoint, Error> {
        let row = endpoints::new_row(caller, spec, &self.policy)?;
        self.store.insert_endpoint(row.clone()).await?;
        self.directory.invalidate();
        Ok(CreatedEndpoint { endpoint: view(&row), secret: row.secret })
    }

    /// The caller's endpoints; every endpoint for an admin.
    pub async fn list_endpoints(&self, caller: &Caller) -> Result<Vec<EndpointView>, Error> {
        let owner = (!caller.admin).then_some(caller.user_id.as_str());
        Ok(self.store.list_endpoints(owner).await?.iter().map(view).collect())
    }

    pub async fn get_endpoint(&self, caller: &Caller, id: &str) -> Result<EndpointView, Error> {
        Ok(view(&self.visible(caller, id).await?))
    }

    pub async fn update_endpoint(
        &self,
        caller: &Caller,
        id: &str,
        patch: EndpointPatch,
    ) -> Result<EndpointView, Error> {
        let mut row = self.visible(caller, id).await?;
        endpoints::patch_row(&mut row, patch, &self.policy)?;
        self.store.update_endpoint(row.clone()).await?;
        self.changed(id);
        Ok(view(&row))
    }

    /// Enables or disables; enabling clears the failure record, and deliveries that waited
    /// while it was disabled go out.
    pub async fn set_enabled(&self, caller: &Caller, id: &str, enabled: bool) -> Result<EndpointView, Error> {
        let mut row = self.visible(caller, id).await?;
        row.disabled = !enabled;
        row.disabled_reason = (!enabled).then_some(states::DisabledReason::Manual);
        row.failing_since = None;
        row.updated_at = chrono::Utc::now();
        self.store.update_endpoint(row.clone()).await?;
        self.changed(id);
        if enabled {
            self.dispatcher.wake(id.to_string());
        }
        Ok(view(&row))
    }

    pub async fn delete_endpoint(&self, caller: &Caller, id: &str) -> Result<(), Error> {
        self.visible(caller, id).await?;
        self.store.delete_endpoint(id).await?;
        self.changed(id);
        Ok(())
    }

    pub async fn secret(&self, caller: &Caller, id: &str) -> Result<SecretView, Error> {
        let row = self.visible(caller, id).await?;
        let overlapping = row.previous_secret_until.is_some_and(|t| t > chrono::Utc::now());
        Ok(SecretView {
            secret: row.secret,
            previous_secret: row.previous_secret.filter(|_| overlapping),
            previous_valid_until: row.previous_secret_until.filter(|_| overlapping),
        })
    }

    pub async fn rotate_secret(&self, caller: &Caller, id: &str, request: RotateSecret) -> Result<SecretView, Error> {
        let mut row = self.visible(caller, id).await?;
        endpoints::rotate(&mut row, request, self.config.secret_rotation_overlap_secs)?;
        self.store.update_endpoint(row.clone()).await?;
        self.changed(id);
        self.secret(caller, id).await
    }

    /// The endpoint's attempts, newest first (page with `before`, an attempt id).
    pub async fn endpoint_attempts(
        &self,
        caller: &Caller,
        id: &str,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<AttemptView>, Error> {
        self.visible(caller, id).await?;
        let rows = self.store.attempts_of_endpoint(id, before, limit.clamp(1, 500)).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn endpoint_stats(&self, caller: &Caller, id: &str) -> Result<EndpointStats, Error> {
        self.visible(caller, id).await?;
        Ok(EndpointStats::new(id.to_string(), self.store.delivery_counts(id).await?))
    }

    /// A notification's deliveries and attempts; non-admins see only their own endpoints'.
    pub async fn notification_records(&self, caller: &Caller, id: &str) -> Result<NotificationRecords, Error> {
        let notification = self.store.get_notification(id).await?.ok_or(Error::NotFound { what: "notification" })?;
        let mut deliveries = self.store.deliveries_of_notification(id).await?;
        let mine: Option<Vec<String>> = if caller.admin {
            None
        } else {
            let own = self.store.list_endpoints(Some(&caller.user_id)).await?;
            Some(own.into_iter().map(|e| e.id).collect())
        };
        if let Some(mine) = &mine {
            deliveries.retain(|d| mine.contains(&d.endpoint_id));
            if deliveries.is_empty() {
                return Err(Error::NotFound { what: "notification" });
            }
        }
        let attempts = self.store.attempts_of_notification(id, mine.as_deref()).await?;
        Ok(NotificationRecords::new(notification, deliveries, attempts))
    }

    /// Sends a finished delivery again with a fresh schedule.
    pub async fn resend(&self, caller: &Caller, delivery_id: &str) -> Result<DeliveryView, Error> {
        let delivery = self.store.get_delivery(delivery_id).await?.ok_or(Error::NotFound { what: "delivery" })?;
        let endpoint =
            self.visible(caller, &delivery.endpoint_id).await.map_err(|_| Error::NotFound { what: "delivery" })?;
        if endpoint.disabled {
            return Err(Error::Conflict {
                code: "endpoint_disabled",
                message: "the endpoint is disabled; enable it first".into(),
            });
        }
        if !self.store.resend_delivery(delivery_id).await? {
            return Err(Error::Conflict { code: "delivery_pending", message: "the delivery is still pending".into() });
        }
        metrics().webhook_deliveries.add(1, &[kv(OUTCOME, "resent")]);
        self.dispatcher.wake(delivery.endpoint_id.clone());
        let delivery = self.store.get_delivery(delivery_id).await?.ok_or(Error::NotFound { what: "delivery" })?;
        Ok(delivery.into())
    }

    /// Graceful shutdown: hands back the deliveries in flight (within `within`).
    pub async fn hand_back_leases(&self, within: std::time::Duration) {
        self.dispatcher.hand_back_leases(within).await;
    }

    /// Endpoint actors running now.
    pub async fn running_actors(&self) -> usize {
        self.dispatcher.running().await
    }
}
