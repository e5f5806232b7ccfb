//! The durable log: where an accepted event lives until its partition actor is done with it.
//!
//! Two backends share these types: [`embedded`] (files in the data directory, one process)
//! and [`kafka`] (rdkafka against any Kafka-protocol broker). The consumer side is shaped
//! like Kafka's group protocol — assignment, fetch, pause/resume, commit — so that the
//! consumer supervisor and one behaviour suite work unchanged over both.

pub mod embedded;
mod intake;
pub mod kafka;

pub use intake::Intake;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Error;

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A record header (Kafka headers are ordered and may repeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// What a producer writes.
#[derive(Debug, Clone)]
pub struct OutgoingRecord {
    pub topic: String,
    pub key: Option<String>,
    pub payload: Bytes,
    pub headers: Vec<Header>,
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub partition: i32,
    pub offset: i64,
}

/// A record read back from the log.
#[derive(Debug, Clone)]
pub struct Record {
    pub tp: TopicPartition,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Bytes,
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch, as the log stamped it.
    pub timestamp_ms: i64,
}

/// Records how long an append waited for the log's durable acknowledgement.
pub(crate) fn observe_append(topic: &str, started: std::time::Instant, result: &Result<Ack, Error>) {
    use crate::metrics::{self, kv, metrics};
    let outcome = if result.is_ok() { "ok" } else { "error" };
    let labels = [kv(metrics::TOPIC, topic.to_string()), kv(metrics::OUTCOME, outcome)];
    metrics().log_append_duration.record(started.elapsed().as_secs_f64(), &labels);
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.name == name).map(|h| h.value.as_slice())
    }
}

/// Writes records and answers only once the log acknowledged them durably
/// (fsync for the embedded log, `acks=all` for Kafka).
#[async_trait]
pub trait Producer: Send + Sync + 'static {
    /// Sends one record; fails with [`Error::LogUnavailable`] if the log did not
    /// acknowledge it within `timeout`.
    async fn send(&self, record: OutgoingRecord, timeout: Duration) -> Result<Ack, Error>;
    /// Answers whether the log is reachable now (for `/ready`).
    async fn ping(&self, timeout: Duration) -> Result<(), Error>;
}

/// The consumer's side of a group, handed to whoever owns the assigned partitions.
/// Calls are cheap and never block: the backend applies them on its own task or thread.
pub trait ConsumerControl: Send + Sync + 'static {
    /// Stops fetching a partition (records already delivered stay delivered).
    fn pause(&self, tp: &TopicPartition);
    /// Resumes fetching a partition after [`ConsumerControl::pause`].
    fn resume(&self, tp: &TopicPartition);
    /// Records `next_offset` (the first offset not yet done) as the group's position;
    /// asynchronous, the backend commits it soon.
    fn commit(&self, tp: &TopicPartition, next_offset: i64);
    /// Restarts fetching a partition from the group's last committed offset (used when the
    /// partition's actor died and its in-memory records are gone).
    fn rewind(&self, tp: &TopicPartition);
}

/// What became of a record offered to [`GroupListener::deliver`].
pub enum Delivery {
    /// Taken: the partition's owner has it (or, with no owner, it is left uncommitted for
    /// the next one, which reads it again).
    Taken,
    /// The partition is at its in-flight bound; the record comes back to be offered again.
    Full { record: Record, intake: Arc<Intake> },
}

/// Implemented by the consumer supervisor; the backend drives it like Kafka's rebalance protocol.
#[async_trait]
pub trait GroupListener: Send + Sync + 'static {
    /// Partitions now owned by this consumer; records for them follow through [`GroupListener::deliver`].
    async fn assigned(&self, partitions: Vec<TopicPartition>, control: Arc<dyn ConsumerControl>);
    /// A fetched record, in offset order within its partition. Must not block: a partition
    /// at its in-flight bound hands the record back ([`Delivery::Full`]), and the backend
    /// offers it again once its [`Intake`] has room, before any later record of the partition.
    fn deliver(&self, record: Record) -> Delivery;
    /// After [`ConsumerControl::rewind`]: `tp` is read from its committed offset again, and
    /// what is delivered from now on is that replay (called on the delivering thread or task,
    /// before the first record of the replay).
    fn rewound(&self, _tp: &TopicPartition) {}
    /// Partitions about to be taken away: drain them and answer, per partition, the offset
    /// to commit. The backend commits those synchronously before letting go.
    async fn revoked(&self, partitions: Vec<TopicPartition>) -> Vec<(TopicPartition, i64)>;
}

/// A running group membership; dropping it does not stop it, [`ConsumerHandle::stop`] does.
#[async_trait]
pub trait ConsumerHandle: Send + Sync + 'static {
    /// Leaves the group: revokes every owned partition through the listener (which drains
    /// and answers the offsets), commits them, and returns once that is done.
    async fn stop(&self) -> Result<(), Error>;
}

/// Creates producers and group members for one backend.
#[async_trait]
pub trait LogBackend: Send + Sync + 'static {
    fn producer(&self) -> Arc<dyn Producer>;
    /// Creates the topics if they do not exist, with the configured partition count.
    async fn ensure_topics(&self, topics: &[String]) -> Result<(), Error>;
    /// Joins `group` for `topics`; assignment is reported to `listener`.
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
        listener: Arc<dyn GroupListener>,
    ) -> Result<Box<dyn ConsumerHandle>, Error>;
    /// Per-partition end offsets (next offset to be written), for lag.
    async fn end_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, Error>;
    /// Per-partition start offsets (the first record retention has not deleted yet);
    /// empty for a topic that does not exist. Retention purges what indexes records below.
    async fn start_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, Error>;
}

/// Opens the configured log backend.
pub fn open(config: &crate::config::Config) -> Result<std::sync::Arc<dyn LogBackend>, Error> {
    use crate::config::LogBackendKind;
    Ok(match config.log.backend {
        LogBackendKind::Embedded => std::sync::Arc::new(embedded::EmbeddedLog::open_with(
            &config.log_dir(),
            config.log.partitions,
            &config.log.embedded,
        )?),
        LogBackendKind::Kafka => std::sync::Arc::new(kafka::KafkaLog::new(&config.log)?),
    })
}
