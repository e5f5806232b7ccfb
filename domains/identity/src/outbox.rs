//! The outbox relay: publishes what the store's `outbox` table holds, marks each record
//! published or failed, and re-sends failed ones with jittered exponential backoff. It
//! starts with the daemon, so records left behind by a crash or an outage go out then.
//!
//! Delivery is at least once (a crash between the log's ack and the "published" mark, or
//! two daemons polling together, sends a record twice); every consumer of these records is
//! idempotent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Notify;

use crate::metrics::metrics;
use crate::store::IdentityStore;
use crate::store::sagas::outbox;
use conveyor_actors::log::{Header, OutgoingRecord, Producer};
use conveyor_actors::metrics::{OUTCOME, kv};
use conveyor_actors::retry::RetryPolicy;

/// Header naming the outbox record a log record came from.
pub const OUTBOX_ID_HEADER: &str = "conveyor.outbox.id";

/// Publishes the outbox table; a service of the root supervisor.
pub struct OutboxRelay;

/// What the relay starts with (cloned for every incarnation).
#[derive(Clone)]
pub struct OutboxArgs {
    pub store: IdentityStore,
    pub producer: Arc<dyn Producer>,
    pub policy: RetryPolicy,
    pub poll: Duration,
    pub batch: u64,
    pub produce_timeout: Duration,
    /// Notified by writers so that a new record goes out at once rather than at the next poll.
    pub wake: Arc<Notify>,
}

/// The relay's wake-up task and whether a round is queued.
pub struct OutboxState {
    args: OutboxArgs,
    waker: tokio::task::JoinHandle<()>,
    /// A `Publish` is queued; wake-ups meanwhile add nothing.
    queued: Arc<AtomicBool>,
}

/// Everything the relay is told.
pub enum OutboxMsg {
    /// Publishes every record that is due.
    Publish,
    /// Test-only fault hook ([`conveyor_actors::supervision::Service::inject_panic`]).
    InjectPanic,
}

impl Actor for OutboxRelay {
    type Msg = OutboxMsg;
    type State = OutboxState;
    type Arguments = OutboxArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<OutboxMsg>,
        args: OutboxArgs,
    ) -> Result<OutboxState, ActorProcessingErr> {
        let queued = Arc::new(AtomicBool::new(false));
        let (wake, poll, flag) = (args.wake.clone(), args.poll, queued.clone());
        let waker = tokio::spawn(async move {
            loop {
                if !flag.swap(true, Ordering::AcqRel) && myself.cast(OutboxMsg::Publish).is_err() {
                    return;
                }
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                }
            }
        });
        Ok(OutboxState { args, waker, queued })
    }

    async fn post_stop(&self, _myself: ActorRef<OutboxMsg>, state: &mut OutboxState) -> Result<(), ActorProcessingErr> {
        state.waker.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<OutboxMsg>,
        msg: OutboxMsg,
        state: &mut OutboxState,
    ) -> Result<(), ActorProcessingErr> {
        if let OutboxMsg::InjectPanic = msg {
            panic!("injected fault in the outbox relay");
        }
        state.queued.store(false, Ordering::Release);
        let due = match state.args.store.due_outbox(state.args.batch).await {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = %conveyor_actors::error::chain(&err), "outbox: cannot read due records");
                return Ok(());
            }
        };
        let full = due.len() as u64 == state.args.batch;
        let sends = due.into_iter().map(|row| publish(&state.args, row));
        futures::future::join_all(sends).await;
        if full && !state.queued.swap(true, Ordering::AcqRel) {
            // More are waiting: keep going without waiting for the next poll.
            let _ = myself.cast(OutboxMsg::Publish);
        }
        Ok(())
    }
}

async fn publish(args: &OutboxArgs, row: outbox::Model) {
    let record = OutgoingRecord {
        topic: row.topic.clone(),
        key: Some(row.key.clone()),
        payload: Bytes::from(row.payload.clone()),
        headers: vec![Header { name: OUTBOX_ID_HEADER.into(), value: row.id.clone().into_bytes() }],
    };
    match args.producer.send(record, args.produce_timeout).await {
        Ok(_) => {
            metrics().outbox_records.add(1, &[kv(OUTCOME, "published")]);
            if let Err(err) = args.store.outbox_published(&row).await {
                // Published but not marked: it will be sent again, which consumers absorb.
                tracing::warn!(error = %conveyor_actors::error::chain(&err), "outbox: published record not marked");
            } else if let Some(step) = row.saga_step.as_deref().and_then(crate::saga::step::named) {
                crate::saga::step_metric(step, crate::states::SagaStepStatus::Completed);
            }
        }
        Err(err) => {
            metrics().outbox_records.add(1, &[kv(OUTCOME, "failed")]);
            let attempts = row.attempts + 1;
            let wait = args.policy.backoff(attempts as u32, None, &mut rand::rng());
            let next = Utc::now() + wait;
            tracing::warn!(
                error = %conveyor_actors::error::chain(&err),
                attempts,
                retry_in_ms = wait.as_millis() as u64,
                "outbox: publish failed"
            );
            if let Err(store_err) = args.store.outbox_failed(&row.id, attempts, next, err.to_string()).await {
                tracing::warn!(error = %conveyor_actors::error::chain(&store_err), "outbox: failure not recorded");
            }
        }
    }
}

/// The relay as a service of the root supervisor.
pub fn service(args: OutboxArgs) -> conveyor_actors::supervision::ActorService<OutboxRelay> {
    let slot = conveyor_actors::supervision::Slot::new("outbox-relay");
    conveyor_actors::supervision::ActorService::new(
        "OutboxRelay",
        slot,
        || OutboxMsg::InjectPanic,
        move || (OutboxRelay, args.clone()),
    )
}
