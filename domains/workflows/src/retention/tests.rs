//! Run retention against a real (SQLite) store: finished, old runs go with their steps.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};

use super::*;
use crate::states::{StepKind, StepStatus, TriggerKind};
use crate::store::{run, step};
use conveyor_actors::config::Config;
use conveyor_actors::store::Store;

pub(crate) async fn store() -> (tempfile::TempDir, WorkflowStore) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
    let store = WorkflowStore::new(Store::connect(&config).await.unwrap());
    store.migrate(crate::migrations::with_runtime()).await.unwrap();
    (dir, store)
}

fn ago(days: i64) -> DateTime<Utc> {
    Utc::now() - Duration::days(days)
}

fn cutoff() -> DateTime<Utc> {
    ago(30)
}

async fn run(store: &WorkflowStore, id: &str, status: RunStatus, finished: Option<DateTime<Utc>>) {
    let created = ago(100);
    let row = run::Model {
        id: id.into(),
        workflow_id: "wf".into(),
        owner: "alice".into(),
        status,
        trigger_kind: TriggerKind::Manual,
        input: "{}".into(),
        spec: "{}".into(),
        step_index: 1,
        next_at: created,
        lease_until: None,
        resumes: 0,
        error: None,
        created_at: created,
        started_at: Some(created),
        finished_at: finished,
        updated_at: finished.unwrap_or(created),
    };
    assert!(store.insert_run(row).await.unwrap());
    for idx in 0..2 {
        let step = step::Model {
            run_id: id.into(),
            idx,
            name: format!("s{idx}"),
            kind: StepKind::Http,
            status: StepStatus::Succeeded,
            attempts: 1,
            response_code: Some(200),
            output: None,
            error: None,
            started_at: Some(created),
            finished_at: Some(created),
            duration_ms: Some(1),
        };
        store.checkpoint(step, None).await.unwrap();
    }
}

#[tokio::test]
async fn finished_old_runs_go_with_their_steps_and_unfinished_or_recent_ones_stay() {
    let (_dir, store) = store().await;
    run(&store, "ok", RunStatus::Succeeded, Some(ago(31))).await;
    run(&store, "failed", RunStatus::Failed, Some(ago(31))).await;
    run(&store, "running", RunStatus::Running, None).await;
    run(&store, "pending", RunStatus::Pending, None).await;
    run(&store, "recent", RunStatus::Succeeded, Some(ago(1))).await;
    let batch = store.purge_runs(cutoff(), 100).await.unwrap();
    assert_eq!(batch.removed, vec![(RUNS, 2), (RUN_STEPS, 4)]);
    for gone in ["ok", "failed"] {
        assert!(store.get_run(gone).await.unwrap().is_none());
        assert!(store.run_steps(gone).await.unwrap().is_empty());
    }
    for kept in ["running", "pending", "recent"] {
        assert!(store.get_run(kept).await.unwrap().is_some(), "{kept} kept");
        assert_eq!(store.run_steps(kept).await.unwrap().len(), 2, "{kept} keeps its steps");
    }
}
