//! The status page's snapshot of the running system.

use conveyor_actors::metrics::restarts_of;
use conveyor_actors::status::{
    BreakerRow, DeadLetterCounts, OutboxStatus, PartitionRow, STATUS_STUCK_KEYS, StuckKeyList, SystemStatus, node,
};

use crate::system::Conveyor;

impl Conveyor {
    /// Keys not advancing in any consumer group (optionally of one topic), longest stuck
    /// first, at most `limit`, with the exact total.
    pub async fn stuck_keys(&self, topic: Option<&str>, limit: usize) -> StuckKeyList {
        let groups = self.groups().await;
        conveyor_actors::status::stuck_keys(groups.iter().flat_map(|g| &g.partitions), topic, limit)
    }

    /// A snapshot for the status page; each part that cannot be read is left out, not fatal.
    pub async fn status(&self) -> SystemStatus {
        // One report from the root serves the tree and the readiness verdict alike.
        let (checks, services, groups) = tokio::join!(self.backend_checks(), self.services(), self.groups());
        let readiness = conveyor_actors::readiness::Readiness::new(checks, &services, &groups);
        let mut root = node("root", "RootSupervisor", "running", 0, Some(format!("{} consumer groups", groups.len())));
        let mut partitions = Vec::new();
        for g in &groups {
            let running = g.partitions.iter().map(|p| p.running_keys).sum::<usize>();
            let detail = format!("topic {}; {} partitions, {running} keys running", g.topic, g.partitions.len());
            let mut group = node(g.group.clone(), "ConsumerSupervisor", g.state.as_str(), g.restarts, Some(detail));
            for p in &g.partitions {
                let state = if p.paused { "paused" } else { "running" };
                let mut detail = format!("{} keys running, {} in flight", p.running_keys, p.in_flight);
                if p.full {
                    detail.push_str(", at its in-flight bound");
                }
                if p.parked_keys > 0 {
                    detail.push_str(&format!(", {} keys parked", p.parked_keys));
                }
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
                    full: p.full,
                    committed: p.committed,
                    stuck_keys: p.stuck_total,
                    parked_keys: p.parked_keys,
                });
            }
            root.children.push(group);
        }
        let stuck_keys =
            conveyor_actors::status::stuck_keys(groups.iter().flat_map(|g| &g.partitions), None, STATUS_STUCK_KEYS);
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
        let parked_keys = self.parked.list(None, 0, STATUS_STUCK_KEYS as u64).await.ok();
        let outbox = self.identity_store.outbox_backlog().await.ok().map(|backlog| OutboxStatus { backlog });
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
            stuck_keys,
            parked_keys,
            dead_letters,
            outbox,
        }
    }
}
