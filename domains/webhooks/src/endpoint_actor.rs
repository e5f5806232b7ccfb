//! One actor per endpoint with work: it owns the endpoint's rate limiter, circuit breaker
//! and in-flight budget, leases due deliveries from the store, sends them, and decides each
//! one's next step from the retry schedule. Nothing an endpoint does can hold up another:
//! each has its own budget, and the requests run in tasks, not in the actor.
//!
//! On a graceful shutdown the requests still in flight are cut off and their deliveries
//! handed back (lease cleared, no attempt spent): the next daemon sends them at once, and
//! the receiver deduplicates by `webhook-id` should one of them have arrived after all.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::client::{AttemptClass, Request, Response};
use super::context::DeliveryContext;
use super::endpoints::signing_secrets;
use crate::metrics::metrics;
use crate::states::{AttemptOutcome, DeliveryStatus, DisabledReason};
use crate::store::{DeliveryUpdate, attempt, delivery, endpoint};
use conveyor_actors::breaker::{Breaker, BreakerConfig, Permit};
use conveyor_actors::metrics::{ERROR_CLASS, OUTCOME, REASON, kv};

/// The actor; its behaviour is in [`EndpointState`].
pub struct EndpointActor;

/// What an endpoint actor is started with.
pub struct EndpointArgs {
    pub endpoint_id: String,
    pub ctx: Arc<DeliveryContext>,
    /// Cancelled on shutdown: requests in flight are cut off and handed back.
    pub stop: CancellationToken,
}

/// One endpoint's delivery state.
pub struct EndpointState {
    id: String,
    ctx: Arc<DeliveryContext>,
    /// `None` until loaded, and after the endpoint was deleted.
    endpoint: Option<endpoint::Model>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    breaker: Arc<Breaker>,
    in_flight: usize,
    /// A wake-up is already scheduled (breaker cool-down); do not stack them.
    wake_pending: bool,
    last_activity: Instant,
    stop: CancellationToken,
    /// Shutting down: answered with the number of leases handed back once nothing is in flight.
    stopping: Option<RpcReplyPort<usize>>,
    released: usize,
}

/// Everything an endpoint actor is told.
pub enum EndpointMsg {
    /// Deliveries may be due: lease what fits in the in-flight budget and send it.
    Wake,
    /// One request finished (sent by its task); record it and schedule what follows.
    Attempted(Box<Attempted>),
    /// The endpoint changed in the store (edited, enabled, disabled, deleted): read it again.
    Reload,
    /// Stop if idle for a while (a timer sends it).
    IdleCheck,
    /// A request was cut off by the shutdown before it completed: hand its delivery back.
    Abandoned { delivery_id: String },
    /// Graceful shutdown: cut off the requests in flight, hand their deliveries back, send
    /// nothing more, stop; answers how many deliveries were handed back.
    Shutdown { reply: RpcReplyPort<usize> },
}

/// A finished request and what it was for.
pub struct Attempted {
    delivery: delivery::Model,
    response: Response,
    permit: Permit,
}

impl Actor for EndpointActor {
    type Msg = EndpointMsg;
    type State = EndpointState;
    type Arguments = EndpointArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<EndpointMsg>,
        args: EndpointArgs,
    ) -> Result<EndpointState, ActorProcessingErr> {
        let c = &args.ctx.config;
        let breaker = Breaker::new(
            "webhook",
            BreakerConfig {
                consecutive_failures: c.breaker_failures,
                // Only consecutive failures open it: a partly failing endpoint keeps its schedule.
                failure_ratio: 1.0,
                min_calls: u32::MAX,
                cool_down_ms: c.breaker_open_ms,
                half_open_probes: 1,
                ..BreakerConfig::default()
            },
        );
        myself.send_interval(idle_after(&args.ctx) / 2, || EndpointMsg::IdleCheck);
        Ok(EndpointState {
            id: args.endpoint_id,
            ctx: args.ctx,
            endpoint: None,
            limiter: None,
            breaker,
            in_flight: 0,
            wake_pending: false,
            last_activity: Instant::now(),
            stop: args.stop,
            stopping: None,
            released: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<EndpointMsg>,
        msg: EndpointMsg,
        state: &mut EndpointState,
    ) -> Result<(), ActorProcessingErr> {
        // The idle timer's own tick is not activity, or an idle actor would never retire.
        if !matches!(msg, EndpointMsg::IdleCheck) {
            state.last_activity = Instant::now();
        }
        match msg {
            EndpointMsg::Wake => state.wake(&myself).await,
            EndpointMsg::Attempted(done) => {
                state.in_flight -= 1;
                state.finish(*done).await;
                state.wake(&myself).await;
            }
            EndpointMsg::Reload => {
                state.endpoint = None;
                state.wake_pending = false;
                state.wake(&myself).await;
            }
            EndpointMsg::IdleCheck => {
                if state.in_flight == 0 && state.last_activity.elapsed() >= idle_after(&state.ctx) {
                    myself.stop(Some("idle".into()));
                }
            }
            EndpointMsg::Abandoned { delivery_id } => {
                state.in_flight -= 1;
                state.hand_back(delivery_id).await;
            }
            EndpointMsg::Shutdown { reply } => {
                state.stop.cancel();
                state.stopping = Some(reply);
            }
        }
        if state.in_flight == 0
            && let Some(reply) = state.stopping.take()
        {
            let _ = reply.send(state.released);
            myself.stop(Some("shutdown".into()));
        }
        Ok(())
    }
}

fn idle_after(ctx: &DeliveryContext) -> Duration {
    Duration::from_millis(ctx.config.endpoint_idle_ms)
}

impl EndpointState {
    /// Loads the endpoint (and its limiter) unless already loaded; false if it is gone.
    async fn load(&mut self) -> bool {
        if self.endpoint.is_some() {
            return true;
        }
        match self.ctx.store.get_endpoint(&self.id).await {
            Ok(Some(row)) => {
                let rate = row
                    .rate_limit_per_sec
                    .map(|r| r.max(1) as u32)
                    .unwrap_or(self.ctx.config.default_rate_limit_per_sec);
                self.limiter = NonZeroU32::new(rate).map(|r| Arc::new(RateLimiter::direct(Quota::per_second(r))));
                self.endpoint = Some(row);
                true
            }
            Ok(None) => false,
            Err(err) => {
                tracing::warn!(error = %err, "loading a webhook endpoint; the poll will try again");
                false
            }
        }
    }

    async fn wake(&mut self, myself: &ActorRef<EndpointMsg>) {
        if self.stop.is_cancelled() || !self.load().await {
            return;
        }
        let Some(endpoint) = self.endpoint.clone() else { return };
        if endpoint.disabled {
            return;
        }
        let room = self.ctx.config.max_in_flight_per_endpoint.saturating_sub(self.in_flight);
        if room == 0 {
            return;
        }
        if self.breaker.acquire().map(drop).is_err() {
            self.wake_later(myself);
            return;
        }
        let now = Utc::now();
        let lease = now + chrono::Duration::milliseconds(self.ctx.config.request_timeout_ms as i64 + 30_000);
        let due = match self.ctx.store.lease_due_deliveries(&self.id, now, lease, room as u64).await {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = %err, "leasing webhook deliveries; the poll will try again");
                return;
            }
        };
        for delivery in due {
            let Ok(permit) = self.breaker.acquire() else {
                // Opened meanwhile: hand the lease back without spending an attempt.
                let until = now + chrono::Duration::milliseconds(self.ctx.config.breaker_open_ms as i64);
                if let Err(err) = self.ctx.store.defer_delivery(&delivery.id, until).await {
                    tracing::warn!(error = %err, "deferring a webhook delivery; its lease will expire");
                }
                continue;
            };
            self.in_flight += 1;
            let ctx = self.ctx.clone();
            let endpoint = endpoint.clone();
            let limiter = self.limiter.clone();
            let reply = myself.clone();
            let stop = self.stop.clone();
            tokio::spawn(async move {
                // A response that is in wins over a shutdown at the same moment: it is recorded.
                let response = tokio::select! {
                    biased;
                    response = async {
                        if let Some(limiter) = limiter {
                            limiter.until_ready().await;
                        }
                        send(&ctx, &endpoint, &delivery).await
                    } => Some(response),
                    _ = stop.cancelled() => None,
                };
                let msg = match response {
                    Some(response) => EndpointMsg::Attempted(Box::new(Attempted { delivery, response, permit })),
                    None => EndpointMsg::Abandoned { delivery_id: delivery.id },
                };
                let _ = reply.cast(msg);
            });
        }
    }

    /// Gives a delivery whose request was cut off back to the store: lease cleared, no
    /// attempt spent, due at once for whichever daemon polls next.
    async fn hand_back(&mut self, delivery_id: String) {
        match self.ctx.store.release_deliveries(std::slice::from_ref(&delivery_id)).await {
            Ok(n) => self.released += n as usize,
            Err(err) => tracing::warn!(error = %err, "handing back a webhook delivery; its lease will expire"),
        }
    }

    fn wake_later(&mut self, myself: &ActorRef<EndpointMsg>) {
        if !self.wake_pending {
            self.wake_pending = true;
            let delay = Duration::from_millis(self.ctx.config.breaker_open_ms);
            let me = myself.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = me.cast(EndpointMsg::Reload);
            });
        }
    }

    /// Records the attempt and moves the delivery on: done, retried later, or dead.
    async fn finish(&mut self, done: Attempted) {
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
        let finished = update.status;
        if let Err(err) = self.ctx.store.finish_attempt(&delivery.id, update).await {
            tracing::warn!(error = %err, "recording a webhook attempt; the delivery's lease will expire and it is sent again");
            return;
        }
        match finished {
            DeliveryStatus::Succeeded => m.webhook_deliveries.add(1, &[kv(OUTCOME, "succeeded")]),
            DeliveryStatus::Failed => {
                m.webhook_deliveries.add(1, &[kv(OUTCOME, "exhausted")]);
                self.ctx.dead_letter(&delivery, attempt_no, &response).await;
            }
            _ => {}
        }
        self.track_health(succeeded, response.class).await;
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

/// Signs and sends one delivery.
async fn send(ctx: &DeliveryContext, endpoint: &endpoint::Model, delivery: &delivery::Model) -> Response {
    let payload = match ctx.payload(&delivery.notification_id).await {
        Ok(payload) => payload,
        Err(err) => {
            return Response {
                class: AttemptClass::Connect,
                status: None,
                latency: Duration::ZERO,
                excerpt: None,
                error: Some(format!("notification payload unavailable: {err}")),
                retry_after: None,
            };
        }
    };
    let timestamp = Utc::now().timestamp();
    let secrets = signing_secrets(endpoint, Utc::now());
    let signature = super::signing::signature_header(&secrets, &delivery.notification_id, timestamp, &payload);
    let headers = vec![
        ("webhook-id".to_string(), delivery.notification_id.clone()),
        ("webhook-timestamp".to_string(), timestamp.to_string()),
        ("webhook-signature".to_string(), signature),
    ];
    ctx.client.send(Request::post(&endpoint.url, headers, payload)).await
}
