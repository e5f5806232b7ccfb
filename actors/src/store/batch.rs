//! Group commit: concurrent single-row writes become one multi-row statement.
//!
//! Key tasks stay as they are (one running call per key, in offset order) and each awaits
//! its own row. Whatever the writers find queued when they are free goes into one
//! statement, so a batch is exactly "what the partitions have ready": it grows with the
//! load and is a single row when the pipeline is idle, with no linger to wait out. A key
//! waiting out a backoff has submitted nothing, so it is never in a batch; a key's next
//! write waits for its previous one, so per-key order holds.
//!
//! ```text
//! key task ─submit(row)─▶ queue ─▶ writer 1..N: take what is queued (≤ max) ─▶ one statement
//!     ◀──────────────── its own row's outcome ───────────────────────────────┘
//! ```

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::Error;
use crate::metrics::{OPERATION, kv, metrics};

/// Writes many items in as few statements as it can, answering each item on its own.
#[async_trait]
pub trait BatchWrite: Send + Sync + 'static {
    type Item: Send + 'static;
    type Output: Send + 'static;

    /// A bounded name for logs and metrics, e.g. `upsert_resources`.
    fn name(&self) -> &'static str;

    /// One result per item, in the items' order. A failure of one item must not fail its
    /// neighbours (a writer falls back to writing them alone when a batch is refused).
    async fn write(&self, items: Vec<Self::Item>) -> Vec<Result<Self::Output, Error>>;
}

type Pending<W> = (<W as BatchWrite>::Item, oneshot::Sender<Result<<W as BatchWrite>::Output, Error>>);

/// The submitting side; cheap to clone. The writer tasks end when the last handle is dropped.
pub struct Batcher<W: BatchWrite> {
    tx: mpsc::Sender<Pending<W>>,
    name: &'static str,
}

impl<W: BatchWrite> Clone for Batcher<W> {
    fn clone(&self) -> Self {
        Batcher { tx: self.tx.clone(), name: self.name }
    }
}

impl<W: BatchWrite> Batcher<W> {
    /// Starts `writers` tasks that each take up to `max_batch` queued items per statement.
    /// The queue holds `max_batch × writers` items; submitters beyond that wait.
    pub fn spawn(writer: W, max_batch: usize, writers: usize) -> Self {
        let (max_batch, writers) = (max_batch.max(1), writers.max(1));
        let name = writer.name();
        let (tx, rx) = mpsc::channel::<Pending<W>>(max_batch * writers);
        let rx = Arc::new(Mutex::new(rx));
        let writer = Arc::new(writer);
        for _ in 0..writers {
            tokio::spawn(write_loop(writer.clone(), rx.clone(), max_batch));
        }
        Batcher { tx, name }
    }

    /// Queues `item` and waits for its own outcome.
    pub async fn submit(&self, item: W::Item) -> Result<W::Output, Error> {
        let gone = || Error::SubsystemDown { subsystem: self.name };
        let (reply, answer) = oneshot::channel();
        self.tx.send((item, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// One writer: takes whatever is queued (at least one item), writes it, answers each item.
async fn write_loop<W: BatchWrite>(writer: Arc<W>, rx: Arc<Mutex<mpsc::Receiver<Pending<W>>>>, max_batch: usize) {
    loop {
        let batch = {
            // Only the writer holding the lock waits for the next item, so a batch is
            // never split between two idle writers.
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut batch = Vec::with_capacity(max_batch.min(64));
            batch.push(first);
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            batch
        };
        metrics().store_batch_rows.record(batch.len() as u64, &[kv(OPERATION, writer.name())]);
        let (items, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let count = items.len();
        // A panicking writer answers nobody; its callers see the batcher as down and retry.
        let Ok(results) = AssertUnwindSafe(writer.write(items)).catch_unwind().await else {
            tracing::error!(op = writer.name(), rows = count, "batch writer panicked; its rows will be retried");
            continue;
        };
        debug_assert_eq!(results.len(), count, "one result per item");
        for (reply, result) in replies.into_iter().zip(results) {
            // The submitter may have gone (its partition drained); the row is written anyway.
            let _ = reply.send(result);
        }
    }
}

/// A write that succeeds or fails as a whole: several statements, or one without an answer
/// per row. [`Grouped`] batches callers' row sets for it. It must be safe to repeat: after a
/// refusal part of it may be stored, and each caller's rows are written again.
#[async_trait]
pub trait WholeWrite: Send + Sync + 'static {
    type Row: Send + Sync + 'static;

    /// A bounded name for logs and metrics.
    fn name(&self) -> &'static str;

    async fn write_all(&self, rows: &[Self::Row]) -> Result<(), Error>;
}

/// Each item is one caller's rows; every caller that is ready shares one [`WholeWrite`].
/// When that write is refused, each caller's rows are written alone, so rows the store
/// cannot take fail only the caller that brought them.
pub struct Grouped<W>(pub W);

#[async_trait]
impl<W: WholeWrite> BatchWrite for Grouped<W> {
    type Item = Vec<W::Row>;
    type Output = ();

    fn name(&self) -> &'static str {
        self.0.name()
    }

    async fn write(&self, items: Vec<Vec<W::Row>>) -> Vec<Result<(), Error>> {
        let lens: Vec<usize> = items.iter().map(Vec::len).collect();
        let rows: Vec<W::Row> = items.into_iter().flatten().collect();
        let err = match self.0.write_all(&rows).await {
            Ok(()) => return lens.iter().map(|_| Ok(())).collect(),
            Err(err) if lens.len() == 1 => return vec![Err(err)],
            Err(err) => err,
        };
        tracing::debug!(
            op = self.0.name(),
            callers = lens.len(),
            error = %crate::error::chain(&err),
            "batch refused; caller by caller"
        );
        let mut results = Vec::with_capacity(lens.len());
        let mut start = 0;
        for len in lens {
            results.push(self.0.write_all(&rows[start..start + len]).await);
            start += len;
        }
        results
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex as StdMutex;

    use super::*;

    /// Records each batch; fails items equal to 13 alone, and panics on 666.
    #[derive(Default, Clone)]
    struct Recorder(Arc<StdMutex<Vec<Vec<u32>>>>);

    #[async_trait]
    impl BatchWrite for Recorder {
        type Item = u32;
        type Output = u32;
        fn name(&self) -> &'static str {
            "test"
        }
        async fn write(&self, items: Vec<u32>) -> Vec<Result<u32, Error>> {
            assert!(!items.contains(&666), "poisoned batch");
            self.0.lock().unwrap().push(items.clone());
            // Let more submissions queue up behind this batch.
            tokio::task::yield_now().await;
            items
                .into_iter()
                .map(|i| if i == 13 { Err(Error::NotFound { what: "thirteen" }) } else { Ok(i * 2) })
                .collect()
        }
    }

    #[tokio::test]
    async fn concurrent_submissions_share_statements_and_each_gets_its_own_answer() {
        let recorder = Recorder::default();
        let batcher = Batcher::spawn(recorder.clone(), 16, 1);
        let mut tasks = Vec::new();
        for i in 0..100u32 {
            let b = batcher.clone();
            tasks.push(tokio::spawn(async move { (i, b.submit(i).await) }));
        }
        for task in tasks {
            let (i, result) = task.await.unwrap();
            match result {
                Ok(v) => assert_eq!(v, i * 2),
                Err(err) => assert!(i == 13 && matches!(err, Error::NotFound { .. }), "{i}: {err}"),
            }
        }
        let batches = recorder.0.lock().unwrap().clone();
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 100, "every item written once");
        assert!(batches.iter().all(|b| b.len() <= 16), "bounded batches: {batches:?}");
        assert!(batches.len() < 100, "some items shared a statement: {} batches", batches.len());
    }

    #[tokio::test]
    async fn an_idle_batcher_writes_a_single_item_at_once_and_survives_a_panicking_batch() {
        let recorder = Recorder::default();
        let batcher = Batcher::spawn(recorder.clone(), 16, 2);
        assert_eq!(batcher.submit(1).await.unwrap(), 2);
        let err = batcher.submit(666).await.unwrap_err();
        assert!(matches!(err, Error::SubsystemDown { subsystem: "test" }), "{err}");
        // Both writers still run.
        assert_eq!(batcher.submit(2).await.unwrap(), 4);
        assert_eq!(batcher.submit(3).await.unwrap(), 6);
        assert_eq!(recorder.0.lock().unwrap().clone(), vec![vec![1], vec![2], vec![3]]);
    }

    /// Refuses any write that holds a 13.
    struct Sets(Arc<StdMutex<Vec<Vec<u32>>>>);

    #[async_trait]
    impl WholeWrite for Sets {
        type Row = u32;
        fn name(&self) -> &'static str {
            "sets"
        }
        async fn write_all(&self, rows: &[u32]) -> Result<(), Error> {
            self.0.lock().unwrap().push(rows.to_vec());
            tokio::task::yield_now().await;
            if rows.contains(&13) { Err(Error::NotFound { what: "thirteen" }) } else { Ok(()) }
        }
    }

    #[tokio::test]
    async fn grouped_sets_share_a_write_and_a_refused_one_fails_only_its_caller() {
        let writes = Arc::new(StdMutex::new(Vec::new()));
        let batcher = Batcher::spawn(Grouped(Sets(writes.clone())), 64, 1);
        let tasks: Vec<_> = (0..20u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.submit(vec![i * 10, i + 5]).await) })
            })
            .collect();
        for task in tasks {
            let (i, result) = task.await.unwrap();
            // Only caller 8 brought a 13 (8 + 5).
            assert_eq!(result.is_ok(), i != 8, "caller {i}: {result:?}");
        }
        let writes = writes.lock().unwrap().clone();
        assert!(writes.iter().any(|w| w.len() > 2), "some callers shared a write: {writes:?}");
        let stored: usize = writes.iter().filter(|w| !w.contains(&13)).map(Vec::len).sum();
        assert_eq!(stored, 38, "every other caller's two rows stored exactly once: {writes:?}");
    }
}
