//! What every run actor shares: the store, the outbound client (the webhooks' target
//! policy), a circuit breaker per target host, the dead-letter topic, and a signal that
//! wakes long-polling readers when a run finishes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::store::WorkflowStore;
use crate::store::run;
use conveyor_actors::breaker::{Breaker, BreakerConfig};
use conveyor_actors::config::WorkflowsConfig;
use conveyor_actors::consumer::DeadLetterMeta;
use conveyor_actors::log::{OutgoingRecord, Producer};
use conveyor_actors::metrics::{ERROR_CLASS, kv, metrics};
use conveyor_webhooks::client::WebhookClient;

pub struct RunContext {
    pub store: WorkflowStore,
    pub client: WebhookClient,
    pub config: WorkflowsConfig,
    pub breakers: HostBreakers,
    pub producer: Arc<dyn Producer>,
    pub dlq_topic: String,
    pub commands_topic: String,
    pub produce_timeout: Duration,
    /// Notified whenever a run of this daemon finishes.
    pub finished: Arc<Notify>,
}

/// One breaker per target host, shared by every run: a host that keeps failing is left
/// alone for a while by all workflows, not hammered by each.
#[derive(Clone)]
pub struct HostBreakers {
    config: BreakerConfig,
    by_host: Arc<Mutex<HashMap<String, Arc<Breaker>>>>,
}

impl HostBreakers {
    pub fn new(config: &WorkflowsConfig) -> Self {
        let config = BreakerConfig {
            consecutive_failures: config.breaker_failures,
            failure_ratio: 1.0,
            min_calls: u32::MAX,
            cool_down_ms: config.breaker_open_ms,
            half_open_probes: 1,
            ..BreakerConfig::default()
        };
        HostBreakers { config, by_host: Arc::default() }
    }

    pub fn get(&self, host: &str) -> Arc<Breaker> {
        let mut map = self.by_host.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded by the hosts workflows call; forget them all if that ever gets silly.
        if map.len() > 10_000 {
            map.clear();
        }
        map.entry(host.to_string()).or_insert_with(|| Breaker::new("workflow-host", self.config.clone())).clone()
    }
}

impl RunContext {
    /// A failed run goes to the dead-letter topic as a `run.retry` command: replaying it
    /// resumes the run at the step that failed, with fresh attempts.
    pub async fn dead_letter(&self, run: &run::Model, attempts: i32) {
        let payload = serde_json::json!({"command": "run.retry", "run_id": run.id, "workflow_id": run.workflow_id});
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut headers = Vec::new();
        DeadLetterMeta {
            source_topic: &self.commands_topic,
            source_partition: -1,
            source_offset: -1,
            error_class: "workflow_step_failed",
            error: run.error.as_deref().unwrap_or_default(),
            attempts: u32::try_from(attempts).unwrap_or(0),
            first_failure_ms: run.created_at.timestamp_millis(),
            last_failure_ms: now_ms,
        }
        .append_to(&mut headers);
        let record = OutgoingRecord {
            topic: self.dlq_topic.clone(),
            key: Some(run.workflow_id.clone()),
            payload: Bytes::from(payload.to_string()),
            headers,
        };
        match self.producer.send(record, self.produce_timeout).await {
            Ok(_) => metrics().dead_letters.add(1, &[kv(ERROR_CLASS, "workflow")]),
            Err(err) => tracing::error!(error = %err, run = %run.id, "writing a failed run's dead letter"),
        }
    }
}
