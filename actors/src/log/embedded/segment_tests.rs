//! Segments, retention, the disk budget, corruption and crash states of a roll.

use std::io::Write;
use std::sync::atomic::AtomicI64;

use bytes::Bytes;

use super::tests::{Recorder, WAIT, forget_journal, group_file, wait_until};
use super::*;
use crate::log::Record;

const T0: i64 = 1_700_000_000_000;
/// With a 100-byte payload, no key and no header, a frame is 125 bytes: 8 fit in 1024.
const FRAME: u64 = 125;

fn small() -> EmbeddedLogConfig {
    EmbeddedLogConfig {
        segment_bytes: 1024,
        segment_ms: 3_600_000,
        retention_ms: 0,
        retention_bytes: 0,
        max_disk_bytes: 0,
        retention_check_ms: 3_600_000,
        // Small, so that these tests also pass through checkpoints.
        journal_bytes: 4096,
        topics: Default::default(),
    }
}

fn open(dir: &Path, config: EmbeddedLogConfig, clock: &Arc<AtomicI64>) -> Result<EmbeddedLog, Error> {
    let clock = Arc::clone(clock);
    let options = Options {
        config,
        clock: Arc::new(move || clock.load(Ordering::SeqCst)),
        lock_wait: LOCK_WAIT,
        background_retention: false,
    };
    EmbeddedLog::open_opts(dir, 1, options)
}

fn payload(i: i64) -> String {
    format!("{i:0>100}")
}

async fn send(log: &EmbeddedLog, i: i64) -> Result<Ack, Error> {
    let record = OutgoingRecord { topic: "t".into(), key: None, payload: Bytes::from(payload(i)), headers: Vec::new() };
    log.producer().send(record, WAIT).await
}

async fn fill(log: &EmbeddedLog, range: std::ops::Range<i64>) {
    for i in range {
        assert_eq!(send(log, i).await.unwrap().offset, i);
    }
}

fn partition(log: &EmbeddedLog) -> Arc<Partition> {
    Arc::clone(&log.inner.topic("t").unwrap().partitions[0])
}

fn segment_path(dir: &Path, base: i64) -> PathBuf {
    dir.join("t").join("0").join(Segment::file_name(base))
}

fn bases(dir: &Path) -> Vec<i64> {
    let mut bases: Vec<i64> = fs::read_dir(dir.join("t").join("0"))
        .unwrap()
        .filter_map(|e| Segment::parse_name(e.unwrap().file_name().to_str().unwrap()))
        .collect();
    bases.sort_unstable();
    bases
}

fn read_all(partition: &Partition) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::new();
    loop {
        let from = records.last().map_or(0, |r| r.offset + 1);
        let batch = partition.read_batch(from, 3, u64::MAX).unwrap();
        if batch.is_empty() {
            return records;
        }
        records.extend(batch);
    }
}

fn assert_records(records: &[Record], offsets: std::ops::Range<i64>) {
    let got: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(got, offsets.collect::<Vec<_>>());
    for r in records {
        assert_eq!(r.payload, Bytes::from(payload(r.offset)), "offset {}", r.offset);
    }
}

fn clock() -> Arc<AtomicI64> {
    Arc::new(AtomicI64::new(T0))
}

#[tokio::test]
async fn segments_roll_by_size_and_reads_cross_them_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small(), &clock()).unwrap();
    fill(&log, 0..50).await;
    assert_eq!(bases(dir.path()), vec![0, 8, 16, 24, 32, 40, 48]);
    assert_eq!(fs::metadata(segment_path(dir.path(), 0)).unwrap().len(), 8 * FRAME);
    let p = partition(&log);
    // A batch starts anywhere in a segment and stops at its end.
    let batch: Vec<i64> = p.read_batch(5, 100, u64::MAX).unwrap().iter().map(|r| r.offset).collect();
    assert_eq!(batch, vec![5, 6, 7]);
    assert_records(&read_all(&p), 0..50);

    let recorder = Arc::new(Recorder::default());
    let handle = log.subscribe("g", &["t".to_owned()], recorder.clone()).await.unwrap();
    wait_until("50 records", || recorder.records().len() == 50).await;
    assert_records(&recorder.records(), 0..50);
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let log = open(dir.path(), EmbeddedLogConfig { segment_ms: 1000, ..small() }, &clock).unwrap();
    fill(&log, 0..2).await;
    clock.fetch_add(999, Ordering::SeqCst);
    fill(&log, 2..3).await;
    assert_eq!(bases(dir.path()), vec![0]);
    clock.fetch_add(1, Ordering::SeqCst);
    fill(&log, 3..4).await;
    assert_eq!(bases(dir.path()), vec![0, 3]);
    assert_records(&read_all(&partition(&log)), 0..4);
}

#[tokio::test]
async fn the_index_is_sparse_and_finds_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedLogConfig { segment_bytes: 1 << 20, ..small() };
    let log = open(dir.path(), config, &clock()).unwrap();
    fill(&log, 0..400).await;
    let p = partition(&log);
    let segments = p.segments();
    assert_eq!(segments.len(), 1);
    // One entry per 4 KiB, not one per record.
    let expected = (400 * FRAME).div_ceil(segment::INDEX_INTERVAL) as usize;
    assert!((expected - 1..=expected).contains(&segments[0].index_len()), "{}", segments[0].index_len());
    for from in (0..400).step_by(37) {
        let batch = p.read_batch(from, 2, u64::MAX).unwrap();
        assert_records(&batch, from..from + 2);
    }
}

#[tokio::test]
async fn a_record_larger_than_a_read_chunk_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small(), &clock()).unwrap();
    let big = Bytes::from(vec![7u8; 200_000]);
    let record = OutgoingRecord { topic: "t".into(), key: Some("k".into()), payload: big.clone(), headers: Vec::new() };
    log.producer().send(record, WAIT).await.unwrap();
    fill(&log, 1..3).await;
    assert_eq!(bases(dir.path()), vec![0, 1]);
    let records = partition(&log).read_batch(0, 10, u64::MAX).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload, big);
}

#[tokio::test]
async fn retention_deletes_sealed_segments_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let log = open(dir.path(), EmbeddedLogConfig { retention_ms: 10_000, ..small() }, &clock).unwrap();
    fill(&log, 0..8).await;
    clock.store(T0 + 5_000, Ordering::SeqCst);
    fill(&log, 8..20).await;
    assert_eq!(log.inner.run_retention(T0 + 10_000), retention::Deleted::default());
    let deleted = log.inner.run_retention(T0 + 10_001);
    assert_eq!(deleted, retention::Deleted { segments: 1, bytes: 8 * FRAME });
    assert_eq!(bases(dir.path()), vec![8, 16]);
    assert_eq!(log.start_offsets("t"), vec![(0, 8)]);
    // The active segment stays, however old.
    log.inner.run_retention(T0 + 1_000_000);
    assert_eq!(bases(dir.path()), vec![16]);
    assert_eq!(log.start_offsets("t"), vec![(0, 16)]);
    assert_records(&read_all(&partition(&log)), 16..20);
}

#[tokio::test]
async fn retention_deletes_sealed_segments_by_size_and_reopening_keeps_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let config = EmbeddedLogConfig { retention_bytes: 2048, ..small() };
    {
        let log = open(dir.path(), config.clone(), &clock).unwrap();
        fill(&log, 0..40).await;
        assert_eq!(bases(dir.path()), vec![0, 8, 16, 24, 32]);
        let deleted = log.inner.run_retention(T0);
        assert_eq!(deleted.segments, 3);
        assert_eq!(bases(dir.path()), vec![24, 32]);
    }
    let log = open(dir.path(), config, &clock).unwrap();
    assert_eq!(log.start_offsets("t"), vec![(0, 24)]);
    assert_eq!(log.end_offsets("t").await.unwrap(), vec![(0, 40)]);
    fill(&log, 40..41).await;
    assert_records(&read_all(&partition(&log)), 24..41);
    assert!(log.start_offsets("missing").is_empty());
}

#[tokio::test]
async fn retention_keeps_what_any_group_has_not_committed_even_one_not_running() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join(GROUPS_DIR)).unwrap();
    let idle = r#"{"group": "idle", "offsets": [{"topic": "t", "partition": 0, "offset": 3}]}"#;
    fs::write(dir.path().join(GROUPS_DIR).join("idle.json"), idle).unwrap();
    let clock = clock();
    let log = open(dir.path(), EmbeddedLogConfig { retention_ms: 1_000, ..small() }, &clock).unwrap();
    fill(&log, 0..40).await;
    let tp = TopicPartition::new("t", 0);

    let recorder = Arc::new(Recorder::default());
    *recorder.revoke_answer.lock().unwrap() = Some(20);
    let handle = log.subscribe("g", &["t".to_owned()], recorder.clone()).await.unwrap();
    wait_until("40 records", || recorder.records().len() == 40).await;
    handle.stop().await.unwrap();

    // "idle" has no member, only its file: it still needs offset 3 on.
    assert_eq!(log.inner.run_retention(T0 + 60_000), retention::Deleted::default());
    assert_eq!(log.start_offsets("t"), vec![(0, 0)]);

    let recorder = Arc::new(Recorder::default());
    *recorder.revoke_answer.lock().unwrap() = Some(30);
    let handle = log.subscribe("idle", &["t".to_owned()], recorder.clone()).await.unwrap();
    wait_until("the idle group's records", || recorder.records().len() == 37).await;
    assert_eq!(recorder.records()[0].offset, 3);
    handle.stop().await.unwrap();

    // Now "g" at 20 is the lowest: [16, 24) holds uncommitted records and stays.
    let deleted = log.inner.run_retention(T0 + 60_000);
    assert_eq!(deleted.segments, 2);
    assert_eq!(log.start_offsets("t"), vec![(0, 16)]);
    assert_eq!(group_file(dir.path(), "g")["offsets"][0]["offset"], 20);

    // A group that is new after the deletion starts at the log start.
    let recorder = Arc::new(Recorder::default());
    let handle = log.subscribe("fresh", &["t".to_owned()], recorder.clone()).await.unwrap();
    wait_until("the retained records", || recorder.records().len() == 24).await;
    assert_records(&recorder.records(), 16..40);
    assert_eq!(recorder.records()[0].tp, tp);
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn a_full_budget_refuses_appends_loses_nothing_and_frees_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let log = open(dir.path(), EmbeddedLogConfig { max_disk_bytes: 4096, ..small() }, &clock).unwrap();
    let recorder = Arc::new(Recorder::default());
    let handle = log.subscribe("g", &["t".to_owned()], recorder.clone()).await.unwrap();
    let mut acked = Vec::new();
    let full = loop {
        match send(&log, acked.len() as i64).await {
            Ok(ack) => acked.push(ack.offset),
            Err(e) => break e,
        }
        assert!(acked.len() < 100, "the budget never filled");
    };
    let Error::LogFull { topic, used_bytes, budget_bytes } = &full else { panic!("{full:?}") };
    assert_eq!((topic.as_str(), *budget_bytes), ("t", 4096));
    assert!(*used_bytes <= 4096 && used_bytes + FRAME > 4096, "{used_bytes}");
    assert_eq!(acked, (0..32).collect::<Vec<_>>());

    // Nothing is committed: retention may not help, appends keep failing.
    assert_eq!(log.inner.run_retention(T0), retention::Deleted::default());
    assert!(matches!(send(&log, 32).await, Err(Error::LogFull { .. })));

    wait_until("every acked record", || recorder.records().len() == 32).await;
    recorder.control().commit(&TopicPartition::new("t", 0), 32);
    // Retention goes by what the group file durably says, so it frees space once the flusher wrote it.
    wait_until("retention to free space", || log.inner.run_retention(T0).segments >= 1).await;
    assert_eq!(group_file(dir.path(), "g")["offsets"][0]["offset"], 32);
    assert_eq!(send(&log, 32).await.unwrap().offset, 32);
    wait_until("the record after the refusal", || recorder.records().len() == 33).await;
    assert_records(&recorder.records(), 0..33);
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn a_flipped_byte_in_a_sealed_segment_fails_open_naming_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    drop({
        let log = open(dir.path(), small(), &clock).unwrap();
        fill(&log, 0..20).await;
        log
    });
    let path = segment_path(dir.path(), 8);
    let mut bytes = fs::read(&path).unwrap();
    bytes[(2 * FRAME + 20) as usize] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    match open(dir.path(), small(), &clock) {
        Err(Error::CorruptLog { path: named, position }) => {
            assert!(named.ends_with("00000000000000000008.log"), "{named}");
            assert_eq!(position, 2 * FRAME);
        }
        other => panic!("expected CorruptLog, got {other:?}"),
    }
    // Nothing was cut.
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[tokio::test]
async fn a_torn_tail_of_the_active_segment_is_still_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    drop({
        let log = open(dir.path(), small(), &clock).unwrap();
        fill(&log, 0..20).await;
        log
    });
    let path = segment_path(dir.path(), 16);
    let good = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&[9, 0, 0, 0, 1]).unwrap();
    let log = open(dir.path(), small(), &clock).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), good);
    fill(&log, 20..21).await;
    assert_records(&read_all(&partition(&log)), 0..21);
}

/// Writes 16 records: segments 0 and 8, the second full and active.
async fn two_full_segments(dir: &Path, clock: &Arc<AtomicI64>) {
    let log = open(dir, small(), clock).unwrap();
    fill(&log, 0..16).await;
    assert_eq!(bases(dir), vec![0, 8]);
}

#[tokio::test]
async fn a_crash_during_a_roll_loses_nothing_acknowledged() {
    let clock = clock();
    // Crash after the new segment was created, before anything was written to it.
    let dir = tempfile::tempdir().unwrap();
    two_full_segments(dir.path(), &clock).await;
    fs::File::create(segment_path(dir.path(), 16)).unwrap();
    let log = open(dir.path(), small(), &clock).unwrap();
    assert_eq!(bases(dir.path()), vec![0, 8]);
    assert_records(&read_all(&partition(&log)), 0..16);
    fill(&log, 16..17).await;
    assert_eq!(bases(dir.path()), vec![0, 8, 16]);
    drop(log);

    // Crash while the first (unacknowledged) batch was half written to the new segment.
    let dir = tempfile::tempdir().unwrap();
    two_full_segments(dir.path(), &clock).await;
    let frame = frame::encode_frame(T0, None, &[], payload(16).as_bytes()).unwrap();
    fs::write(segment_path(dir.path(), 16), &frame[..60]).unwrap();
    let log = open(dir.path(), small(), &clock).unwrap();
    assert_records(&read_all(&partition(&log)), 0..16);
    fill(&log, 16..17).await;
    assert_records(&read_all(&partition(&log)), 0..17);
    drop(log);

    // The sealed segment's tail not on disk and the new one empty. A roll fsyncs the old
    // segment before the new one exists, so the torn frame was never acknowledged: it is
    // cut like any active tail (the journal, which would hold it had it been acknowledged,
    // is gone here).
    let dir = tempfile::tempdir().unwrap();
    two_full_segments(dir.path(), &clock).await;
    forget_journal(dir.path());
    let old = segment_path(dir.path(), 8);
    fs::OpenOptions::new().write(true).open(&old).unwrap().set_len(8 * FRAME - 3).unwrap();
    fs::File::create(segment_path(dir.path(), 16)).unwrap();
    let log = open(dir.path(), small(), &clock).unwrap();
    assert_records(&read_all(&partition(&log)), 0..15);
    fill(&log, 15..16).await;
    drop(log);

    // A torn sealed segment with records after it cannot come from a roll: corruption.
    let dir = tempfile::tempdir().unwrap();
    two_full_segments(dir.path(), &clock).await;
    let old = segment_path(dir.path(), 8);
    fs::OpenOptions::new().write(true).open(&old).unwrap().set_len(8 * FRAME - 3).unwrap();
    fs::write(segment_path(dir.path(), 16), &frame).unwrap();
    let result = open(dir.path(), small(), &clock);
    assert!(
        matches!(&result, Err(Error::CorruptLog { path, position }) if path.ends_with("00000000000000000008.log") && *position == 7 * FRAME),
        "{result:?}"
    );
}

#[tokio::test]
async fn the_single_file_layout_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let topic = dir.path().join("t");
    fs::create_dir_all(&topic).unwrap();
    let mut old = Vec::new();
    for i in 0..3 {
        old.extend(frame::encode_frame(T0, None, &[], payload(i).as_bytes()).unwrap());
    }
    old.extend([1, 2, 3]); // a torn tail, cut as before
    fs::write(topic.join("0.log"), &old).unwrap();
    fs::write(topic.join("1.log"), b"").unwrap();

    let log = open(dir.path(), small(), &clock()).unwrap();
    assert_eq!(log.end_offsets("t").await.unwrap(), vec![(0, 3), (1, 0)]);
    assert!(!topic.join("0.log").exists() && !topic.join("1.log").exists());
    assert!(topic.join("1").join(Segment::file_name(0)).exists());
    assert_records(&read_all(&partition(&log)), 0..3);
    let record = OutgoingRecord { topic: "t".into(), key: None, payload: Bytes::from(payload(3)), headers: Vec::new() };
    let mut acks = Vec::new();
    for _ in 0..2 {
        acks.push(log.producer().send(record.clone(), WAIT).await.unwrap());
    }
    assert!(acks.contains(&Ack { partition: 0, offset: 3 }), "{acks:?}");
    assert_records(&read_all(&partition(&log)), 0..4);
}
