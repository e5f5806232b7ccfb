use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::log::{ConsumerControl, Delivery, Header, Record};

pub(super) const WAIT: Duration = Duration::from_secs(10);

pub(super) fn record(topic: &str, key: Option<&str>, payload: &str) -> OutgoingRecord {
    OutgoingRecord {
        topic: topic.to_owned(),
        key: key.map(str::to_owned),
        payload: Bytes::from(payload.to_owned()),
        headers: vec![Header { name: "trace".into(), value: payload.as_bytes().to_vec() }],
    }
}

/// A listener that records everything and can pause on delivery or answer fixed offsets.
#[derive(Default)]
pub(super) struct Recorder {
    pub(super) records: Mutex<Vec<Record>>,
    assigned: Mutex<Vec<TopicPartition>>,
    revoked: Mutex<Vec<TopicPartition>>,
    control: Mutex<Option<Arc<dyn ConsumerControl>>>,
    pause_on_deliver: AtomicBool,
    /// Partitions the backend said it rewound, each with how many records had come before.
    pub(super) rewound: Mutex<Vec<(TopicPartition, usize)>>,
    /// When set, deliveries are admitted against it, as the consumer supervisor does.
    pub(super) intake: Mutex<Option<Arc<crate::log::Intake>>>,
    /// Answered for every revoked partition; `None` answers "after the last delivered".
    pub(super) revoke_answer: Mutex<Option<i64>>,
}

impl Recorder {
    pub(super) fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    pub(super) fn control(&self) -> Arc<dyn ConsumerControl> {
        self.control.lock().unwrap().clone().unwrap()
    }
}

#[async_trait]
impl GroupListener for Recorder {
    async fn assigned(&self, partitions: Vec<TopicPartition>, control: Arc<dyn ConsumerControl>) {
        *self.assigned.lock().unwrap() = partitions;
        *self.control.lock().unwrap() = Some(control);
    }

    fn deliver(&self, record: Record) -> Delivery {
        if self.pause_on_deliver.load(Ordering::SeqCst) {
            self.control().pause(&record.tp);
        }
        if let Some(intake) = self.intake.lock().unwrap().clone()
            && !intake.try_admit()
        {
            return Delivery::Full { record, intake };
        }
        self.records.lock().unwrap().push(record);
        Delivery::Taken
    }

    fn rewound(&self, tp: &TopicPartition) {
        let before = self.records.lock().unwrap().len();
        self.rewound.lock().unwrap().push((tp.clone(), before));
    }

    async fn revoked(&self, partitions: Vec<TopicPartition>) -> Vec<(TopicPartition, i64)> {
        *self.revoked.lock().unwrap() = partitions.clone();
        let fixed = *self.revoke_answer.lock().unwrap();
        let records = self.records();
        partitions
            .into_iter()
            .map(|tp| {
                let next = records.iter().filter(|r| r.tp == tp).map(|r| r.offset + 1).max().unwrap_or(0);
                (tp, fixed.unwrap_or(next))
            })
            .collect()
    }
}

pub(super) async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(super) fn group_file(dir: &Path, group: &str) -> serde_json::Value {
    let bytes = fs::read(dir.join(GROUPS_DIR).join(format!("{group}.json"))).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn send_acks_and_reads_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    let producer = log.producer();
    for i in 0..10 {
        let key = (i % 2 == 0).then(|| format!("k{i}"));
        let ack = producer.send(record("orders", key.as_deref(), &format!("p{i}")), WAIT).await.unwrap();
        assert_eq!(ack, Ack { partition: 0, offset: i });
    }
    assert_eq!(log.end_offsets("orders").await.unwrap(), vec![(0, 10)]);

    let recorder = Arc::new(Recorder::default());
    let handle = log.subscribe("g", &["orders".to_owned()], recorder.clone()).await.unwrap();
    wait_until("10 records", || recorder.records().len() == 10).await;
    for (i, r) in recorder.records().iter().enumerate() {
        assert_eq!(r.offset, i as i64);
        assert_eq!(r.tp, TopicPartition::new("orders", 0));
        assert_eq!(r.payload, Bytes::from(format!("p{i}")));
        assert_eq!(r.key, (i % 2 == 0).then(|| format!("k{i}")));
        assert_eq!(r.header("trace"), Some(format!("p{i}").as_bytes()));
        assert!(r.timestamp_ms > 0);
    }
    // Records appended while caught up are delivered too.
    producer.send(record("orders", None, "late"), WAIT).await.unwrap();
    wait_until("the late record", || recorder.records().len() == 11).await;
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn restart_keeps_acked_records_and_committed_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(dir.path(), 2).unwrap();
        for i in 0..50 {
            log.producer().send(record("t", None, &format!("p{i}")), WAIT).await.unwrap();
        }
        let recorder = Arc::new(Recorder::default());
        *recorder.revoke_answer.lock().unwrap() = Some(10);
        let handle = log.subscribe("g", &["t".to_owned()], recorder.clone()).await.unwrap();
        wait_until("50 records", || recorder.records().len() == 50).await;
        recorder.control().commit(&TopicPartition::new("t", 0), 20);
        handle.stop().await.unwrap();
    }
    // A lower default never removes partitions (a higher one grows the topic: see below).
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    assert_eq!(log.end_offsets("t").await.unwrap(), vec![(0, 25), (1, 25)]);
    let recorder = Arc::new(Recorder::default());
    let handle = log.subscribe("g", &["t".to_owned()], recorder.clone()).await.unwrap();
    wait_until("the uncommitted records", || recorder.records().len() == 15 + 5).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let records = recorder.records();
    assert_eq!(records.len(), 20);
    let first = |p: i32| records.iter().filter(|r| r.tp.partition == p).map(|r| r.offset).min();
    assert_eq!((first(0), first(1)), (Some(20), Some(10)));
    assert_eq!(records.iter().find(|r| r.tp.partition == 0).unwrap().payload, Bytes::from("p40"));
    handle.stop().await.unwrap();
}

/// Deletes topic `t`'s journal, as if every entry in it had been checkpointed: the segments
/// alone then say what the log holds.
pub(super) fn forget_journal(dir: &Path) {
    for i in 0..2 {
        let _ = fs::remove_file(dir.join("t").join(journal::file_name(i)));
    }
}

/// Cuts a partition's active segment `frames_kept` frames (of `frame_len` bytes) from its
/// start, a few bytes into the next: what a power cut leaves of pages never written back.
fn cut_segment(dir: &Path, topic: &str, partition: i32, frame_len: u64, frames_kept: u64) {
    let file = dir.join(topic).join(partition.to_string()).join(Segment::file_name(0));
    OpenOptions::new().write(true).open(file).unwrap().set_len(frame_len * frames_kept + 5).unwrap();
}

#[tokio::test]
async fn a_segment_tail_lost_in_a_power_cut_is_restored_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = Vec::new();
    {
        let log = EmbeddedLog::open(dir.path(), 2).unwrap();
        // Concurrent sends, so that batches hold several records of both partitions.
        let sends = (0..40).map(|i| {
            let log = log.clone();
            async move { log.producer().send(record("t", Some(&format!("k{i}")), &format!("p{i:02}")), WAIT).await }
        });
        for ack in futures::future::join_all(sends).await {
            acked.push(ack.unwrap());
        }
    }
    let ends = |p: i32| acked.iter().filter(|a| a.partition == p).count() as i64;
    assert!(ends(0) > 2 && ends(1) > 2, "both partitions hold records: {acked:?}");
    let frame_len = fs::metadata(dir.path().join("t").join("0").join(Segment::file_name(0))).unwrap().len()
        / u64::try_from(ends(0)).unwrap();
    cut_segment(dir.path(), "t", 0, frame_len, 1);
    cut_segment(dir.path(), "t", 1, frame_len, 0);

    let log = EmbeddedLog::open(dir.path(), 2).unwrap();
    assert_eq!(log.end_offsets("t").await.unwrap(), vec![(0, ends(0)), (1, ends(1))]);
    let recorder = Arc::new(Recorder::default());
    let handle = log.subscribe("g", &["t".to_owned()], recorder.clone()).await.unwrap();
    wait_until("every acknowledged record", || recorder.records().len() == acked.len()).await;
    for p in 0..2 {
        let offsets: Vec<i64> = recorder.records().iter().filter(|r| r.tp.partition == p).map(|r| r.offset).collect();
        assert_eq!(offsets, (0..ends(p)).collect::<Vec<_>>(), "partition {p}");
    }
    let mut payloads: Vec<Bytes> = recorder.records().into_iter().map(|r| r.payload).collect();
    payloads.sort();
    assert_eq!(payloads, (0..40).map(|i| Bytes::from(format!("p{i:02}"))).collect::<Vec<_>>());
    handle.stop().await.unwrap();
    // Appends go on after the restored records, and the restored log reopens as it is.
    assert_eq!(log.producer().send(record("t", Some("k0"), "after"), WAIT).await.unwrap().offset, {
        let p = acked[0].partition;
        ends(p)
    });
    drop(log);
    let log = EmbeddedLog::open(dir.path(), 2).unwrap();
    let after = log.end_offsets("t").await.unwrap();
    assert_eq!(after.iter().map(|(_, end)| end).sum::<i64>(), 41);
}

#[tokio::test]
async fn the_journal_is_reused_after_a_checkpoint_and_a_loss_it_cannot_restore_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedLogConfig { journal_bytes: 4096, ..EmbeddedLogConfig::default() };
    let frame_len;
    {
        let log = EmbeddedLog::open_with(dir.path(), 1, &config).unwrap();
        for i in 0..200 {
            log.producer().send(record("t", Some("k"), &format!("{i:0>100}")), WAIT).await.unwrap();
        }
        frame_len = fs::metadata(dir.path().join("t").join("0").join(Segment::file_name(0))).unwrap().len() / 200;
        // 200 frames went through it, and each file stays within its size and what came
        // while a checkpoint ran.
        assert!(200 * frame_len > 4 * 4096);
        for i in 0..2 {
            let len = fs::metadata(dir.path().join("t").join(journal::file_name(i))).unwrap().len();
            assert!(len > 0 && len < 4 * 4096, "journal file {i}: {len} bytes");
        }
    }
    // Records checkpointed out of the journal's round are the segment's alone: losing them
    // is corruption, named, and never a silent gap.
    cut_segment(dir.path(), "t", 0, frame_len, 3);
    let result = EmbeddedLog::open_with(dir.path(), 1, &config);
    assert!(matches!(&result, Err(Error::CorruptLog { path, .. }) if path.ends_with(".wal")), "{result:?}");
}

#[tokio::test]
async fn torn_tail_is_truncated_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t").join("0").join(Segment::file_name(0));
    {
        let log = EmbeddedLog::open(dir.path(), 1).unwrap();
        for i in 0..5 {
            log.producer().send(record("t", Some("k"), &format!("p{i}")), WAIT).await.unwrap();
        }
    }
    let good_len = fs::metadata(&file).unwrap().len();
    let frame_len = good_len / 5;

    // Garbage after the last frame (a torn header and body).
    OpenOptions::new().append(true).open(&file).unwrap().write_all(&[7, 0, 0, 0, 1, 2, 3]).unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    assert_eq!(fs::metadata(&file).unwrap().len(), good_len);
    assert_eq!(log.end_offsets("t").await.unwrap(), vec![(0, 5)]);
    drop(log);

    // A last frame cut in the middle. (Without the journal: it would restore the frame, see
    // `a_segment_tail_lost_in_a_power_cut_is_restored_from_the_journal`.)
    forget_journal(dir.path());
    OpenOptions::new().write(true).open(&file).unwrap().set_len(good_len - 3).unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    assert_eq!(log.end_offsets("t").await.unwrap(), vec![(0, 4)]);
    assert_eq!(fs::metadata(&file).unwrap().len(), good_len - frame_len);
    drop(log);

    // A flipped byte in the last frame's body.
    forget_journal(dir.path());
    let mut bytes = fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&file, &bytes).unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    assert_eq!(log.end_offsets("t").await.unwrap(), vec![(0, 3)]);

    let ack = log.producer().send(record("t", Some("k"), "after"), WAIT).await.unwrap();
    assert_eq!(ack.offset, 3);
    let recorder = Arc::new(Recorder::default());
    let handle = log.subscribe("g", &["t".to_owned()], recorder.clone()).await.unwrap();
    wait_until("4 records", || recorder.records().len() == 4).await;
    let payloads: Vec<Bytes> = recorder.records().into_iter().map(|r| r.payload).collect();
    assert_eq!(payloads, vec![Bytes::from("p0"), Bytes::from("p1"), Bytes::from("p2"), Bytes::from("after")]);
    handle.stop().await.unwrap();
}

#[test]
fn murmur2_matches_kafka() {
    // From Kafka's UtilsTest.testMurmur2.
    let cases: [(&str, i32); 6] = [
        ("21", -973_932_308),
        ("foobar", -790_332_482),
        ("a-little-bit-long-string", -985_981_536),
        ("a-little-bit-longer-string", -1_486_304_829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
        ("abc", 479_470_107),
    ];
    for (input, expected) in cases {
        assert_eq!(murmur2(input.as_bytes()) as i32, expected, "{input}");
    }
}

#[tokio::test]
async fn keyed_partitioning_is_stable() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let mut first_run = Vec::new();
    {
        let log = EmbeddedLog::open(dir.path(), 8).unwrap();
        for key in keys {
            let a = log.producer().send(record("t", Some(key), "x"), WAIT).await.unwrap();
            let b = log.producer().send(record("t", Some(key), "y"), WAIT).await.unwrap();
            assert_eq!(a.partition, b.partition);
            assert_eq!(a.partition as usize, partition_for_key(key.as_bytes(), 8));
            first_run.push(a.partition);
        }
    }
    let log = EmbeddedLog::open(dir.path(), 8).unwrap();
    for (key, partition) in keys.iter().zip(first_run) {
        let ack = log.producer().send(record("t", Some(key), "z"), WAIT).await.unwrap();
        assert_eq!(ack.partition, partition);
    }
    // Unkeyed records spread over every partition.
    let mut seen = BTreeSet::new();
    for _ in 0..8 {
        seen.insert(log.producer().send(record("u", None, "x"), WAIT).await.unwrap().partition);
    }
    assert_eq!(seen.len(), 8);
}

#[tokio::test]
async fn pause_stops_delivery_and_resume_continues() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    for i in 0..20 {
        log.producer().send(record("t", None, &format!("p{i}")), WAIT).await.unwrap();
    }
    let recorder = Arc::new(Recorder::default());
    recorder.pause_on_deliver.store(true, Ordering::SeqCst);
    let handle = log.subscribe("g", &["t".to_owned()], recorder.clone()).await.unwrap();
    wait_until("the first record", || recorder.records().len() == 1).await;
    log.producer().send(record("t", None, "more"), WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(recorder.records().len(), 1, "a paused partition delivered");

    recorder.pause_on_deliver.store(false, Ordering::SeqCst);
    recorder.control().resume(&TopicPartition::new("t", 0));
    wait_until("the rest", || recorder.records().len() == 21).await;
    let offsets: Vec<i64> = recorder.records().iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..21).collect::<Vec<_>>());
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn a_full_partition_waits_for_room_and_a_rewind_drops_what_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    for i in 0..10 {
        log.producer().send(record("t", None, &format!("p{i}")), WAIT).await.unwrap();
    }
    let recorder = Arc::new(Recorder::default());
    let intake = Arc::new(crate::log::Intake::new(3));
    *recorder.intake.lock().unwrap() = Some(intake.clone());
    let handle = log.subscribe("g", &["t".to_owned()], recorder.clone()).await.unwrap();
    wait_until("the bound", || recorder.records().len() == 3).await;
    intake.done(2);
    wait_until("two more", || recorder.records().len() == 5).await;
    assert_eq!(intake.outstanding(), 3, "never more than the bound");
    // The owner is replaced while the partition is full: the next one reads from the commit.
    let tp = TopicPartition::new("t", 0);
    recorder.control().commit(&tp, 2);
    *recorder.intake.lock().unwrap() = None;
    recorder.control().rewind(&tp);
    wait_until("the redelivery", || recorder.records().len() == 13).await;
    let offsets: Vec<i64> = recorder.records().iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4, 2, 3, 4, 5, 6, 7, 8, 9], "in order, nothing skipped");
    assert_eq!(*recorder.rewound.lock().unwrap(), [(tp.clone(), 5)], "announced before the replay's first record");
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn rewind_redelivers_from_the_committed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    for i in 0..10 {
        log.producer().send(record("t", None, &format!("p{i}")), WAIT).await.unwrap();
    }
    let recorder = Arc::new(Recorder::default());
    let handle = log.subscribe("g", &["t".to_owned()], recorder.clone()).await.unwrap();
    wait_until("10 records", || recorder.records().len() == 10).await;
    let tp = TopicPartition::new("t", 0);
    recorder.control().commit(&tp, 4);
    recorder.control().rewind(&tp);
    wait_until("the redelivery", || recorder.records().len() == 16).await;
    let offsets: Vec<i64> = recorder.records().iter().map(|r| r.offset).collect();
    assert_eq!(offsets[10..], [4, 5, 6, 7, 8, 9]);
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn stop_revokes_commits_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 2).unwrap();
    for i in 0..10 {
        log.producer().send(record("t", None, &format!("p{i}")), WAIT).await.unwrap();
    }
    let recorder = Arc::new(Recorder::default());
    let topics = ["t".to_owned(), "fresh".to_owned()];
    let handle = log.subscribe("g", &topics, recorder.clone()).await.unwrap();
    let all: Vec<TopicPartition> =
        ["fresh", "t"].iter().flat_map(|t| (0..2).map(|p| TopicPartition::new(*t, p))).collect();
    assert_eq!(*recorder.assigned.lock().unwrap(), all);
    wait_until("10 records", || recorder.records().len() == 10).await;

    // A second member of the same group is refused while this one runs.
    let second = log.subscribe("g", &topics, Arc::new(Recorder::default())).await;
    assert!(matches!(second, Err(Error::Config { key: "group", .. })));

    // Commits never move backwards, neither from the control nor from revocation.
    let control = recorder.control();
    control.commit(&TopicPartition::new("t", 0), 5);
    control.commit(&TopicPartition::new("t", 0), 3);
    *recorder.revoke_answer.lock().unwrap() = Some(4);
    handle.stop().await.unwrap();
    handle.stop().await.unwrap();
    assert_eq!(*recorder.revoked.lock().unwrap(), all);

    let file = group_file(dir.path(), "g");
    let offset = |topic: &str, partition: i64| {
        file["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["topic"] == topic && o["partition"] == partition)
            .map(|o| o["offset"].as_i64().unwrap())
    };
    assert_eq!(offset("t", 0), Some(5));
    assert_eq!(offset("t", 1), Some(4));
    assert_eq!(offset("fresh", 0), Some(4));

    // Once stopped, the group can be joined again and resumes at the committed offsets.
    let recorder = Arc::new(Recorder::default());
    let handle = log.subscribe("g", &topics, recorder.clone()).await.unwrap();
    wait_until("the uncommitted records", || recorder.records().len() == 1).await;
    assert_eq!(recorder.records()[0].offset, 4);
    assert_eq!(recorder.records()[0].tp, TopicPartition::new("t", 1));
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn commits_are_flushed_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    let recorder = Arc::new(Recorder::default());
    let handle = log.subscribe("g", &["t".to_owned()], recorder.clone()).await.unwrap();
    recorder.control().commit(&TopicPartition::new("t", 0), 7);
    // Joining wrote the starting offset at once; the commit follows in the background.
    assert_eq!(group_file(dir.path(), "g")["offsets"][0]["offset"], 0);
    wait_until("the commit in the group file", || group_file(dir.path(), "g")["offsets"][0]["offset"] == 7).await;
    handle.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_get_unique_gapless_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 4).unwrap();
    let senders: Vec<_> = (0..20)
        .map(|task| {
            let producer = log.producer();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in 0..200 {
                    let key = (i % 3 != 0).then(|| format!("key-{task}-{i}"));
                    acks.push(producer.send(record("t", key.as_deref(), "x"), WAIT).await.unwrap());
                }
                acks
            })
        })
        .collect();
    let mut per_partition: HashMap<i32, Vec<i64>> = HashMap::new();
    for sender in senders {
        for ack in sender.await.unwrap() {
            per_partition.entry(ack.partition).or_default().push(ack.offset);
        }
    }
    let mut total = 0;
    for (partition, mut offsets) in per_partition {
        offsets.sort_unstable();
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>(), "partition {partition}");
        total += offsets.len();
    }
    assert_eq!(total, 4000);
    let ends: i64 = log.end_offsets("t").await.unwrap().iter().map(|(_, end)| end).sum();
    assert_eq!(ends, 4000);
}

#[tokio::test]
async fn ensure_topics_creates_partition_directories() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 3).unwrap();
    log.ensure_topics(&["a".to_owned(), "b".to_owned()]).await.unwrap();
    for p in 0..3 {
        assert!(dir.path().join("b").join(p.to_string()).join(Segment::file_name(0)).exists());
    }
    assert_eq!(log.end_offsets("a").await.unwrap(), vec![(0, 0), (1, 0), (2, 0)]);
    assert!(log.end_offsets("missing").await.unwrap().is_empty());
    for bad in ["", "..", "a/b", "_groups", "x~creating"] {
        assert!(matches!(log.ensure_topics(&[bad.to_owned()]).await, Err(Error::Config { .. })), "{bad:?}");
    }
    log.producer().ping(WAIT).await.unwrap();
}

#[tokio::test]
async fn send_that_is_not_acked_in_time_fails() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    log.ensure_topics(&["t".to_owned()]).await.unwrap();
    // Swap in a queue nobody drains, as if the disk hung in fsync.
    let (appends, _stalled) = mpsc::channel(1);
    let partitions = log.inner.topic("t").unwrap().partitions.clone();
    let topic = Topic { partitions, appends, round_robin: AtomicUsize::new(0) };
    log.inner.topics.write().unwrap().insert("t".to_owned(), Arc::new(topic));
    let result = log.producer().send(record("t", None, "x"), Duration::from_millis(50)).await;
    assert!(matches!(result, Err(Error::LogUnavailable { op: "send", .. })), "{result:?}");
}

#[test]
fn a_directory_is_opened_by_one_log_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    let options = Options { lock_wait: Duration::ZERO, ..Options::new(&EmbeddedLogConfig::default()) };
    let second = EmbeddedLog::open_opts(dir.path(), 1, options);
    assert!(matches!(second, Err(Error::Io { .. })));
    drop(log);
    EmbeddedLog::open(dir.path(), 1).unwrap();
}

#[tokio::test]
async fn a_topic_grows_to_the_configured_partitions_and_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(dir.path(), 2).unwrap();
        for i in 0..6 {
            log.producer().send(record("t", Some(&format!("k{i}")), "p"), WAIT).await.unwrap();
        }
    }
    let log = EmbeddedLog::open(dir.path(), 4).unwrap();
    let ends = log.end_offsets("t").await.unwrap();
    assert_eq!(ends.len(), 4, "grown to 4 partitions: {ends:?}");
    assert_eq!(ends.iter().map(|(_, end)| end).sum::<i64>(), 6, "nothing lost: {ends:?}");
    assert_eq!(&ends[2..], &[(2, 0), (3, 0)], "new partitions start empty");
    drop(log);
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    assert_eq!(log.end_offsets("t").await.unwrap().len(), 4, "partitions are never removed");
}
