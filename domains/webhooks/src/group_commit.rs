//! Group commit: callers that write at the same time share one write. Each caller hands
//! its rows to a writer task and waits for the write that carries them, so a caller still
//! learns that *its* rows are stored before it goes on; the task takes whatever queued up
//! while the previous write ran (no timer: a lone caller is written at once).
//!
//! The fan-out uses it (notifications are keys of their own, so the consumer handles many at
//! once) and so do the endpoint actors' outcome writes (each endpoint has at most a few
//! attempts in flight; together they make a batch).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use conveyor_actors::Error;

/// A write this caller's rows were part of did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteFailed {
    #[error("writing a batch ({what})")]
    Store {
        what: &'static str,
        #[source]
        source: Arc<Error>,
    },
    #[error("the {what} writer stopped")]
    Stopped { what: &'static str },
}

struct Job<T> {
    rows: Vec<T>,
    done: oneshot::Sender<Result<(), Arc<Error>>>,
}

/// Hands rows to the writer task; cheap to clone.
pub struct GroupCommit<T> {
    what: &'static str,
    tx: mpsc::Sender<Job<T>>,
}

impl<T> Clone for GroupCommit<T> {
    fn clone(&self) -> Self {
        GroupCommit { what: self.what, tx: self.tx.clone() }
    }
}

impl<T: Send + 'static> GroupCommit<T> {
    /// Starts the writer task (it ends when every handle is dropped); `write` gets every
    /// caller's rows that queued up, at most `max_callers` callers' at once.
    pub fn start<F, Fut>(what: &'static str, max_callers: usize, write: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), Error>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<Job<T>>(max_callers * 4);
        tokio::spawn(async move {
            let mut jobs = Vec::with_capacity(max_callers);
            while rx.recv_many(&mut jobs, max_callers).await > 0 {
                let mut dones = Vec::with_capacity(jobs.len());
                let mut rows = Vec::new();
                for job in jobs.drain(..) {
                    rows.extend(job.rows);
                    dones.push(job.done);
                }
                let result = write(rows).await.map_err(Arc::new);
                for done in dones {
                    let _ = done.send(result.clone());
                }
            }
        });
        GroupCommit { what, tx }
    }

    /// Writes `rows` with whatever else is being written; returns once they are stored.
    pub async fn write(&self, rows: Vec<T>) -> Result<(), WriteFailed> {
        let what = self.what;
        let (done, answer) = oneshot::channel();
        self.tx.send(Job { rows, done }).await.map_err(|_| WriteFailed::Stopped { what })?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(WriteFailed::Store { what, source }),
            Err(_) => Err(WriteFailed::Stopped { what }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_writes_and_each_learns_its_outcome() {
        let writes = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let seen = writes.clone();
        let commit = GroupCommit::start("test", 100, move |rows: Vec<u32>| {
            let seen = seen.clone();
            async move {
                // A slow write: callers queue up behind it.
                tokio::task::yield_now().await;
                let failed = rows.contains(&13);
                seen.lock().unwrap().push(rows);
                if failed { Err(Error::NotFound { what: "row 13" }) } else { Ok(()) }
            }
        });
        let calls: Vec<_> = (0..50u32)
            .map(|i| {
                tokio::spawn({
                    let commit = commit.clone();
                    async move { (i, commit.write(vec![i]).await.is_ok()) }
                })
            })
            .collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap());
        }
        let writes = writes.lock().unwrap().clone();
        let mut written: Vec<u32> = writes.iter().flatten().copied().collect();
        written.sort_unstable();
        assert_eq!(written, (0..50).collect::<Vec<_>>(), "every row written exactly once");
        // Only the callers whose rows shared a write with row 13 were told it failed.
        let failed_write = writes.iter().find(|w| w.contains(&13)).unwrap();
        for (i, ok) in answers {
            assert_eq!(ok, !failed_write.contains(&i), "row {i}");
        }
    }
}
