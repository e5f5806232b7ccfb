//! One actor per endpoint with work: it owns the endpoint's rate limiter, circuit breaker
//! and in-flight budget, leases due deliveries from the store, sends them, and decides each
//! one's next step from the retry schedule. Nothing an endpoint does can hold up another:
//! each has its own budget, and the requests run in tasks, not in the actor.
//!
//! The store sees batches, not deliveries: one statement leases up to
//! `webhooks.lease_batch_size` due deliveries, which wait in memory for room in the budget,
//! and the outcomes of the attempts that finished meanwhile are written in one statement
//! (one lease and one write in flight at a time; more work meanwhile makes the next batch
//! bigger). A delivery counts as done only once its outcome is written; until then it stays
//! leased, so if the daemon dies the lease expires and the delivery is sent again. While
//! the actor has room and its breaker is closed, an unordered endpoint's new deliveries
//! skip the lease: the fan-out writes them leased and hands them over ([`crate::intake`]).
//!
//! On a graceful shutdown the requests still in flight are cut off and their deliveries
//! handed back (lease cleared, no attempt spent) with the ones still waiting: the next
//! daemon sends them at once, and the receiver deduplicates by `webhook-id` should one of
//! them have arrived after all.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_util::sync::CancellationToken;

use super::client::{AttemptClass, Request, Response};
use super::context::DeliveryContext;
use super::endpoints::signing_secrets;
use crate::store::{OrderedLease, WebhookStore, delivery, endpoint};
use conveyor_actors::breaker::{Breaker, BreakerConfig, BreakerState, Permit};
use conveyor_actors::config::WebhooksConfig;

mod outcomes;

use outcomes::Finished;

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
    /// Leased deliveries waiting for room in the budget, oldest due first.
    held: VecDeque<delivery::Model>,
    /// A lease statement is running (never two at once).
    leasing: bool,
    /// Leases of ordered keys' next deliveries running (one per outcome write at most).
    leasing_successors: usize,
    /// More may be due: woken since the last lease began, or the last lease came back full.
    more: bool,
    /// What this actor last told the fan-out ([`crate::intake::Intake`]).
    taking: bool,
    /// Attempts that finished and whose outcomes are not written yet.
    outcomes: Vec<Finished>,
    /// An outcome write is running (never two at once: what finishes meanwhile goes with
    /// the next one, which keeps an ordered endpoint's successor leases few and large).
    writing: bool,
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
    /// Deliveries may be due: lease a batch if the budget will soon have room, and send.
    Wake,
    /// New deliveries the fan-out wrote leased for this actor: they wait with the rest.
    Handed(Vec<delivery::Model>),
    /// One request finished (sent by its task); its outcome joins the next write.
    Attempted(Box<Attempted>),
    /// The lease statement answered (sent by its task).
    Leased(Result<Vec<delivery::Model>, conveyor_actors::Error>),
    /// An outcome write answered (sent by its task): what it wrote now counts as done.
    Written { batch: Vec<Finished>, result: Result<(), conveyor_actors::Error> },
    /// On an ordered endpoint, the write's task then leased the next deliveries of the keys
    /// it wrote outcomes for.
    Successors(Result<Vec<delivery::Model>, conveyor_actors::Error>),
    /// The endpoint changed in the store (edited, enabled, disabled, deleted): read it again.
    Reload,
    /// Stop if idle for a while (a timer sends it).
    IdleCheck,
    /// A request was cut off by the shutdown before it completed: hand its delivery back.
    Abandoned { delivery_id: String },
    /// Graceful shutdown: cut off the requests in flight, hand their deliveries and the
    /// waiting ones back, write the outcomes already in, send nothing more, stop; answers
    /// how many deliveries were handed back.
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
            held: VecDeque::new(),
            leasing: false,
            leasing_successors: 0,
            more: true,
            taking: false,
            outcomes: Vec::new(),
            writing: false,
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
            EndpointMsg::Wake => state.more = true,
            EndpointMsg::Handed(rows) => state.handed(rows).await,
            EndpointMsg::Attempted(done) => {
                state.in_flight -= 1;
                state.finished(*done).await;
            }
            EndpointMsg::Leased(result) => state.leased(result).await,
            EndpointMsg::Written { batch, result } => {
                state.writing = false;
                state.written(batch, result).await;
            }
            EndpointMsg::Successors(result) => state.successors(result).await,
            EndpointMsg::Reload => {
                state.endpoint = None;
                state.wake_pending = false;
                state.more = true;
            }
            EndpointMsg::IdleCheck => {
                if state.idle() && state.last_activity.elapsed() >= idle_after(&state.ctx) {
                    myself.stop(Some("idle".into()));
                }
                return Ok(());
            }
            EndpointMsg::Abandoned { delivery_id } => {
                state.in_flight -= 1;
                state.released += state.hand_back(vec![delivery_id]).await;
            }
            EndpointMsg::Shutdown { reply } => {
                state.stop.cancel();
                state.stopping = Some(reply);
                let waiting: Vec<String> = state.held.drain(..).map(|d| d.id).collect();
                state.released += state.hand_back(waiting).await;
            }
        }
        state.pump(&myself).await;
        if state.idle()
            && let Some(reply) = state.stopping.take()
        {
            let _ = reply.send(state.released);
            myself.stop(Some("shutdown".into()));
        }
        state.tell_intake();
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<EndpointMsg>,
        state: &mut EndpointState,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.intake.set(&state.id, false);
        Ok(())
    }
}

/// How long a lease lasts: the request's timeout and 30 s to wait for room and record it.
pub fn lease_span(config: &WebhooksConfig) -> chrono::Duration {
    chrono::Duration::milliseconds(config.request_timeout_ms as i64 + 30_000)
}

/// Clears the leases of deliveries nobody will send now (lease cleared, no attempt spent,
/// due at once); should that fail, the leases expire. Answers how many went back.
pub(crate) async fn hand_back(store: &WebhookStore, ids: &[String]) -> usize {
    if ids.is_empty() {
        return 0;
    }
    match store.release_deliveries(ids).await {
        Ok(n) => n as usize,
        Err(err) => {
            tracing::warn!(error = %err, "handing back webhook deliveries; their leases will expire");
            0
        }
    }
}

/// Deliveries an actor holds in memory at most: what it leases stops at one batch, what the
/// fan-out hands over beyond four goes back to the store.
fn hold_limit(config: &WebhooksConfig) -> usize {
    config.lease_batch_size.max(1) * 4
}

fn idle_after(ctx: &DeliveryContext) -> Duration {
    Duration::from_millis(ctx.config.endpoint_idle_ms)
}

impl EndpointState {
    /// Nothing in flight, waiting, being leased or being written.
    fn idle(&self) -> bool {
        self.in_flight == 0
            && self.held.is_empty()
            && !self.leasing
            && self.leasing_successors == 0
            && !self.writing
            && self.outcomes.is_empty()
    }

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

    /// Moves everything on that can move: writes the outcomes that are in, leases a batch
    /// when the budget will soon have room, and sends what fits in the budget.
    async fn pump(&mut self, myself: &ActorRef<EndpointMsg>) {
        self.write(myself);
        if self.stop.is_cancelled() {
            return;
        }
        let usable = self.load().await && self.endpoint.as_ref().is_some_and(|e| !e.disabled);
        if !usable {
            // Disabled or deleted while deliveries waited: they go back, unsent.
            let waiting: Vec<String> = self.held.drain(..).map(|d| d.id).collect();
            self.hand_back(waiting).await;
            return;
        }
        let budget = self.ctx.config.max_in_flight_per_endpoint;
        // The dead endpoint's case: with its budget spent nothing more is leased, so its
        // backlog stays in the store, unleased, for whenever it answers again.
        if self.more && !self.leasing && self.in_flight < budget && self.held.len() < budget {
            if self.breaker.acquire().map(drop).is_err() {
                self.wake_later(myself);
            } else {
                self.lease(myself);
            }
        }
        self.send_held(myself).await;
    }

    /// Starts the lease statement; its answer comes back as [`EndpointMsg::Leased`]. An
    /// ordered endpoint leases only each key's head (`store::ordered`).
    fn lease(&mut self, myself: &ActorRef<EndpointMsg>) {
        self.leasing = true;
        self.more = false;
        let now = Utc::now();
        let until = now + self.lease_span();
        let limit = self.ctx.config.lease_batch_size as u64;
        let ordered = self.ordered();
        let (store, id, reply) = (self.ctx.store.clone(), self.id.clone(), myself.clone());
        tokio::spawn(async move {
            let result = match ordered {
                None => store.lease_due(&id, now, until, limit).await,
                Some(policy) => {
                    if overdue_check_due(now)
                        && let Ok(Some(since)) = store.overdue_fan_out(now, policy).await
                    {
                        warn_overdue(since);
                    }
                    store.lease_heads(&id, now, until, limit, policy).await
                }
            };
            let _ = reply.cast(EndpointMsg::Leased(result));
        });
    }

    /// How an ordered endpoint's deliveries wait for the fan-out; `None` when unordered.
    fn ordered(&self) -> Option<OrderedLease> {
        self.endpoint.as_ref().is_some_and(|e| e.ordering_key.is_some()).then(|| OrderedLease {
            stale_after: crate::claims::stale_after(self.ctx.produce_timeout),
            settle: chrono::Duration::milliseconds(self.ctx.config.ordering_settle_ms as i64),
        })
    }

    fn lease_span(&self) -> chrono::Duration {
        lease_span(&self.ctx.config)
    }

    /// Whether new deliveries may come leased at insert: running, loaded, enabled,
    /// unordered (ordered keys lease their heads), breaker closed, less than a batch waiting.
    fn takes_new(&self) -> bool {
        !self.stop.is_cancelled()
            && self.endpoint.as_ref().is_some_and(|e| !e.disabled && e.ordering_key.is_none())
            && self.breaker.state() == BreakerState::Closed
            && self.held.len() < self.ctx.config.lease_batch_size
    }

    /// Tells the fan-out when [`Self::takes_new`] changed.
    fn tell_intake(&mut self) {
        let taking = self.takes_new();
        if taking != self.taking {
            self.taking = taking;
            self.ctx.intake.set(&self.id, taking);
        }
    }

    /// Deliveries the fan-out wrote leased for this actor join the waiting ones; beyond
    /// [`hold_limit`], or while stopping, they go back to the store (lease cleared, due).
    async fn handed(&mut self, mut rows: Vec<delivery::Model>) {
        let room =
            if self.stop.is_cancelled() { 0 } else { hold_limit(&self.ctx.config).saturating_sub(self.held.len()) };
        if rows.len() > room {
            let back: Vec<String> = rows.drain(room..).map(|d| d.id).collect();
            let n = self.hand_back(back).await;
            if self.stop.is_cancelled() {
                self.released += n;
            } else {
                self.more = true;
            }
        }
        self.held.extend(rows);
    }

    async fn leased(&mut self, result: Result<Vec<delivery::Model>, conveyor_actors::Error>) {
        self.leasing = false;
        let rows = match result {
            Ok(rows) => rows,
            Err(err) => {
                // Not retried at once: the poll (or the next wake) tries again.
                tracing::warn!(error = %err, "leasing webhook deliveries; the poll will try again");
                return;
            }
        };
        // A full batch: more are probably due.
        self.more |= rows.len() as u64 >= self.ctx.config.lease_batch_size as u64;
        if self.stop.is_cancelled() {
            self.released += self.hand_back(rows.into_iter().map(|d| d.id).collect()).await;
        } else {
            self.held.extend(rows);
        }
    }

    /// The next deliveries of keys whose outcomes were just written: they wait with the
    /// rest. Had that lease failed, a full one follows at once.
    async fn successors(&mut self, leased: Result<Vec<delivery::Model>, conveyor_actors::Error>) {
        self.leasing_successors -= 1;
        match leased {
            Ok(rows) if self.stop.is_cancelled() => {
                self.released += self.hand_back(rows.into_iter().map(|d| d.id).collect()).await;
            }
            Ok(rows) => self.held.extend(rows),
            Err(err) => {
                tracing::debug!(error = %err, "leasing the next deliveries of ordered keys; a full lease follows");
                self.more = true;
            }
        }
    }

    /// Sends waiting deliveries while the budget has room. A delivery whose lease would
    /// run out before its request could is handed back and leased again with the rest.
    async fn send_held(&mut self, myself: &ActorRef<EndpointMsg>) {
        let Some(endpoint) = self.endpoint.clone() else { return };
        let budget = self.ctx.config.max_in_flight_per_endpoint;
        let must_last = Utc::now() + chrono::Duration::milliseconds(self.ctx.config.request_timeout_ms as i64 + 1_000);
        let mut stale = Vec::new();
        while self.in_flight < budget {
            let Some(delivery) = self.held.pop_front() else { break };
            if delivery.lease_until.is_none_or(|until| until < must_last) {
                stale.push(delivery.id);
                continue;
            }
            let Ok(permit) = self.breaker.acquire() else {
                // Opened meanwhile: the waiting ones go back without spending an attempt.
                self.held.push_front(delivery);
                self.defer_held().await;
                self.wake_later(myself);
                break;
            };
            self.in_flight += 1;
            self.spawn_send(myself, &endpoint, delivery, permit);
        }
        if !stale.is_empty() {
            self.hand_back(stale).await;
            self.more = true;
        }
    }

    fn spawn_send(
        &self,
        myself: &ActorRef<EndpointMsg>,
        endpoint: &endpoint::Model,
        delivery: delivery::Model,
        permit: Permit,
    ) {
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

    /// The breaker opened: every waiting delivery is due again after its cool-down.
    async fn defer_held(&mut self) {
        let ids: Vec<String> = self.held.drain(..).map(|d| d.id).collect();
        let until = Utc::now() + chrono::Duration::milliseconds(self.ctx.config.breaker_open_ms as i64);
        if let Err(err) = self.ctx.store.defer_deliveries(&ids, until).await {
            tracing::warn!(error = %err, "deferring webhook deliveries; their leases will expire");
        }
    }

    /// Gives deliveries this actor leased back to the store: lease cleared, no attempt
    /// spent, due at once for whichever daemon polls next. Answers how many went back.
    async fn hand_back(&self, ids: Vec<String>) -> usize {
        hand_back(&self.ctx.store, &ids).await
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
}

/// Whether an ordered lease should look for overdue fan-outs too: once every 10 s per
/// daemon, not with every lease.
fn overdue_check_due(now: chrono::DateTime<Utc>) -> bool {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let (now, last) = (now.timestamp(), LAST.load(Ordering::Relaxed));
    now - last >= 10 && LAST.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

/// A notification accepted longer than `webhooks.ordering_settle_ms` ago is still not
/// fanned out: ordered deliveries accepted after it no longer wait for it. Said at most
/// once a minute per daemon.
fn warn_overdue(since: chrono::DateTime<Utc>) {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = Utc::now().timestamp();
    let last = LAST.load(Ordering::Relaxed);
    if now - last >= 60 && LAST.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        tracing::warn!(
            accepted_at = %since,
            "a notification is not fanned out after webhooks.ordering_settle_ms; ordered deliveries accepted \
             after it go without waiting for it, so its own may arrive out of order"
        );
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
