//! What `/ready` and the status page report: each backend checked within a short bound,
//! and every child of the root supervisor that is waiting out a restart.
//!
//! Only what stops the daemon from doing its job makes it unavailable: the log (nothing can
//! be accepted), the store (nothing can be applied or read) and a subsystem that is down. A
//! cache outage only makes reads slower, since every read falls back to the store, so it
//! degrades the daemon without taking it out of a load balancer.

use std::time::Duration;

use crate::Error;
use crate::log::TopicPartition;
use crate::root::{ChildState, GroupStatus, ServiceStatus};

/// How long each check may take: a probe must answer well inside a load balancer's timeout
/// even while a backend hangs.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// A backend `/ready` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Log,
    Store,
    Cache,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Log => "log",
            Component::Store => "store",
            Component::Cache => "cache",
        }
    }

    /// Whether the daemon can do its job without it.
    fn essential(self) -> bool {
        !matches!(self, Component::Cache)
    }
}

/// The overall answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ready,
    /// Serving, with something non-essential down (the cache).
    Degraded,
    /// A backend or subsystem the daemon needs is down.
    Unavailable,
}

/// A child of the root supervisor: a service, or a consumer group (`group:{name}`).
pub struct Subsystem {
    pub name: String,
    pub state: ChildState,
    /// Whether the daemon can do its job without it (see [`crate::supervision::Service::essential`]).
    pub essential: bool,
}

impl Subsystem {
    fn down(&self) -> bool {
        self.state != ChildState::Running
    }
}

/// Every check's outcome.
pub struct Readiness {
    pub checks: Vec<(Component, Result<(), Error>)>,
    pub subsystems: Vec<Subsystem>,
    /// Partitions this process owns, read with the groups' states.
    pub partitions: Vec<TopicPartition>,
}

impl Readiness {
    /// From the backend checks and the root supervisor's report on its children.
    pub fn new(
        checks: Vec<(Component, Result<(), Error>)>,
        services: &[ServiceStatus],
        groups: &[GroupStatus],
    ) -> Self {
        let services =
            services.iter().map(|s| Subsystem { name: s.name.to_owned(), state: s.state, essential: s.essential });
        let group_states =
            groups.iter().map(|g| Subsystem { name: format!("group:{}", g.group), state: g.state, essential: true });
        let partitions = groups.iter().flat_map(|g| g.partitions.iter().map(|p| p.tp.clone())).collect();
        Readiness { checks, subsystems: services.chain(group_states).collect(), partitions }
    }

    pub fn verdict(&self) -> Verdict {
        let backend_down = self.checks.iter().any(|(c, r)| r.is_err() && c.essential());
        let subsystem_down = self.subsystems.iter().any(|s| s.down() && s.essential);
        if backend_down || subsystem_down {
            Verdict::Unavailable
        } else if !self.failed().is_empty() {
            Verdict::Degraded
        } else {
            Verdict::Ready
        }
    }

    /// The names of whatever failed: backends, then subsystems.
    pub fn failed(&self) -> Vec<String> {
        let backends = self.checks.iter().filter(|(_, r)| r.is_err()).map(|(c, _)| c.as_str().to_owned());
        let subsystems = self.subsystems.iter().filter(|s| s.down()).map(|s| s.name.clone());
        backends.chain(subsystems).collect()
    }
}

/// Runs one backend check within [`CHECK_TIMEOUT`].
pub async fn bounded(
    component: Component,
    check: impl Future<Output = Result<(), Error>>,
) -> (Component, Result<(), Error>) {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(r) => (component, r),
        Err(_) => (component, Err(Error::Timeout { op: "readiness check", after: CHECK_TIMEOUT })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> Result<(), Error> {
        Err(Error::Timeout { op: "test", after: CHECK_TIMEOUT })
    }

    fn readiness(log: bool, store: bool, cache: bool, ledger: ChildState) -> Readiness {
        let check = |ok: bool| if ok { Ok(()) } else { down() };
        Readiness {
            checks: vec![
                (Component::Log, check(log)),
                (Component::Store, check(store)),
                (Component::Cache, check(cache)),
            ],
            subsystems: vec![Subsystem { name: "ledger".into(), state: ledger, essential: true }],
            partitions: vec![],
        }
    }

    #[test]
    fn only_what_stops_the_daemon_makes_it_unavailable() {
        use ChildState::{Restarting, Running};
        assert_eq!(readiness(true, true, true, Running).verdict(), Verdict::Ready);
        let cache_down = readiness(true, true, false, Running);
        assert_eq!((cache_down.verdict(), cache_down.failed()), (Verdict::Degraded, vec!["cache".to_owned()]));
        assert_eq!(readiness(false, true, true, Running).verdict(), Verdict::Unavailable);
        assert_eq!(readiness(true, false, true, Running).verdict(), Verdict::Unavailable);
        let restarting = readiness(true, true, false, Restarting);
        assert_eq!(restarting.verdict(), Verdict::Unavailable);
        assert_eq!(restarting.failed(), vec!["cache".to_owned(), "ledger".to_owned()]);
        let mut housekeeping = readiness(true, true, true, Running);
        housekeeping.subsystems.push(Subsystem { name: "retention".into(), state: Restarting, essential: false });
        assert_eq!((housekeeping.verdict(), housekeeping.failed()), (Verdict::Degraded, vec!["retention".to_owned()]));
    }
}
