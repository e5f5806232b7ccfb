//! Concurrent `POST /notifications` share their dedup statements: every claim queued while
//! the previous statement ran goes into the next one, and so do the acceptances
//! ([`conveyor_actors::store::batch`], the runtime's group commit).

use async_trait::async_trait;

use crate::store::{Claim, WebhookStore, notification};
use conveyor_actors::Error;
use conveyor_actors::store::batch::{BatchWrite, Batcher, Grouped, WholeWrite};

/// How old an unaccepted claim is when its publisher has died: one that has not heard from
/// the log in twice its timeout never will. Ordered leases stop waiting for it then too.
pub fn stale_after(produce_timeout: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(produce_timeout * 2).unwrap_or(chrono::Duration::MAX)
}

/// Posts whose claims share one statement at most.
const CLAIMS_PER_STATEMENT: usize = 256;

/// Claims notification ids (the dedup record) for every post that is ready.
pub struct ClaimWriter {
    pub store: WebhookStore,
    /// An accepted id is a duplicate this long.
    pub window: chrono::Duration,
    /// An unaccepted claim older than this was left by a publisher that died.
    pub stale_after: chrono::Duration,
}

#[async_trait]
impl BatchWrite for ClaimWriter {
    type Item = notification::Model;
    type Output = Claim;

    fn name(&self) -> &'static str {
        "claim_notification"
    }

    async fn write(&self, items: Vec<notification::Model>) -> Vec<Result<Claim, Error>> {
        let count = items.len();
        let err = match self.store.claim_notifications(items.clone(), self.window, self.stale_after).await {
            Ok(claims) => return claims.into_iter().map(Ok).collect(),
            Err(err) if count == 1 => return vec![Err(err)],
            Err(err) => err,
        };
        tracing::debug!(error = %conveyor_actors::error::chain(&err), posts = count, "claims refused together; one by one");
        let mut results = Vec::with_capacity(count);
        for item in items {
            let claim = self.store.claim_notifications(vec![item], self.window, self.stale_after).await;
            results.push(claim.map(|mut c| c.remove(0)));
        }
        results
    }
}

/// Marks notification ids accepted (the log has them).
pub struct AcceptWriter(pub WebhookStore);

#[async_trait]
impl WholeWrite for AcceptWriter {
    type Row = String;

    fn name(&self) -> &'static str {
        "accept_notification"
    }

    async fn write_all(&self, ids: &[String]) -> Result<(), Error> {
        self.0.accept_notifications(ids).await
    }
}

/// The ingest's two dedup writers.
#[derive(Clone)]
pub struct Claims {
    pub claim: Batcher<ClaimWriter>,
    pub accept: Batcher<Grouped<AcceptWriter>>,
}

impl Claims {
    /// Starts one writer task for each (SQLite has one writer anyway; PostgreSQL gets
    /// bigger statements).
    pub fn start(store: WebhookStore, window: chrono::Duration, stale_after: chrono::Duration) -> Self {
        Claims {
            claim: Batcher::spawn(ClaimWriter { store: store.clone(), window, stale_after }, CLAIMS_PER_STATEMENT, 1),
            accept: Batcher::spawn(Grouped(AcceptWriter(store)), CLAIMS_PER_STATEMENT, 1),
        }
    }
}
