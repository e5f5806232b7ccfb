//! Cancelling runs against a real (SQLite) store: a cancel is never overwritten by the run's
//! own writes, and a cancelled run is never picked up again.

#![allow(clippy::unwrap_used)]

use chrono::Utc;

use super::*;
use crate::states::{StepKind, StepStatus, TriggerKind};
use conveyor_actors::config::Config;
use conveyor_actors::store::Store;

async fn store() -> (tempfile::TempDir, WorkflowStore) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
    let store = WorkflowStore::new(Store::connect(&config).await.unwrap());
    store.migrate(crate::migrations::with_runtime()).await.unwrap();
    (dir, store)
}

fn running(id: &str) -> run::Model {
    let now = Utc::now();
    run::Model {
        id: id.into(),
        workflow_id: "wf".into(),
        owner: "alice".into(),
        status: RunStatus::Running,
        trigger_kind: TriggerKind::Manual,
        input: "{}".into(),
        spec: "{}".into(),
        step_index: 0,
        next_at: now - chrono::Duration::seconds(1),
        lease_until: None,
        resumes: 0,
        error: None,
        created_at: now,
        started_at: Some(now),
        finished_at: None,
        updated_at: now,
    }
}

fn step_row(run_id: &str) -> step::Model {
    step::Model {
        run_id: run_id.into(),
        idx: 0,
        name: "call".into(),
        kind: StepKind::Http,
        status: StepStatus::Succeeded,
        attempts: 1,
        response_code: Some(200),
        output: None,
        error: None,
        started_at: Some(Utc::now()),
        finished_at: Some(Utc::now()),
        duration_ms: Some(1),
    }
}

#[tokio::test]
async fn a_cancelled_run_stays_cancelled_and_is_never_picked_up_again() {
    let (_dir, store) = store().await;
    let run = running("r1");
    assert!(store.insert_run(run.clone()).await.unwrap());
    assert!(store.save_run(run.clone(), false).await.unwrap(), "a live run is written");
    assert!(store.cancel_run("r1", Utc::now()).await.unwrap());
    assert!(!store.cancel_run("r1", Utc::now()).await.unwrap(), "a second cancel finds nothing live");

    // The step in flight finishes: its row is kept, but the run does not move on.
    let mut moved = run.clone();
    moved.step_index = 1;
    assert!(!store.checkpoint(step_row("r1"), Some(moved.clone())).await.unwrap());
    assert!(!store.save_run(moved, true).await.unwrap(), "the run's own write never undoes a cancel");
    let stored = store.get_run("r1").await.unwrap().unwrap();
    assert_eq!((stored.status, stored.step_index), (RunStatus::Cancelled, 0));
    assert!(stored.finished_at.is_some() && stored.lease_until.is_none());
    assert_eq!(store.run_steps("r1").await.unwrap().len(), 1);

    let now = Utc::now();
    assert!(store.due_runs(now, 10).await.unwrap().is_empty(), "not due again");
    assert!(!store.lease_run("r1", now, now + chrono::Duration::seconds(30), false).await.unwrap());
    assert!(!store.lease_run("r1", now, now + chrono::Duration::seconds(30), true).await.unwrap());
    assert_eq!(store.run_counts(None).await.unwrap().cancelled, 1);
}

#[tokio::test]
async fn a_finished_or_unknown_run_cannot_be_cancelled() {
    let (_dir, store) = store().await;
    let mut done = running("r2");
    done.status = RunStatus::Succeeded;
    assert!(store.insert_run(done).await.unwrap());
    assert!(!store.cancel_run("r2", Utc::now()).await.unwrap());
    assert_eq!(store.get_run("r2").await.unwrap().unwrap().status, RunStatus::Succeeded);
    assert!(!store.cancel_run("nope", Utc::now()).await.unwrap());
}
