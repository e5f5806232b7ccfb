//! The per-topic writer thread: group commit.
//!
//! Senders encode their frame on their own task and queue it; the thread takes everything
//! queued at that moment as one batch, writes each touched partition's frames with one
//! positional write, fsyncs each touched file once, publishes the new frames to readers and
//! only then answers the waiters. Under load a batch grows while the previous fsync runs, so
//! the cost of an fsync is shared by many records.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::segment::Partition;
use crate::error::Error;
use crate::log::Ack;

/// Queue depth per topic; a full queue makes senders wait (and eventually time out).
pub(crate) const QUEUE_DEPTH: usize = 8192;
/// Bounds one batch so that a burst cannot hold acknowledgements back for long.
const MAX_BATCH_RECORDS: usize = 4096;
const MAX_BATCH_BYTES: usize = 16 << 20;

/// One record waiting to be made durable.
pub(crate) struct Append {
    /// Index into the topic's partitions.
    pub partition: usize,
    pub frame: Vec<u8>,
    pub reply: oneshot::Sender<Result<Ack, Error>>,
}

/// Starts the writer thread of one topic. It ends once every sender is gone and the queue
/// is drained; it keeps the directory lock alive until then, so that no second log can
/// open the directory while it may still write.
pub(crate) fn spawn(
    topic_dir: &Path,
    topic: &str,
    partitions: Vec<Arc<Partition>>,
    dir_lock: Arc<File>,
) -> Result<mpsc::Sender<Append>, Error> {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    std::thread::Builder::new()
        .name(format!("log-writer-{topic}"))
        .spawn(move || run(rx, &partitions, dir_lock))
        .map_err(|e| Error::io(topic_dir, e))?;
    Ok(tx)
}

fn run(mut rx: mpsc::Receiver<Append>, partitions: &[Arc<Partition>], _dir_lock: Arc<File>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut bytes = first.frame.len();
        batch.push(first);
        while batch.len() < MAX_BATCH_RECORDS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.frame.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        commit(partitions, &mut batch);
    }
}

/// Appends of one partition within a batch, in arrival order.
struct Pending<'a> {
    partition: &'a Partition,
    lens: Vec<u64>,
    replies: Vec<oneshot::Sender<Result<Ack, Error>>>,
    buf: Vec<u8>,
}

fn commit(partitions: &[Arc<Partition>], batch: &mut Vec<Append>) {
    let mut pending: Vec<Pending<'_>> = Vec::new();
    for append in batch.drain(..) {
        let Some(partition) = partitions.get(append.partition) else {
            let _ = append.reply.send(Err(Error::Config {
                key: "partition",
                reason: format!("partition {} does not exist", append.partition),
            }));
            continue;
        };
        let slot = match pending.iter().position(|p| std::ptr::eq(p.partition, partition.as_ref())) {
            Some(slot) => slot,
            None => {
                pending.push(Pending { partition, lens: Vec::new(), replies: Vec::new(), buf: Vec::new() });
                pending.len() - 1
            }
        };
        let entry = &mut pending[slot];
        entry.lens.push(append.frame.len() as u64);
        entry.buf.extend_from_slice(&append.frame);
        entry.replies.push(append.reply);
    }

    // Write everything before the first fsync so the kernel can start writing back all files.
    let mut written = Vec::with_capacity(pending.len());
    for entry in pending {
        match entry.partition.write(&entry.buf) {
            Ok(start) => written.push((entry, start)),
            Err(e) => fail(entry.partition, entry.replies, e),
        }
    }
    for (entry, start) in written {
        if let Err(e) = entry.partition.sync() {
            entry.partition.discard_from(start);
            fail(entry.partition, entry.replies, e);
            continue;
        }
        let first = entry.partition.publish(start, &entry.lens);
        let partition = entry.partition.tp().partition;
        for (i, reply) in entry.replies.into_iter().enumerate() {
            // A sender that timed out is gone; its record stays written (at-least-once).
            let _ = reply.send(Ok(Ack { partition, offset: first + i as i64 }));
        }
    }
}

/// Answers every waiter of a failed partition write with the same cause.
fn fail(partition: &Partition, replies: Vec<oneshot::Sender<Result<Ack, Error>>>, error: io::Error) {
    tracing::error!(path = %partition.path().display(), error = %error, "embedded log append failed");
    let kind = error.kind();
    let shared = Arc::new(error);
    for reply in replies {
        let cause = io::Error::new(kind, Arc::clone(&shared));
        let _ = reply.send(Err(Error::io(partition.path(), cause)));
    }
}
