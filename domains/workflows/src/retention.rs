//! Retention of finished runs, with their steps.

use chrono::{DateTime, Utc};
use sea_orm::ColumnTrait;
use sea_orm::sea_query::ExprTrait;

use crate::states::RunStatus;
use crate::store::{WorkflowStore, run, step};
use conveyor_actors::Error;
use conveyor_actors::config::RetentionConfig;
use conveyor_actors::retention::PurgeRule;
use conveyor_actors::store::retention::{Batch, Family};

/// The tables' metric labels.
const RUNS: &str = "workflow_runs";
const RUN_STEPS: &str = "workflow_run_steps";

pub fn rules(store: &WorkflowStore, config: &RetentionConfig) -> Vec<PurgeRule> {
    let store = store.clone();
    vec![PurgeRule::new("runs", config.finished_runs(), move |cutoff, n| {
        let store = store.clone();
        async move { store.purge_runs(cutoff, n).await }
    })]
}

impl WorkflowStore {
    /// Finished workflow runs that finished before `cutoff`, with their steps.
    pub async fn purge_runs(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use run::Column;
        // Checked again at the delete: a replayed failure may have made the run pending.
        let finished = move || Column::Status.is_in(RunStatus::FINAL).and(Column::FinishedAt.lt(cutoff));
        let family = Family::<run::Entity, step::Entity> {
            op: "purge_runs",
            id: Column::Id,
            parent_of_child: step::Column::RunId,
            tables: (RUNS, RUN_STEPS),
        };
        self.purge_family(family, finished, limit).await
    }
}

#[cfg(test)]
mod tests;
