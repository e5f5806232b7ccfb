//! The per-topic writer thread: group commit.
//!
//! Senders encode their frame on their own task and queue it; the thread takes everything
//! queued at that moment as one batch, writes each touched partition's frames with one
//! positional write into its active segment (rolling it first when it is full or old),
//! appends the same frames to the topic's [`Journal`] and fsyncs that one file, publishes the
//! new frames to readers and only then answers the waiters. Under load a batch grows while
//! the previous fsync runs, so the cost of an fsync is shared by many records. Once the
//! journal's file is full it switches to its other file, and a helper thread fsyncs every
//! partition's active segment (a checkpoint, see [`Checkpointer`]).
//!
//! The topic's disk budget is checked here, before writing: a partition's frames that do
//! not fit are refused with [`Error::LogFull`] and the retention thread is woken; nothing
//! is deleted on this path.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;

use tokio::sync::{mpsc, oneshot};

use super::Clock;
use super::journal::{Entry, Journal};
use super::partition::Partition;
use super::segment::Segment;
use crate::config::TopicLogPolicy;
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

/// What one topic's writer thread works with.
pub(crate) struct Writer {
    pub topic: String,
    pub partitions: Vec<Arc<Partition>>,
    pub policy: TopicLogPolicy,
    pub clock: Clock,
    /// Wakes the retention thread (after a roll, or when the budget is reached).
    pub retention: SyncSender<()>,
    /// Kept alive until the thread ends, so that no second log can open the directory
    /// while this one may still write.
    #[allow(dead_code)] // held for what dropping it does, never read
    pub dir_lock: Arc<File>,
}

/// Starts the writer thread of one topic. It ends once every sender is gone and the queue
/// is drained.
pub(crate) fn spawn(topic_dir: &Path, writer: Writer, journal: Journal) -> Result<mpsc::Sender<Append>, Error> {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    std::thread::Builder::new()
        .name(format!("log-writer-{}", writer.topic))
        .spawn(move || run(rx, &writer, journal))
        .map_err(|e| Error::io(topic_dir, e))?;
    Ok(tx)
}

fn run(mut rx: mpsc::Receiver<Append>, writer: &Writer, mut journal: Journal) {
    let mut checkpoints = Checkpointer::default();
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
        commit(writer, &mut batch, &mut journal);
        checkpoints.advance(writer, &mut journal);
    }
}

/// What a checkpoint thread answers: `Err` lists the segments whose fsync failed.
type CheckpointDone = std::sync::mpsc::Receiver<Result<(), String>>;

/// Fsyncs every partition's active segment on a helper thread after the journal switched
/// files, so that appends never wait for it; the writer learns the outcome after a later
/// batch. A failed checkpoint is logged and started again (the file left behind stays
/// reserved, the current one grows meanwhile).
#[derive(Default)]
struct Checkpointer {
    running: Option<CheckpointDone>,
}

impl Checkpointer {
    fn advance(&mut self, writer: &Writer, journal: &mut Journal) {
        if let Some(done) = &self.running {
            match done.try_recv() {
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
                Ok(Ok(())) => journal.checkpointed(),
                Ok(Err(failed)) => {
                    tracing::error!(topic = writer.topic, failed, journal = %journal.path().display(),
                        "embedded log checkpoint failed; the journal keeps both files until one succeeds");
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    tracing::error!(topic = writer.topic, "embedded log checkpoint thread stopped; starting another");
                }
            }
            self.running = None;
        }
        if journal.switch_due() {
            journal.switch();
        }
        if journal.checkpoint_pending() {
            let segments: Vec<Arc<Segment>> = writer.partitions.iter().map(|p| p.active()).collect();
            self.running = start_checkpoint(&writer.topic, segments);
        }
    }
}

/// Starts one checkpoint; `None` when no thread could be started (tried after the next batch).
fn start_checkpoint(topic: &str, segments: Vec<Arc<Segment>>) -> Option<CheckpointDone> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new().name(format!("log-checkpoint-{topic}")).spawn(move || {
        // Concurrently: the filesystem then commits its metadata for all of them at once.
        let failed: Vec<String> = std::thread::scope(|scope| {
            let syncs: Vec<_> = segments.iter().map(|segment| (segment, scope.spawn(|| segment.sync()))).collect();
            syncs
                .into_iter()
                .filter_map(|(segment, sync)| {
                    let result = sync.join().unwrap_or_else(|_| Err(io::Error::other("fsync thread panicked")));
                    result.err().map(|e| format!("{}: {e}", segment.path().display()))
                })
                .collect()
        });
        if !failed.is_empty() {
            // A disk that fails fsyncs is not asked again at once.
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        let _ = tx.send(if failed.is_empty() { Ok(()) } else { Err(failed.join("; ")) });
    });
    match spawned {
        Ok(_) => Some(rx),
        Err(e) => {
            tracing::error!(topic, error = %e, "could not start an embedded log checkpoint");
            None
        }
    }
}

/// Appends of one partition within a batch, in arrival order.
struct Pending<'a> {
    index: usize,
    partition: &'a Partition,
    lens: Vec<u64>,
    replies: Vec<oneshot::Sender<Result<Ack, Error>>>,
    buf: Vec<u8>,
}

fn commit(writer: &Writer, batch: &mut Vec<Append>, journal: &mut Journal) {
    let partitions = &writer.partitions;
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
                pending.push(Pending {
                    index: append.partition,
                    partition,
                    lens: Vec::new(),
                    replies: Vec::new(),
                    buf: Vec::new(),
                });
                pending.len() - 1
            }
        };
        let entry = &mut pending[slot];
        entry.lens.push(append.frame.len() as u64);
        entry.buf.extend_from_slice(&append.frame);
        entry.replies.push(append.reply);
    }

    let budget = writer.policy.max_disk_bytes;
    let mut used = if budget == 0 { 0 } else { partitions.iter().map(|p| p.size_bytes()).sum() };
    let now = (writer.clock)();
    let mut wake_retention = false;
    // Write everything before the first fsync so the kernel can start writing back all files.
    let mut written: Vec<(Pending<'_>, Arc<Segment>, u64)> = Vec::with_capacity(pending.len());
    for entry in pending {
        let incoming = entry.buf.len() as u64;
        if budget != 0 && used + incoming > budget {
            wake_retention = true;
            refuse(writer, entry.replies, used);
            continue;
        }
        let segment = match entry.partition.segment_for_append(&writer.policy, now, incoming) {
            Ok((segment, rolled)) => {
                wake_retention |= rolled;
                segment
            }
            Err(e) => {
                fail(entry.partition.dir(), entry.replies, e);
                continue;
            }
        };
        match segment.write(&entry.buf) {
            Ok(start) => {
                used += incoming;
                written.push((entry, segment, start));
            }
            Err(e) => fail(segment.path(), entry.replies, e),
        }
    }
    if wake_retention {
        // Full means a pass is already due; either way it runs soon.
        let _ = writer.retention.try_send(());
    }
    let entries = written.iter().map(|(entry, segment, _)| Entry {
        // Partition indexes and a batch's record count are far below u32::MAX.
        partition: entry.index as u32,
        first_offset: segment.next_offset(),
        count: entry.lens.len() as u32,
        frames: entry.buf.as_slice(),
    });
    if let Err(e) = journal.append(&entries.collect::<Vec<_>>()) {
        let mut replies = Vec::new();
        for (entry, segment, start) in written {
            segment.discard_from(start);
            replies.extend(entry.replies);
        }
        fail(journal.path(), replies, e);
        return;
    }
    for (entry, segment, start) in written {
        let first = entry.partition.publish(&segment, start, &entry.buf, &entry.lens);
        let partition = entry.partition.tp().partition;
        for (i, reply) in entry.replies.into_iter().enumerate() {
            // A sender that timed out is gone; its record stays written (at-least-once).
            let _ = reply.send(Ok(Ack { partition, offset: first + i as i64 }));
        }
    }
}

/// Answers every waiter of a partition that would exceed the topic's budget.
fn refuse(writer: &Writer, replies: Vec<oneshot::Sender<Result<Ack, Error>>>, used: u64) {
    tracing::debug!(topic = writer.topic, used, budget = writer.policy.max_disk_bytes, "embedded log topic is full");
    for reply in replies {
        let _ = reply.send(Err(Error::LogFull {
            topic: writer.topic.clone(),
            used_bytes: used,
            budget_bytes: writer.policy.max_disk_bytes,
        }));
    }
}

/// Answers every waiter of a failed partition write with the same cause.
fn fail(path: &Path, replies: Vec<oneshot::Sender<Result<Ack, Error>>>, error: io::Error) {
    tracing::error!(path = %path.display(), error = %error, "embedded log append failed");
    let kind = error.kind();
    let shared = Arc::new(error);
    for reply in replies {
        let cause = io::Error::new(kind, Arc::clone(&shared));
        let _ = reply.send(Err(Error::io(path, cause)));
    }
}
