//! `[loyalty]`, `[outbox]` and `[faults]`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoyaltyConfig {
    /// Points credited once per user on registration.
    pub welcome_bonus: i64,
    /// An account's actor with no work for this long is retired.
    pub account_idle_secs: u64,
}

impl Default for LoyaltyConfig {
    fn default() -> Self {
        LoyaltyConfig { welcome_bonus: 100, account_idle_secs: 60 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// How often the relay looks for due records (new ones also wake it at once).
    pub poll_interval_ms: u64,
    /// Records published per round.
    pub batch_size: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig { poll_interval_ms: 1_000, batch_size: 100 }
    }
}

/// Failure injection for drills and tests; everything off by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsConfig {
    /// The first this many ledger writes fail as if the store dropped the connection.
    pub loyalty_credit_transient_failures: u32,
    /// Every welcome-bonus credit fails permanently (the saga compensates).
    pub loyalty_credit_permanent: bool,
    /// `POST /admin/faults/{subsystem}/panic` makes that service's actor panic, to drill the
    /// supervision tree; answered 404 while off.
    pub allow_panic_injection: bool,
}
