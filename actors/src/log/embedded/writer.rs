//! The per-topic writer thread: group commit.
//!
//! Senders encode their frame on their own task and queue it; the thread takes everything
//! queued at that moment as one batch, writes each touched partition's frames with one
//! positional write into its active segment (rolling it first when it is full or old),
//! appends the same frames to the topic's [`Journal`] and fsyncs that one file, publishes the
//! new frames to readers and only then answers the waiters. Under load a batch grows while
//! the previous fsync runs, so the cost of an fsync is shared by many records. Once the
//! journal is due, every partition's active segment is fsync'd (concurrently, see
//! [`Syncers`]) and the journal starts its next round.
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
    let mut syncers = Syncers::default();
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
        if journal.checkpoint_due() {
            checkpoint(writer, &mut journal, &mut syncers);
        }
    }
}

/// Fsyncs every partition's active segment, then lets the journal start over. A failed
/// fsync leaves the journal as it is (it keeps growing, every entry still needed) and is
/// tried again after the next batch.
fn checkpoint(writer: &Writer, journal: &mut Journal, syncers: &mut Syncers) {
    let segments: Vec<Arc<Segment>> = writer.partitions.iter().map(|p| p.active()).collect();
    let refs: Vec<&Arc<Segment>> = segments.iter().collect();
    let failed: Vec<String> = syncers
        .sync_all(&refs)
        .into_iter()
        .zip(&segments)
        .filter_map(|(result, segment)| result.err().map(|e| format!("{}: {e}", segment.path().display())))
        .collect();
    if failed.is_empty() {
        journal.restart();
    } else {
        tracing::error!(topic = writer.topic, failed = ?failed, journal = %journal.path().display(),
            "embedded log checkpoint failed; the journal keeps every entry until one succeeds");
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
    let entries: Vec<Entry<&[u8]>> = written
        .iter()
        .map(|(entry, segment, _)| Entry {
            // Partition indexes and a batch's record count are far below u32::MAX.
            partition: entry.index as u32,
            first_offset: segment.next_offset(),
            count: entry.lens.len() as u32,
            frames: entry.buf.as_slice(),
        })
        .collect();
    if let Err(e) = journal.append(&entries) {
        drop(entries);
        let mut replies = Vec::new();
        for (entry, segment, start) in written {
            segment.discard_from(start);
            replies.extend(entry.replies);
        }
        fail(journal.path(), replies, e);
        return;
    }
    drop(entries);
    for (entry, segment, start) in written {
        let first = entry.partition.publish(&segment, start, &entry.buf, &entry.lens);
        let partition = entry.partition.tp().partition;
        for (i, reply) in entry.replies.into_iter().enumerate() {
            // A sender that timed out is gone; its record stays written (at-least-once).
            let _ = reply.send(Ok(Ack { partition, offset: first + i as i64 }));
        }
    }
}

/// Helper threads that fsync the other segments of a checkpoint while the writer thread
/// fsyncs the first: the filesystem's journal then commits them together, so a checkpoint
/// waits about one fsync instead of one per partition in turn. They live as long as the
/// writer: a thread spawned each time (a stack mapped and faulted in, a wake-up on a busy
/// machine) added about a fifth to a four-file sync and doubled its p99.
#[derive(Default)]
struct Syncers {
    helpers: Vec<std::sync::mpsc::Sender<SyncJob>>,
}

/// One file to fsync and where its result goes (with its index in the batch).
struct SyncJob {
    index: usize,
    segment: Arc<Segment>,
    done: std::sync::mpsc::SyncSender<(usize, io::Result<()>)>,
}

impl Syncers {
    /// Fsyncs every written segment: the first on this thread, the others on helpers.
    fn sync_all(&mut self, segments: &[&Arc<Segment>]) -> Vec<io::Result<()>> {
        if segments.len() < 2 {
            return segments.iter().map(|segment| segment.sync()).collect();
        }
        let (done, finished) = std::sync::mpsc::sync_channel(segments.len());
        let mut results: Vec<Option<io::Result<()>>> = (0..segments.len()).map(|_| None).collect();
        let mut outstanding = 0;
        for (index, segment) in segments.iter().enumerate().skip(1) {
            let job = SyncJob { index, segment: Arc::clone(segment), done: done.clone() };
            match self.send(index - 1, job) {
                Ok(()) => outstanding += 1,
                // No helper: the written frames can still be made durable, here.
                Err(_) => results[index] = Some(segment.sync()),
            }
        }
        results[0] = Some(segments[0].sync());
        drop(done);
        for _ in 0..outstanding {
            // A helper that died drops its job's sender; the file then counts as not synced.
            let Ok((index, result)) = finished.recv() else { break };
            results[index] = Some(result);
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(io::Error::other("fsync helper stopped")))).collect()
    }

    /// Hands `job` to the `i`th helper, starting helpers on first use. A helper that is gone
    /// is started again for the next batch; this batch's file is synced by the caller.
    fn send(&mut self, i: usize, job: SyncJob) -> io::Result<()> {
        while self.helpers.len() <= i {
            let (tx, rx) = std::sync::mpsc::channel::<SyncJob>();
            std::thread::Builder::new().name(format!("log-fsync-{i}")).spawn(move || {
                for job in rx {
                    let _ = job.done.send((job.index, job.segment.sync()));
                }
            })?;
            self.helpers.push(tx);
        }
        self.helpers[i].send(job).map_err(|_| {
            // Dropping the senders from i on ends those helpers; they start afresh.
            self.helpers.truncate(i);
            io::Error::other("fsync helper stopped")
        })
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn helpers_are_started_once_and_restarted_when_gone() {
        let dir = tempfile::tempdir().unwrap();
        let segments: Vec<Arc<Segment>> = (0..4)
            .map(|p| {
                let sub = dir.path().join(p.to_string());
                std::fs::create_dir_all(&sub).unwrap();
                Arc::new(Segment::create(&sub, 0).unwrap())
            })
            .collect();
        let refs: Vec<&Arc<Segment>> = segments.iter().collect();
        let mut syncers = Syncers::default();
        for _ in 0..50 {
            for segment in &segments {
                segment.write(b"frame").unwrap();
            }
            assert!(syncers.sync_all(&refs).iter().all(Result::is_ok));
        }
        // One helper per file after the first, however many batches ran.
        assert_eq!(syncers.helpers.len(), 3);
        // A helper that is gone: its file is synced by the caller, and the next batch
        // starts the helpers from it on again.
        let (gone, _) = std::sync::mpsc::channel();
        syncers.helpers[1] = gone;
        assert!(syncers.sync_all(&refs).iter().all(Result::is_ok));
        assert_eq!(syncers.helpers.len(), 3, "restarted");
        assert!(syncers.sync_all(&refs).iter().all(Result::is_ok));
        assert_eq!(syncers.helpers.len(), 3);
    }
}
