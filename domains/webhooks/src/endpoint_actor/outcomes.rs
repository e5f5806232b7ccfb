//! What follows an attempt: its record, the delivery's next step (done, retried later, or
//! dead), written for many attempts at once, and only then what depends on it (the
//! dead letter, the endpoint's health).

use std::time::Duration;

use chrono::Utc;
use ractor::ActorRef;
use rand::Rng;

use super::{Attempted, EndpointMsg, EndpointState};
use crate::client::{AttemptClass, Response};
use crate::metrics::metrics;
use crate::states::{AttemptOutcome, DeliveryStatus, DisabledReason};
use crate::store::{DeliveryUpdate, attempt, delivery};
use conveyor_actors::metrics::{ERROR_CLASS, OUTCOME, REASON, kv};

/// An attempt whose consequence waits for the next outcome write.
pub struct Finished {
    delivery: delivery::Model,
    attempt_no: i32,
    update: DeliveryUpdate,
    response: Response,
}

impl EndpointState {
    /// Records the attempt and decides the delivery's next step; the step is written with
    /// the next batch, and the delivery stays leased until then.
    pub(super) async fn finished(&mut self, done: Attempted) {
        let Attempted { delivery, response, permit } = done;
        let succeeded = response.class == AttemptClass::Succeeded;
        permit.record(!succeeded);
        if self.breaker.state() != conveyor_actors::breaker::BreakerState::Open {
            self.wake_pending = false;
        }
        let attempt_no = delivery.attempts + 1;
        let m = metrics();
        let outcome = if succeeded { AttemptOutcome::Succeeded } else { AttemptOutcome::Failed };
        m.webhook_attempts.add(1, &[kv(OUTCOME, outcome.as_str()), kv(ERROR_CLASS, response.class.as_str())]);
        m.webhook_attempt_duration.record(response.latency.as_secs_f64(), &[kv(OUTCOME, outcome.as_str())]);
        self.ctx
            .attempts
            .record(attempt::Model {
                id: 0,
                delivery_id: delivery.id.clone(),
                notification_id: delivery.notification_id.clone(),
                endpoint_id: delivery.endpoint_id.clone(),
                attempt: attempt_no,
                outcome,
                error_class: response.class,
                status_code: response.status.map(i32::from),
                latency_ms: response.latency.as_millis() as i64,
                response_excerpt: response.excerpt.clone(),
                error: response.error.clone(),
                created_at: Utc::now(),
            })
            .await;
        let now = Utc::now();
        let schedule = &self.ctx.config.retry_schedule_ms;
        let next = (attempt_no as usize) < schedule.len() && response.class != AttemptClass::Gone;
        let update = DeliveryUpdate {
            status: if succeeded {
                DeliveryStatus::Succeeded
            } else if next {
                DeliveryStatus::Pending
            } else {
                DeliveryStatus::Failed
            },
            next_attempt_at: if next && !succeeded {
                now + self.retry_delay(schedule[attempt_no as usize], response.retry_after)
            } else {
                now
            },
            status_code: response.status.map(i32::from),
            error: response.error.clone(),
        };
        self.outcomes.push(Finished { delivery, attempt_no, update, response });
    }

    /// Starts writing the outcomes that are in, unless a write is running (then they go
    /// with the next one); its answer comes back as [`EndpointMsg::Written`].
    pub(super) fn write(&mut self, myself: &ActorRef<EndpointMsg>) {
        if self.writing || self.outcomes.is_empty() {
            return;
        }
        self.writing = true;
        let batch = std::mem::take(&mut self.outcomes);
        let rows: Vec<(String, DeliveryUpdate)> =
            batch.iter().map(|f| (f.delivery.id.clone(), f.update.clone())).collect();
        // A key's next delivery may go only once this outcome is written: lease it right
        // after, in the same task, rather than wait for the endpoint's next full lease.
        let mut keys: Vec<String> = batch.iter().filter_map(|f| f.delivery.ordering_key.clone()).collect();
        keys.sort();
        keys.dedup();
        let ordered = self.ordered().filter(|_| !keys.is_empty());
        // Counted now, so the actor never looks idle while the successors are on their way.
        self.leasing_successors += usize::from(ordered.is_some());
        let (ctx, reply, id, span) = (self.ctx.clone(), myself.clone(), self.id.clone(), self.lease_span());
        tokio::spawn(async move {
            let result = ctx.outcomes.submit(rows).await;
            let written = result.is_ok();
            // The next write may start while the successors are leased.
            let _ = reply.cast(EndpointMsg::Written { batch, result });
            if let Some(policy) = ordered {
                let leased = if written {
                    let now = Utc::now();
                    ctx.store.lease_successors(&id, &keys, now, now + span, policy).await
                } else {
                    Ok(Vec::new())
                };
                let _ = reply.cast(EndpointMsg::Successors(leased));
            }
        });
    }

    /// A batch of outcomes is written (or not): what depends on them follows.
    pub(super) async fn written(&mut self, batch: Vec<Finished>, result: Result<(), conveyor_actors::Error>) {
        if let Err(err) = result {
            tracing::warn!(
                error = %err,
                deliveries = batch.len(),
                "recording webhook attempts; the deliveries' leases will expire and they are sent again"
            );
            return;
        }
        let m = metrics();
        for Finished { delivery, attempt_no, update, response } in batch {
            match update.status {
                DeliveryStatus::Succeeded => m.webhook_deliveries.add(1, &[kv(OUTCOME, "succeeded")]),
                DeliveryStatus::Failed => {
                    m.webhook_deliveries.add(1, &[kv(OUTCOME, "exhausted")]);
                    self.ctx.dead_letter(&delivery, attempt_no, &response).await;
                }
                _ => {}
            }
            self.track_health(response.class == AttemptClass::Succeeded, response.class).await;
        }
    }

    fn retry_delay(&self, scheduled_ms: u64, retry_after: Option<Duration>) -> chrono::Duration {
        let jitter = self.ctx.config.retry_jitter;
        let factor = if jitter > 0.0 { rand::rng().random_range(1.0 - jitter..=1.0 + jitter) } else { 1.0 };
        let delay = Duration::from_millis((scheduled_ms as f64 * factor) as u64);
        // An endpoint that says when to come back is not called sooner.
        let delay = retry_after.map_or(delay, |ra| delay.max(ra));
        chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
    }

    /// 410 disables at once; failing without a success for too long disables too.
    async fn track_health(&mut self, succeeded: bool, class: AttemptClass) {
        let Some(endpoint) = self.endpoint.as_mut() else { return };
        let store = &self.ctx.store;
        if succeeded {
            if endpoint.failing_since.take().is_some() {
                let _ = store.set_endpoint_failing(&endpoint.id, false).await;
            }
            return;
        }
        let now = Utc::now();
        let reason = if class == AttemptClass::Gone {
            Some(DisabledReason::Gone)
        } else {
            match endpoint.failing_since {
                None => {
                    endpoint.failing_since = Some(now);
                    let _ = store.set_endpoint_failing(&endpoint.id, true).await;
                    None
                }
                Some(since) => {
                    let limit = chrono::Duration::seconds(self.ctx.config.disable_after_failing_secs as i64);
                    (now - since >= limit).then_some(DisabledReason::Failing)
                }
            }
        };
        if let Some(reason) = reason {
            match store.disable_endpoint(&endpoint.id, reason).await {
                Ok(true) => {
                    endpoint.disabled = true;
                    endpoint.disabled_reason = Some(reason);
                    metrics().webhook_endpoints_disabled.add(1, &[kv(REASON, reason.as_str())]);
                    tracing::warn!(endpoint = %endpoint.id, reason = reason.as_str(), "webhook endpoint disabled");
                    self.ctx.announce_disabled(endpoint, reason).await;
                }
                Ok(false) => endpoint.disabled = true,
                Err(err) => tracing::warn!(error = %err, "disabling a webhook endpoint"),
            }
        }
    }
}
