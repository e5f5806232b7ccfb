//! Attempt records, written in batches: one insert per batch instead of one per attempt,
//! off the endpoint actors' path.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::metrics::metrics;
use crate::store::WebhookStore;
use crate::store::attempt;

/// Queues attempt records for the writer task; cheap to clone.
#[derive(Clone)]
pub struct AttemptLog {
    tx: mpsc::Sender<attempt::Model>,
}

impl AttemptLog {
    /// Starts the writer; it drains what is queued and ends when every handle is dropped.
    pub fn start(store: WebhookStore, batch: usize, flush: Duration) -> (AttemptLog, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(batch * 100);
        (AttemptLog { tx }, tokio::spawn(write_batches(store, rx, batch, flush)))
    }

    /// Queues one record; waits only while the writer is a full queue behind.
    pub async fn record(&self, row: attempt::Model) {
        if self.tx.send(row).await.is_err() {
            metrics().webhook_attempt_records_dropped.add(1, &[]);
            tracing::warn!("attempt writer stopped; an attempt record was dropped");
        }
    }
}

async fn write_batches(store: WebhookStore, mut rx: mpsc::Receiver<attempt::Model>, batch: usize, flush: Duration) {
    let mut rows = Vec::with_capacity(batch);
    while let Some(first) = rx.recv().await {
        rows.push(first);
        let deadline = tokio::time::Instant::now() + flush;
        while rows.len() < batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(row)) => rows.push(row),
                Ok(None) | Err(_) => break,
            }
        }
        // A store outage is ridden out with a few retries; the deliveries themselves are
        // already recorded on their own rows, only the history would be missing.
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=5 {
            match store.insert_attempts(rows.clone()).await {
                Ok(()) => break,
                Err(err) if attempt == 5 => {
                    metrics().webhook_attempt_records_dropped.add(rows.len() as u64, &[]);
                    tracing::error!(error = %err, records = rows.len(), "dropping webhook attempt records")
                }
                Err(err) => {
                    tracing::warn!(error = %err, "writing webhook attempt records; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        rows.clear();
    }
}
