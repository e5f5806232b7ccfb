//! The PostgreSQL side: the baselines that write the same rows without Conveyor, and the
//! query that tells how far a run has got.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use conveyor_devices::DeviceEvent;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use tokio::task::JoinSet;

use super::topic::Prepared;

pub async fn connect_pg(url: &str, pool: u32) -> anyhow::Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(url.to_string());
    opts.max_connections(pool).min_connections(1).sqlx_logging(false);
    Ok(Database::connect(opts).await?)
}

pub async fn drop_schema(db: &DatabaseConnection, schema: &str) {
    if let Err(err) = db.execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await {
        eprintln!("  (could not drop schema {schema}: {err})");
    }
}

/// (rows, rows whose seq is `last_seq`) in `schema.resources`; (0, 0) before the table exists.
pub async fn progress(db: &DatabaseConnection, schema: &str, last_seq: usize) -> (i64, i64) {
    let sql = format!(
        "SELECT count(*), count(*) FILTER (WHERE (value->>'seq')::bigint = {last_seq}) FROM \"{schema}\".resources"
    );
    match db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql)).await {
        Ok(Some(row)) => (row.try_get_by_index::<i64>(0).unwrap_or(0), row.try_get_by_index::<i64>(1).unwrap_or(0)),
        _ => (0, 0),
    }
}

/// Drops `schema` over a connection of its own (a baseline's pool may be gone).
pub async fn drop_schema_at(url: &str, schema: &str) {
    if let Ok(db) = connect_pg(url, 1).await {
        drop_schema(&db, schema).await;
        let _ = db.close().await;
    }
}

/// The table Conveyor's migration creates, in `schema`.
async fn create_table(db: &DatabaseConnection, schema: &str) -> anyhow::Result<()> {
    db.execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).await?;
    db.execute_unprepared(&format!(
        "CREATE TABLE IF NOT EXISTS \"{schema}\".resources (id varchar NOT NULL PRIMARY KEY, \
         value jsonb NOT NULL, last_offset bigint NOT NULL, last_partition integer, updated_at timestamptz NOT NULL)"
    ))
    .await?;
    Ok(())
}

/// Conveyor's guard, schema-qualified: a row is replaced only by a later offset of its
/// partition, or by any offset of another partition.
fn on_conflict(schema: &str) -> String {
    format!(
        "ON CONFLICT (id) DO UPDATE SET value = excluded.value, last_offset = excluded.last_offset, \
         last_partition = excluded.last_partition, updated_at = excluded.updated_at \
         WHERE \"{schema}\".resources.last_partition IS NULL \
         OR \"{schema}\".resources.last_partition <> excluded.last_partition \
         OR \"{schema}\".resources.last_offset < excluded.last_offset"
    )
}

/// The records task `t` of `tasks` owns: a device belongs to one task, and records are in
/// offset order, so each device's events come in order.
fn owned(records: &[Prepared], devices: usize, tasks: usize, t: usize) -> impl Iterator<Item = (usize, &Prepared)> {
    records.iter().enumerate().filter(move |(n, _)| (n % devices) % tasks == t)
}

/// Runs `task(t)` for `t` in `0..tasks` at once and answers how long they all took; closes
/// `db` after.
async fn timed<F, Fut>(db: DatabaseConnection, tasks: usize, task: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let started = Instant::now();
    let mut set = JoinSet::new();
    for t in 0..tasks {
        set.spawn(task(t));
    }
    while let Some(joined) = set.join_next().await {
        joined??;
    }
    let secs = started.elapsed().as_secs_f64();
    db.close().await?;
    Ok(secs)
}

/// Single-row baseline: the guarded upsert Conveyor used to issue, one statement per event,
/// `tasks` tasks over a pool of `tasks` connections. Returns seconds.
pub async fn single_rows(
    url: &str,
    schema: &str,
    records: Arc<Vec<Prepared>>,
    devices: usize,
    tasks: usize,
) -> anyhow::Result<f64> {
    let db = connect_pg(url, tasks as u32).await?;
    create_table(&db, schema).await?;
    let sql = Arc::new(format!(
        "INSERT INTO \"{schema}\".resources (id, value, last_offset, last_partition, updated_at) \
         VALUES ($1, $2, $3, 0, $4) {}",
        on_conflict(schema)
    ));
    timed(db.clone(), tasks, |t| {
        let (db, sql, records) = (db.clone(), sql.clone(), records.clone());
        async move {
            for (n, r) in owned(&records, devices, tasks, t) {
                let event: DeviceEvent = serde_json::from_slice(&r.payload)?;
                let stmt = Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    sql.as_str(),
                    [
                        event.device_id.into(),
                        serde_json::Value::Object(event.payload).into(),
                        (n as i64).into(),
                        chrono::Utc::now().into(),
                    ],
                );
                db.execute_raw(stmt).await?;
            }
            Ok(())
        }
    })
    .await
}

/// Batched baseline, the ceiling of the processing path: the statement Conveyor's batch
/// writer issues (`INSERT … SELECT FROM UNNEST … ON CONFLICT … WHERE guard RETURNING id`),
/// `rows` events per statement, `tasks` connections. Within a statement a device's later
/// event replaces its earlier one (one statement cannot update a row twice), which is the
/// coalescing Conveyor does too. Returns seconds.
pub async fn batched(
    url: &str,
    schema: &str,
    records: Arc<Vec<Prepared>>,
    devices: usize,
    tasks: usize,
    rows: usize,
) -> anyhow::Result<f64> {
    let db = connect_pg(url, tasks as u32).await?;
    create_table(&db, schema).await?;
    let sql = Arc::new(format!(
        "INSERT INTO \"{schema}\".resources (id, value, last_offset, last_partition, updated_at) \
         SELECT u.id, u.value, u.last_offset, u.last_partition, $5 \
         FROM UNNEST($1::text[], $2::jsonb[], $3::int8[], $4::int4[]) AS u(id, value, last_offset, last_partition) \
         {} RETURNING id",
        on_conflict(schema)
    ));
    timed(db.clone(), tasks, |t| {
        let (db, sql, records) = (db.clone(), sql.clone(), records.clone());
        async move {
            let mut batch: Vec<(String, serde_json::Value, i64)> = Vec::with_capacity(rows);
            let mut index: HashMap<String, usize> = HashMap::with_capacity(rows);
            let mut events = 0usize;
            let mut owned = owned(&records, devices, tasks, t).peekable();
            while let Some((n, r)) = owned.next() {
                let event: DeviceEvent = serde_json::from_slice(&r.payload)?;
                let row = (event.device_id, serde_json::Value::Object(event.payload), n as i64);
                match index.get(&row.0) {
                    Some(&at) => batch[at] = row,
                    None => {
                        index.insert(row.0.clone(), batch.len());
                        batch.push(row);
                    }
                }
                events += 1;
                if events == rows || owned.peek().is_none() {
                    let (ids, values, offsets): (Vec<_>, Vec<_>, Vec<_>) = batch.drain(..).fold(
                        (Vec::new(), Vec::new(), Vec::new()),
                        |(mut i, mut v, mut o), (id, value, offset)| {
                            i.push(id);
                            v.push(value);
                            o.push(offset);
                            (i, v, o)
                        },
                    );
                    let partitions = vec![0i32; ids.len()];
                    let stmt = Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        sql.as_str(),
                        [ids.into(), values.into(), offsets.into(), partitions.into(), chrono::Utc::now().into()],
                    );
                    db.query_all_raw(stmt).await?;
                    index.clear();
                    events = 0;
                }
            }
            Ok(())
        }
    })
    .await
}
