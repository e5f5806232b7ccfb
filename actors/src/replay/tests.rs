//! Replay jobs against a real (SQLite) store and the embedded log: transitions, validation,
//! cursor paging, resuming after a cut-short page, and the runner end to end.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::Utc;
use sea_orm::EntityTrait;

use super::*;
use crate::log::LogBackend;
use crate::log::embedded::EmbeddedLog;
use crate::store::Store;
use crate::store::dead_letter;
use crate::store::retention::tests::{dead_letter as insert_dead_letter, store};

fn admin(store: &Store, log: &EmbeddedLog) -> DeadLetterAdmin {
    DeadLetterAdmin { store: store.clone(), producer: log.producer(), max_replays: 2, timeout: Duration::from_secs(5) }
}

const SETTINGS: ReplaySettings = ReplaySettings { default_rate: 100, page_size: 3, poll: Duration::from_millis(20) };

/// `n` dead letters of topic "in" (in dead-letter partition `partition`), the ones in
/// `exhausted` replayed to the limit.
async fn dead_letters_in(store: &Store, partition: i32, n: i64, exhausted: &[i64]) {
    for offset in 0..n {
        insert_dead_letter(store, "dlq", partition, offset, Utc::now()).await;
    }
    for id in exhausted {
        let update = dead_letter::Entity::update_many()
            .col_expr(dead_letter::Column::ReplayCount, Expr::value(2))
            .filter(dead_letter::Column::Id.eq(*id))
            .exec(store.connection());
        update.await.unwrap();
    }
}

async fn dead_letters(store: &Store, n: i64, exhausted: &[i64]) {
    dead_letters_in(store, 0, n, exhausted).await;
}

async fn job(store: &Store, id: i64) -> replay_job::Model {
    Entity::find_by_id(id).one(store.connection()).await.unwrap().unwrap()
}

#[test]
fn transitions_follow_the_state_machine() {
    use ReplayAction::*;
    use ReplayStatus::*;
    assert_eq!(Pause.apply(Running), Some(Paused));
    assert_eq!(Resume.apply(Paused), Some(Running));
    assert_eq!(Cancel.apply(Running), Some(Cancelled));
    assert_eq!(Cancel.apply(Paused), Some(Cancelled));
    assert_eq!(Pause.apply(Paused), None);
    assert_eq!(Resume.apply(Running), None);
    for done in ReplayStatus::FINAL {
        assert!(done.is_final());
        for action in [Pause, Resume, Cancel] {
            assert_eq!(action.apply(done), None, "{action:?} on {done:?}");
        }
    }
    assert!(!Running.is_final() && !Paused.is_final());
}

#[test]
fn progress_counts_down_and_reaches_zero_when_done() {
    let now = Utc::now();
    let mut m = replay_job::Model {
        id: 1,
        status: ReplayStatus::Running,
        source_topic: None,
        error_class: None,
        since_ms: None,
        until_ms: None,
        max_id: 10,
        cursor: 4,
        rate: 5,
        matched: 10,
        replayed: 3,
        skipped: 1,
        failed: 0,
        last_error: None,
        lease_owner: None,
        lease_until: None,
        created_at: now,
        updated_at: now,
        finished_at: None,
    };
    assert_eq!(ReplayJobView::of(&m).remaining, 6);
    m.status = ReplayStatus::Cancelled;
    assert_eq!(ReplayJobView::of(&m).remaining, 6, "a cancelled job shows what it left");
    m.status = ReplayStatus::Completed;
    assert_eq!(ReplayJobView::of(&m).remaining, 0, "rows purged meanwhile do not keep it above 0");
}

#[tokio::test]
async fn bad_rates_and_ranges_are_refused_naming_the_field() {
    let (dir, store) = store().await;
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    let (replays, _) = service(admin(&store, &log), SETTINGS);
    let fields = |new: NewReplay| -> Vec<String> {
        match replays.validate(&new) {
            Err(Error::InvalidInput { fields }) => fields.into_iter().map(|f| f.field.into_owned()).collect(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(fields(NewReplay { rate: Some(0), ..NewReplay::default() }), vec!["rate"]);
    assert_eq!(fields(NewReplay { rate: Some(10_001), ..NewReplay::default() }), vec!["rate"]);
    let backwards = DeadLetterFilter { since_ms: Some(10), until_ms: Some(5), ..DeadLetterFilter::default() };
    assert!(replays.validate(&NewReplay { filter: backwards, rate: None }).is_ok(), "an empty range matches nothing");
    let blank = DeadLetterFilter { source_topic: Some(" ".into()), ..DeadLetterFilter::default() };
    assert_eq!(fields(NewReplay { filter: blank, rate: None }), vec!["source_topic"]);
    assert_eq!(replays.validate(&NewReplay::default()).unwrap(), 100, "the default rate");
}

#[tokio::test]
async fn pages_follow_the_cursor_and_stop_at_the_newest_id_at_creation() {
    let (dir, store) = store().await;
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    dead_letters(&store, 7, &[]).await;
    let admin = admin(&store, &log);
    let filter = DeadLetterFilter::default();
    let newest = admin.newest_id().await.unwrap();
    assert_eq!(newest, 7);
    // Indexed after the job's snapshot: never part of it.
    dead_letters_in(&store, 1, 2, &[]).await;
    let ids = |rows: Vec<dead_letter::Model>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(admin.page(&filter, 0, newest, 3).await.unwrap()), vec![1, 2, 3]);
    assert_eq!(ids(admin.page(&filter, 3, newest, 3).await.unwrap()), vec![4, 5, 6]);
    assert_eq!(ids(admin.page(&filter, 6, newest, 3).await.unwrap()), vec![7]);
    assert!(admin.page(&filter, 7, newest, 3).await.unwrap().is_empty());
    assert_eq!(admin.count_between(&filter, 0, newest).await.unwrap(), 7);
    let other = DeadLetterFilter { source_topic: Some("elsewhere".into()), ..filter };
    assert_eq!(admin.count_between(&other, 0, newest).await.unwrap(), 0);
}

#[tokio::test]
async fn a_page_cut_short_after_its_marks_is_not_sent_again() {
    let (dir, store) = store().await;
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    dead_letters(&store, 4, &[3]).await;
    let admin = admin(&store, &log);
    let (replays, _) = service(admin.clone(), SETTINGS);
    let created = replays.create(&NewReplay { rate: Some(1_000), ..NewReplay::default() }).await.unwrap();
    assert_eq!((created.matched, created.remaining, created.status), (4, 4, ReplayStatus::Running));
    // A crash after record 1 was sent and marked, before the cursor was saved.
    admin.mark_replayed(&[1]).await.unwrap();
    let row = job(&store, created.id).await;
    let args = ReplayArgs {
        admin: admin.clone(),
        interrupts: Interrupts::default(),
        page_size: 10,
        poll: Duration::from_millis(20),
        owner: "me".into(),
    };
    let rows = admin.page(&filter_of(&row), row.cursor, row.max_id, 10).await.unwrap();
    let page = run_page(&args, &row, rows, &limiter(1_000)).await;
    assert_eq!((page.cursor, page.replayed, page.skipped, page.failed), (4, 3, 1, 0));
    assert_eq!(page.sent, vec![2, 4], "record 1 is counted, not sent again; record 3 is exhausted");
    assert!(page.whole && page.held_up.is_none());
    assert_eq!(log.end_offsets("in").await.unwrap().iter().map(|(_, o)| o).sum::<i64>(), 2);
}

#[tokio::test]
async fn the_runner_completes_a_job_and_transitions_are_checked() {
    let (dir, store) = store().await;
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    dead_letters(&store, 8, &[5]).await;
    let admin = admin(&store, &log);
    let (replays, service) = service(admin.clone(), SETTINGS);
    let dry = replays.dry_run(&NewReplay::default()).await.unwrap();
    assert_eq!((dry.matched, dry.would_replay, dry.would_skip), (8, 7, 1));
    assert!(replays.list(10).await.unwrap().is_empty(), "a dry run creates nothing");

    // Paused before the runner starts: nothing moves until it is resumed.
    let created = replays.create(&NewReplay { rate: Some(500), ..NewReplay::default() }).await.unwrap();
    replays.act(created.id, ReplayAction::Pause).await.unwrap();
    let refused = replays.act(created.id, ReplayAction::Pause).await;
    assert!(matches!(refused, Err(Error::Conflict { code: "replay_transition_not_allowed", .. })), "{refused:?}");
    assert!(matches!(replays.act(999, ReplayAction::Cancel).await, Err(Error::NotFound { .. })));

    let (root, _) = ractor::Actor::spawn(
        None,
        crate::root::RootSupervisor,
        crate::root::RootArgs {
            log: std::sync::Arc::new(log.clone()),
            services: vec![std::sync::Arc::new(service)],
            groups: vec![],
            policy: crate::retry::RetryPolicy {
                base: Duration::from_millis(5),
                cap: Duration::from_millis(10),
                max_attempts: 2,
            },
            processing: crate::config::ProcessingConfig::default(),
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(replays.get(created.id).await.unwrap().unwrap().replayed, 0, "paused");

    replays.act(created.id, ReplayAction::Resume).await.unwrap();
    let mut seen = 0;
    let mut done = None;
    for _ in 0..500 {
        let view = replays.get(created.id).await.unwrap().unwrap();
        assert!(view.replayed >= seen, "progress never goes backwards");
        seen = view.replayed;
        if view.status == ReplayStatus::Completed {
            done = Some(view);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done = done.expect("the job completes");
    assert_eq!((done.replayed, done.skipped, done.failed, done.remaining), (7, 1, 0, 0));
    assert!(done.finished_at.is_some());
    assert_eq!(log.end_offsets("in").await.unwrap().iter().map(|(_, o)| o).sum::<i64>(), 7);
    let refused = replays.act(created.id, ReplayAction::Cancel).await;
    assert!(matches!(refused, Err(Error::Conflict { .. })), "a completed job cannot be cancelled");
    let claim = job(&store, created.id).await.lease_owner;
    assert_eq!(claim, None, "a finished job holds no claim");
    ractor::call!(root, |reply| crate::root::RootMsg::Shutdown { reply }).unwrap();
}

#[tokio::test]
async fn finished_jobs_are_purged_after_their_period_and_live_ones_never() {
    let (dir, store) = store().await;
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    let (replays, _) = service(admin(&store, &log), SETTINGS);
    let live = replays.create(&NewReplay::default()).await.unwrap();
    let gone = replays.create(&NewReplay::default()).await.unwrap();
    replays.act(gone.id, ReplayAction::Cancel).await.unwrap();
    let later = Utc::now() + chrono::Duration::seconds(1);
    let batch = store.purge_finished_replays_before(later, 100).await.unwrap();
    assert_eq!(batch.selected, 1);
    assert!(replays.get(gone.id).await.unwrap().is_none());
    assert!(replays.get(live.id).await.unwrap().is_some(), "a running job stays whatever its age");
}
