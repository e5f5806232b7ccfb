//! The lease of an ordered endpoint (`crate::ordering`): only each key's head goes out,
//! the key's oldest pending delivery by `(accepted_at, id)`, and only while no delivery of
//! that key is leased; unkeyed deliveries go as they would unordered. A key in backoff (its
//! head pending but not due) holds back its own successors only; a dead head no longer
//! holds them; a resent one (pending again, older) is its key's head again.
//!
//! The keys are walked one by one through the `webhook_deliveries_key_head` index (a
//! recursive skip scan), so a deep backlog of one key costs a lease nothing; the cost grows
//! with the number of keys that have pending deliveries.
//!
//! Acceptance order despite the fan-out's partitions: notifications are keyed by id in
//! the log, so two of one key may be fanned out in either order. A keyed delivery is leased
//! only if its notification was accepted before the oldest notification that has not been
//! fanned out yet (the watermark): the one fanned out later cannot then come first. Claims
//! never accepted (their publisher died) stop counting after the ingest's stale limit, and
//! anything older than `webhooks.ordering_settle_ms` stops holding deliveries back.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ActiveEnum, DbBackend, EntityTrait, FromQueryResult, Statement, Value};

use super::{WebhookStore, delivery};
use crate::states::DeliveryStatus;
use conveyor_actors::Error;

/// How long unfanned notifications may hold ordered deliveries back.
#[derive(Debug, Clone, Copy)]
pub struct OrderedLease {
    /// An unaccepted claim older than this was abandoned (the ingest's stale limit).
    pub stale_after: Duration,
    /// A notification not fanned out after this long holds nothing back any more.
    pub settle: Duration,
}

#[derive(FromQueryResult)]
struct Overdue {
    overdue: Option<DateTime<Utc>>,
}

/// Placeholders for one hand-written statement, `?` or `$n` by dialect.
struct Params {
    backend: DbBackend,
    values: Vec<Value>,
}

impl Params {
    fn new(backend: DbBackend) -> Self {
        Params { backend, values: Vec::new() }
    }

    fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => format!("${}", self.values.len()),
            _ => "?".to_string(),
        }
    }

    fn statement(self, sql: String) -> Statement {
        Statement::from_sql_and_values(self.backend, sql, self.values)
    }
}

impl WebhookStore {
    /// Leases up to `limit` deliveries of an ordered endpoint until `lease_until`: each
    /// key's head if it may go, and unkeyed due ones. See the module's documentation.
    pub async fn lease_heads(
        &self,
        endpoint_id: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u64,
        policy: OrderedLease,
    ) -> Result<Vec<delivery::Model>, Error> {
        let stmt = heads_statement(self.backend(), endpoint_id, None, now, lease_until, policy, limit);
        let q = delivery::Entity::find().from_raw_sql(stmt).all(self.connection());
        let mut rows = self.guarded("lease_heads", q).await?;
        rows.sort_by(|a, b| (a.next_attempt_at, &a.id).cmp(&(b.next_attempt_at, &b.id)));
        Ok(rows)
    }

    /// Leases the heads of these keys only, as [`Self::lease_heads`] would: right after
    /// their predecessors' outcomes are written, so that a key's next delivery does not wait
    /// for the endpoint's next full lease.
    pub async fn lease_successors(
        &self,
        endpoint_id: &str,
        keys: &[String],
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        policy: OrderedLease,
    ) -> Result<Vec<delivery::Model>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let limit = keys.len() as u64;
        let stmt = heads_statement(self.backend(), endpoint_id, Some(keys), now, lease_until, policy, limit);
        let q = delivery::Entity::find().from_raw_sql(stmt).all(self.connection());
        self.guarded("lease_successors", q).await
    }

    /// The oldest notification accepted longer than `settle` ago and still not fanned out
    /// (it no longer holds ordered deliveries back: worth a warning), through the small
    /// `notifications_unfanned` index.
    pub async fn overdue_fan_out(
        &self,
        now: DateTime<Utc>,
        policy: OrderedLease,
    ) -> Result<Option<DateTime<Utc>>, Error> {
        let mut p = Params::new(self.backend());
        let settle = p.bind(now - policy.settle);
        let sql = format!(
            "SELECT MIN(received_at) AS overdue FROM notifications \
             WHERE fanned_out = FALSE AND accepted = TRUE AND received_at < {settle}"
        );
        let q = Overdue::find_by_statement(p.statement(sql)).one(self.connection());
        Ok(self.guarded("ordering_overdue", q).await?.and_then(|row| row.overdue))
    }
}

/// The head-of-key lease: the keys with pending deliveries (a skip scan), each one's head,
/// the unkeyed due ones; of those, the due and unleased ones whose key has nothing leased
/// and which were accepted before the watermark. The heads come first and each is looked up
/// by id (on SQLite `heads CROSS JOIN d`, whose order it keeps): written as `d.id IN (heads)`,
/// SQLite walked every pending due row of the table instead, so a lease cost grew with the
/// backlog (3 ms at 8,000 pending, against 0.35 ms now). On PostgreSQL each head is looked up
/// and locked in a `LATERAL` subquery by primary key, which the planner can neither move to a
/// join's inner side (given the plain cross join it computed the inlined heads again per row:
/// 10 s per full lease of 1,000 keys in one benchmark run) nor turn into a scan of the due rows
/// (given `d.id IN (heads)` with statistics that lag behind a table that just grew, it hashed
/// the heads and walked every pending due row of every endpoint: 200–800 ms a lease). The leased-key
/// check says `l.ordering_key IS NOT NULL` although the join implies it: PostgreSQL may run it
/// as one hashed subplan, where the join is gone and only the explicit condition lets it read
/// the small leased-rows index (`migrations::lease_indexes`). The watermark is read in the
/// same statement (one snapshot): read apart, a notification claimed meanwhile could be missed
/// while a later one of its key, fanned out meanwhile too, went first. `FOR UPDATE … SKIP
/// LOCKED` on PostgreSQL as in the unordered lease (each head that may go is locked, including
/// those past the limit, for this one statement); SQLite has one writer.
fn heads_statement(
    backend: DbBackend,
    endpoint_id: &str,
    only: Option<&[String]>,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    policy: OrderedLease,
    limit: u64,
) -> Statement {
    let mut p = Params::new(backend);
    let pending: String = DeliveryStatus::Pending.to_value();
    let ep = || endpoint_id.to_string();
    // The keys with pending deliveries, walked one by one (or the ones given).
    let keys = match only {
        Some(keys) => {
            let values: Vec<String> = keys.iter().map(|k| format!("({})", p.bind(k.clone()))).collect();
            format!("VALUES {}", values.join(", "))
        }
        None => {
            let (ep1, st1) = (p.bind(ep()), p.bind(pending.clone()));
            let (ep2, st2) = (p.bind(ep()), p.bind(pending.clone()));
            format!(
                "SELECT (SELECT f.ordering_key FROM webhook_deliveries f \
                          WHERE f.endpoint_id = {ep1} AND f.status = {st1} AND f.ordering_key IS NOT NULL \
                          ORDER BY f.ordering_key LIMIT 1) \
                 UNION ALL \
                 SELECT (SELECT n.ordering_key FROM webhook_deliveries n \
                          WHERE n.endpoint_id = {ep2} AND n.status = {st2} AND n.ordering_key > keys.k \
                          ORDER BY n.ordering_key LIMIT 1) \
                   FROM keys WHERE keys.k IS NOT NULL"
            )
        }
    };
    let (ep3, st3) = (p.bind(ep()), p.bind(pending.clone()));
    let unkeyed = match only {
        Some(_) => String::new(),
        None => {
            let (ep4, st4, now4, lim4) = (p.bind(ep()), p.bind(pending.clone()), p.bind(now), p.bind(limit as i64));
            format!(
                "UNION ALL SELECT id FROM (SELECT u.id FROM webhook_deliveries u \
                  WHERE u.endpoint_id = {ep4} AND u.status = {st4} AND u.ordering_key IS NULL \
                    AND u.next_attempt_at <= {now4} LIMIT {lim4}) unkeyed"
            )
        }
    };
    let until = p.bind(lease_until);
    let (st5, now5, now6) = (p.bind(pending), p.bind(now), p.bind(now));
    let (settle, stale) = (p.bind(now - policy.settle), p.bind(now - policy.stale_after));
    // Nothing unfanned: every accepted notification has its deliveries.
    let none = p.bind(now + Duration::days(1));
    let (ep7, now7, lim7) = (p.bind(ep()), p.bind(now), p.bind(limit as i64));
    // A head may go: due, not leased, accepted before the watermark, its key not leased.
    let may_go = format!(
        "d.status = {st5} AND d.next_attempt_at <= {now5} \
           AND (d.lease_until IS NULL OR d.lease_until < {now6}) \
           AND (d.ordering_key IS NULL OR (d.accepted_at < COALESCE((SELECT MIN(received_at) \
             FROM notifications WHERE fanned_out = FALSE AND received_at >= {settle} \
             AND (accepted = TRUE OR received_at >= {stale})), {none}) AND NOT EXISTS ( \
             SELECT 1 FROM webhook_deliveries l WHERE l.endpoint_id = {ep7} \
                AND l.ordering_key IS NOT NULL AND l.ordering_key = d.ordering_key \
                AND l.lease_until >= {now7})))"
    );
    let heads_then_d = if backend == DbBackend::Postgres {
        format!(
            "heads CROSS JOIN LATERAL (SELECT d.id, d.next_attempt_at FROM webhook_deliveries d \
               WHERE d.id = heads.id AND {may_go} FOR UPDATE OF d SKIP LOCKED) d"
        )
    } else {
        format!("heads CROSS JOIN webhook_deliveries d WHERE d.id = heads.id AND {may_go}")
    };
    let sql = format!(
        "WITH RECURSIVE keys (k) AS ({keys}), heads (id) AS ( \
           SELECT (SELECT h.id FROM webhook_deliveries h \
                    WHERE h.endpoint_id = {ep3} AND h.status = {st3} AND h.ordering_key = keys.k \
                    ORDER BY h.accepted_at, h.id LIMIT 1) \
             FROM keys WHERE keys.k IS NOT NULL {unkeyed} \
         ) \
         UPDATE webhook_deliveries SET lease_until = {until} WHERE id IN ( \
           SELECT d.id FROM {heads_then_d} ORDER BY d.next_attempt_at, d.id LIMIT {lim7} \
         ) RETURNING *"
    );
    p.statement(sql)
}

#[cfg(test)]
mod tests;
