//! The embedded durable log: per topic-partition a directory of append-only segment files
//! named by base offset (`{dir}/{topic}/{partition}/{base:020}.log`, see [`partition`]), a
//! group-committing writer thread per topic ([`writer`]), a retention thread deleting whole
//! sealed segments ([`retention`]), and single-process consumer groups whose offsets live in
//! `{dir}/_groups/{group}.json` ([`groups`]).
//!
//! A record is acknowledged only after its frame was written and fsync'd. When the log is
//! opened, a torn tail of a partition's active segment is cut, and a bad frame in a sealed
//! segment fails the open with [`Error::CorruptLog`] naming file and byte. Memory per
//! partition is a sparse index (one entry per 4 KiB retained), not one entry per record.
//! The old one-file-per-partition layout (`{partition}.log`) is moved in as segment 0.
//! Keys are partitioned with Kafka's murmur2 so that a key lands on the same partition
//! number here as with the Kafka backend.

mod consumer;
mod frame;
mod groups;
mod journal;
mod partition;
mod retention;
mod segment;
mod writer;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod segment_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use self::consumer::Membership;
use self::groups::{Groups, sync_dir};
use self::journal::Journal;
use self::partition::Partition;
use self::segment::Segment;
use self::writer::{Append, Writer};
use crate::config::EmbeddedLogConfig;
use crate::error::Error;
use crate::log::{Ack, ConsumerHandle, GroupListener, LogBackend, OutgoingRecord, Producer, TopicPartition};

const GROUPS_DIR: &str = "_groups";
const LOCK_FILE: &str = ".lock";
/// Suffix of a topic directory being created; `~` cannot occur in a topic name.
const CREATING_SUFFIX: &str = "~creating";
/// How long `open` waits for a previous log on the same directory (in this process: one
/// whose writer threads are still draining) to let go.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The embedded log; cheap to clone, every clone is the same log.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

/// Wall-clock milliseconds; injectable so that tests can age records and segments.
pub(crate) type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

struct Inner {
    dir: PathBuf,
    default_partitions: i32,
    config: EmbeddedLogConfig,
    clock: Clock,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    active_groups: Arc<Mutex<HashSet<String>>>,
    /// Offsets of every group with a file, running or not.
    groups: Groups,
    /// Wakes the retention thread.
    retention: SyncSender<()>,
    /// Exclusive lock on `{dir}/.lock`, shared with the writer threads.
    dir_lock: Arc<File>,
}

/// How [`EmbeddedLog::open_with`] opens a log, beyond its configuration.
struct Options {
    config: EmbeddedLogConfig,
    clock: Clock,
    lock_wait: Duration,
    /// Off in tests that call [`Inner::run_retention`] themselves.
    background_retention: bool,
}

impl Options {
    fn new(config: &EmbeddedLogConfig) -> Self {
        Options { config: config.clone(), clock: Arc::new(now_ms), lock_wait: LOCK_WAIT, background_retention: true }
    }
}

struct Topic {
    partitions: Vec<Arc<Partition>>,
    appends: mpsc::Sender<Append>,
    round_robin: AtomicUsize,
}

impl EmbeddedLog {
    /// Opens (creating) the log under `dir` with the default segment and retention settings;
    /// see [`EmbeddedLog::open_with`].
    pub fn open(dir: &Path, default_partitions: i32) -> Result<Self, Error> {
        Self::open_with(dir, default_partitions, &EmbeddedLogConfig::default())
    }

    /// Opens (creating) the log under `dir`, loading every topic and group found there,
    /// cutting torn tails of active segments and failing on a corrupt sealed one;
    /// `default_partitions` is the partition count of topics created later, and of topics
    /// found with fewer (they grow; partitions are never removed).
    pub fn open_with(dir: &Path, default_partitions: i32, config: &EmbeddedLogConfig) -> Result<Self, Error> {
        Self::open_opts(dir, default_partitions, Options::new(config))
    }

    fn open_opts(dir: &Path, default_partitions: i32, options: Options) -> Result<Self, Error> {
        if default_partitions < 1 {
            return Err(Error::Config {
                key: "log.partitions",
                reason: format!("must be at least 1, got {default_partitions}"),
            });
        }
        options.config.validate(default_partitions).map_err(|e| Error::Config { key: e.key, reason: e.reason })?;
        fs::create_dir_all(dir.join(GROUPS_DIR)).map_err(|e| Error::io(dir, e))?;
        let dir_lock = Arc::new(lock_dir(&dir.join(LOCK_FILE), options.lock_wait)?);
        let (retention, wake) = retention::wake_channel();
        let inner = Inner {
            dir: dir.to_owned(),
            default_partitions,
            config: options.config,
            clock: options.clock,
            topics: RwLock::new(HashMap::new()),
            active_groups: Arc::default(),
            groups: Groups::load_all(&dir.join(GROUPS_DIR))?,
            retention,
            dir_lock,
        };
        let mut topics = HashMap::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if !path.is_dir() || name == GROUPS_DIR {
                continue;
            }
            if name.ends_with(CREATING_SUFFIX) {
                // A topic whose creation was interrupted never existed.
                fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            } else if validate_name("topic", &name).is_ok() {
                topics.insert(name.clone(), Arc::new(inner.load_topic(&name)?));
            } else {
                tracing::warn!(path = %path.display(), "ignoring a directory that is not a topic");
            }
        }
        *inner.topics.write().unwrap_or_else(PoisonError::into_inner) = topics;
        let every = Duration::from_millis(inner.config.retention_check_ms);
        let inner = Arc::new(inner);
        if options.background_retention {
            retention::spawn(Arc::downgrade(&inner), wake, every)?;
        }
        Ok(Self { inner })
    }

    /// The first retained offset per partition; empty for a topic that does not exist.
    pub fn start_offsets(&self, topic: &str) -> Vec<(i32, i64)> {
        self.inner
            .topic(topic)
            .map(|t| t.partitions.iter().map(|p| (p.tp().partition, p.start_offset())).collect())
            .unwrap_or_default()
    }
}

/// Takes the directory lock so that two logs never append to the same files.
fn lock_dir(path: &Path, wait: Duration) -> Result<File, Error> {
    let file = File::options().create(true).truncate(false).write(true).open(path).map_err(|e| Error::io(path, e))?;
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(Error::io(path, io::Error::from(e))),
        }
    }
}

/// Accepts Kafka's legal topic names (which also keeps names safe as path components).
fn validate_name(key: &'static str, name: &str) -> Result<(), Error> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 249 || name == "." || name == ".." || !name.chars().all(legal) {
        return Err(Error::Config { key, reason: format!("{name:?} is not a legal name (1-249 of [a-zA-Z0-9._-])") });
    }
    if key == "topic" && name == GROUPS_DIR {
        return Err(Error::Config { key, reason: format!("{GROUPS_DIR:?} is reserved by the embedded log") });
    }
    Ok(())
}

impl Inner {
    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }

    fn topic_or_create(&self, name: &str) -> Result<Arc<Topic>, Error> {
        if let Some(topic) = self.topic(name) {
            return Ok(topic);
        }
        validate_name("topic", name)?;
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(topic) = topics.get(name) {
            return Ok(Arc::clone(topic));
        }
        self.create_topic_dir(name)?;
        let topic = Arc::new(self.load_topic(name)?);
        topics.insert(name.to_owned(), Arc::clone(&topic));
        tracing::info!(topic = name, partitions = topic.partitions.len(), "created topic in the embedded log");
        Ok(topic)
    }

    /// Builds the topic in a side directory and renames it into place, so that a crash never
    /// leaves a topic with only some of its partitions.
    fn create_topic_dir(&self, name: &str) -> Result<(), Error> {
        let staging = self.dir.join(format!("{name}{CREATING_SUFFIX}"));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
        for partition in 0..self.default_partitions {
            let dir = staging.join(partition.to_string());
            fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
            Segment::create(&dir, 0)?;
        }
        sync_dir(&staging)?;
        let target = self.dir.join(name);
        fs::rename(&staging, &target).map_err(|e| Error::io(&target, e))?;
        sync_dir(&self.dir)
    }

    /// Opens every partition of a topic directory and starts its writer.
    fn load_topic(&self, name: &str) -> Result<Topic, Error> {
        let topic_dir = self.dir.join(name);
        let mut count = 0;
        for entry in fs::read_dir(&topic_dir).map_err(|e| Error::io(&topic_dir, e))? {
            let entry = entry.map_err(|e| Error::io(&topic_dir, e))?;
            let file_name = entry.file_name();
            // `{p}/` is a partition; `{p}.log` one of the old layout, migrated by Partition::open.
            let number =
                file_name.to_str().map(|n| n.strip_suffix(".log").unwrap_or(n)).and_then(|n| n.parse::<i32>().ok());
            if let Some(number) = number.filter(|n| *n >= 0 && *n < i32::MAX) {
                count = count.max(number + 1);
            }
        }
        // Like Kafka's `--alter --partitions`: a topic with fewer partitions than configured
        // grows (new ones start empty); partitions are never removed.
        if count > 0 && count < self.default_partitions {
            tracing::info!(topic = name, from = count, to = self.default_partitions, "adding partitions to a topic");
        }
        count = count.max(self.default_partitions);
        let partitions = (0..count)
            .map(|p| Partition::open(TopicPartition::new(name, p), &topic_dir).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (journal, found) = Journal::open(&topic_dir, self.config.journal_bytes)?;
        let mut restored = 0;
        for (file, position, entry) in &found {
            let path = journal.path_of(*file);
            let corrupt = || Error::CorruptLog { path: path.display().to_string(), position: *position };
            let partition = partitions.get(entry.partition as usize).ok_or_else(corrupt)?;
            restored += partition.replay(entry, path, *position)?;
        }
        if restored > 0 {
            tracing::warn!(topic = name, restored, "restored records from the journal that their segments had lost");
        }
        // The journal's next round overwrites these entries: what they hold must be in
        // fsync'd segments first. With none found, nothing depends on the journal.
        if !found.is_empty() {
            for partition in &partitions {
                let segment = partition.active();
                segment.sync().map_err(|e| Error::io(segment.path(), e))?;
            }
        }
        let writer = Writer {
            topic: name.to_owned(),
            partitions: partitions.clone(),
            policy: self.config.policy(name),
            clock: Arc::clone(&self.clock),
            retention: self.retention.clone(),
            dir_lock: Arc::clone(&self.dir_lock),
        };
        let appends = writer::spawn(&topic_dir, writer, journal)?;
        Ok(Topic { partitions, appends, round_robin: AtomicUsize::new(0) })
    }
}

impl Topic {
    /// Key → Kafka's default partitioner (murmur2); no key → round robin.
    fn choose_partition(&self, key: Option<&str>) -> usize {
        let count = self.partitions.len().max(1);
        match key {
            Some(key) => partition_for_key(key.as_bytes(), count),
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % count,
        }
    }
}

/// The partition Kafka's default partitioner picks for a keyed record.
fn partition_for_key(key: &[u8], count: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % count.max(1)
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, byte) in rest.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn unavailable(op: &'static str, topic: &str, source: Option<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::LogUnavailable { op, topic: topic.to_owned(), source }
}

#[async_trait]
impl Producer for EmbeddedLog {
    async fn send(&self, record: OutgoingRecord, timeout: Duration) -> Result<Ack, Error> {
        let started = std::time::Instant::now();
        let topic = self.inner.topic_or_create(&record.topic)?;
        let partition = topic.choose_partition(record.key.as_deref());
        let now = (self.inner.clock)();
        let frame = frame::encode_frame(now, record.key.as_deref(), &record.headers, &record.payload)?;
        let (reply, acked) = oneshot::channel();
        let append = Append { partition, frame, reply };
        let wait = async {
            topic.appends.send(append).await.map_err(|_| unavailable("send", &record.topic, None))?;
            acked.await.map_err(|_| unavailable("send", &record.topic, None))?
        };
        let result = match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            Err(elapsed) => Err(unavailable("send", &record.topic, Some(Box::new(elapsed)))),
        };
        super::observe_append(&record.topic, started, &result);
        result
    }

    async fn ping(&self, _timeout: Duration) -> Result<(), Error> {
        Ok(())
    }
}

#[async_trait]
impl LogBackend for EmbeddedLog {
    fn producer(&self) -> Arc<dyn Producer> {
        Arc::new(self.clone())
    }

    async fn ensure_topics(&self, topics: &[String]) -> Result<(), Error> {
        for topic in topics {
            self.inner.topic_or_create(topic)?;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
        listener: Arc<dyn GroupListener>,
    ) -> Result<Box<dyn ConsumerHandle>, Error> {
        validate_name("group", group)?;
        let membership = Membership::claim(&self.inner.active_groups, group)?;
        let mut partitions = Vec::new();
        for topic in topics.iter().collect::<BTreeSet<_>>() {
            partitions.extend(self.inner.topic_or_create(topic)?.partitions.iter().cloned());
        }
        let offsets = self.inner.groups.get(group)?;
        consumer::subscribe(offsets, membership, partitions, listener).await
    }

    /// Next offset per partition; empty for a topic that does not exist.
    async fn end_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, Error> {
        Ok(self
            .inner
            .topic(topic)
            .map(|t| t.partitions.iter().map(|p| (p.tp().partition, p.next_offset())).collect())
            .unwrap_or_default())
    }

    /// The first retained offset per partition (retention deletes whole segments).
    async fn start_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, Error> {
        Ok(EmbeddedLog::start_offsets(self, topic))
    }
}
