//! The `workflows.command` topic, keyed by workflow id (as in minireipaz): definition
//! changes and run requests. Its consumer group shares workflows among daemons by
//! partition: the daemon owning a workflow's partition starts its requested runs.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::supervisor::Runs;
use super::triggers::Triggers;
use crate::store::WorkflowStore;
use conveyor_actors::breaker::Breaker;
use conveyor_actors::consumer::KeyHandler;
use conveyor_actors::log::Record;
use conveyor_actors::retry::HandlerError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command")]
pub enum Command {
    /// A workflow was created, changed or deleted: re-read the triggers.
    #[serde(rename = "definition.changed")]
    DefinitionChanged { workflow_id: String },
    /// A run was created (manual trigger): start it.
    #[serde(rename = "run.requested")]
    RunRequested { workflow_id: String, run_id: String },
    /// A failed run, replayed from the dead-letter topic: resume it at the failed step.
    #[serde(rename = "run.retry")]
    RunRetry { workflow_id: String, run_id: String },
}

pub struct CommandHandler {
    pub store: WorkflowStore,
    pub triggers: Triggers,
    pub runs: Runs,
}

#[async_trait]
impl KeyHandler for CommandHandler {
    fn name(&self) -> &'static str {
        "workflows"
    }

    fn breakers(&self) -> Vec<Arc<Breaker>> {
        vec![self.store.breaker().clone()]
    }

    async fn handle(&self, _key: &str, records: &[Record]) -> Result<(), HandlerError> {
        for record in records {
            match serde_json::from_slice::<Command>(&record.payload).map_err(HandlerError::permanent)? {
                Command::DefinitionChanged { .. } => self.triggers.invalidate(),
                Command::RunRequested { run_id, .. } => self.runs.wake(run_id),
                Command::RunRetry { run_id, .. } => {
                    if self.store.retry_failed_run(&run_id).await.map_err(HandlerError::retryable)? {
                        self.runs.wake(run_id);
                    }
                }
            }
        }
        Ok(())
    }
}
