//! What `/admin/status` shows: the supervision tree with each actor's state and restarts,
//! owned partitions with lag and in-flight counts, breakers, dead letters, the outbox.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::restarts_of;
use crate::system::Conveyor;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActorNode {
    pub name: String,
    pub kind: String,
    /// `running`, `restarting`, …
    pub state: String,
    pub restarts: u32,
    pub detail: Option<String>,
    #[schema(no_recursion)]
    pub children: Vec<ActorNode>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PartitionRow {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// Records written but not yet committed; null until first measured.
    pub lag: Option<i64>,
    pub in_flight: usize,
    pub running_keys: usize,
    pub paused: bool,
    pub committed: Option<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BreakerRow {
    pub name: String,
    /// `closed`, `half_open` or `open`.
    pub state: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetterCounts {
    pub total: u64,
    pub by_error_class: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutboxStatus {
    /// Records not yet published.
    pub backlog: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemStatus {
    pub version: String,
    pub uptime_secs: u64,
    pub log_backend: String,
    /// What `/ready` answers now.
    pub readiness: crate::readiness::Verdict,
    /// Backends and subsystems that are down, by name.
    pub down: Vec<String>,
    /// `ok` or `error: …` per backend.
    pub checks: BTreeMap<String, String>,
    pub supervision: Vec<ActorNode>,
    pub partitions: Vec<PartitionRow>,
    pub breakers: Vec<BreakerRow>,
    /// Null when the store cannot be read.
    pub dead_letters: Option<DeadLetterCounts>,
    pub outbox: Option<OutboxStatus>,
}

fn node(name: impl Into<String>, kind: &str, state: &str, restarts: u32, detail: Option<String>) -> ActorNode {
    ActorNode { name: name.into(), kind: kind.into(), state: state.into(), restarts, detail, children: Vec::new() }
}

impl Conveyor {
    /// A snapshot for the status page; each part that cannot be read is left out, not fatal.
    pub async fn status(&self) -> SystemStatus {
        // One report from the root serves the tree and the readiness verdict alike.
        let (checks, services, groups) = tokio::join!(self.backend_checks(), self.services(), self.groups());
        let readiness = crate::readiness::Readiness::new(checks, &services, &groups);
        let mut root = node("root", "RootSupervisor", "running", 0, Some(format!("{} consumer groups", groups.len())));
        let mut partitions = Vec::new();
        for g in &groups {
            let running = g.partitions.iter().map(|p| p.running_keys).sum::<usize>();
            let detail = format!("topic {}; {} partitions, {running} keys running", g.topic, g.partitions.len());
            let mut group = node(g.group.clone(), "ConsumerSupervisor", g.state.as_str(), g.restarts, Some(detail));
            for p in &g.partitions {
                let state = if p.paused { "paused" } else { "running" };
                let detail = format!("{} keys running, {} in flight", p.running_keys, p.in_flight);
                let name = p.tp.to_string();
                let restarts = restarts_of(&name);
                group.children.push(node(name, "PartitionActor", state, restarts, Some(detail)));
                partitions.push(PartitionRow {
                    group: g.group.clone(),
                    topic: p.tp.topic.clone(),
                    partition: p.tp.partition,
                    lag: self.lag.of(&p.tp.topic, p.tp.partition),
                    in_flight: p.in_flight,
                    running_keys: p.running_keys,
                    paused: p.paused,
                    committed: p.committed,
                });
            }
            root.children.push(group);
        }
        // The services hang under the root too; the detail names their on-demand children
        // and how often those failed (a fresh child starts with the next piece of work).
        let mut nodes = Vec::new();
        for service in services {
            let detail = match service.name {
                "ledger" => Some(format!(
                    "{} account actors ({} failed)",
                    self.ledger.live_accounts().await,
                    restarts_of("account")
                )),
                "webhook-dispatcher" => Some(format!(
                    "{} endpoint actors ({} failed)",
                    self.webhooks.running_actors().await,
                    restarts_of("webhook-endpoint")
                )),
                "workflow-runs" => Some(format!(
                    "{} runs executing ({} failed)",
                    self.workflows.running().await,
                    restarts_of("workflow-run")
                )),
                _ => None,
            };
            nodes.push(node(service.name, service.kind, service.state.as_str(), service.restarts, detail));
        }
        root.children.splice(0..0, nodes);
        let verdict = readiness.verdict();
        let down = readiness.failed();
        let checks = readiness
            .checks
            .into_iter()
            .map(|(c, r)| (c.as_str().to_string(), r.map_or_else(|e| format!("error: {e}"), |()| "ok".into())))
            .collect();
        let dead_letters = self
            .dead_letters
            .counts()
            .await
            .ok()
            .map(|by_error_class| DeadLetterCounts { total: by_error_class.values().sum(), by_error_class });
        let outbox = self.store.outbox_backlog().await.ok().map(|backlog| OutboxStatus { backlog });
        SystemStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.started.elapsed().as_secs(),
            log_backend: format!("{:?}", self.config.log.backend).to_lowercase(),
            readiness: verdict,
            down,
            checks,
            supervision: vec![root],
            partitions,
            breakers: self
                .breakers()
                .iter()
                .map(|b| BreakerRow { name: b.name().to_string(), state: b.state().as_str().to_string() })
                .collect(),
            dead_letters,
            outbox,
        }
    }
}
