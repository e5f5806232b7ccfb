//! `processing`: events/s from a pre-filled Kafka topic to rows in PostgreSQL, Conveyor
//! against a raw rdkafka consumer (and, optionally, raw single-row upserts from a pool).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use conveyor_devices::DeviceEvent;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde_json::json;
use tokio::task::JoinSet;

use crate::daemon::{self, Backends, DaemonSpec};
use crate::report::{self, CpuSample, CpuUsage, round, thousands};

#[derive(Debug, Args)]
pub struct ProcessingArgs {
    #[arg(long, env = "CONVEYOR_TEST_KAFKA_BROKERS")]
    pub brokers: String,
    #[arg(long, env = "CONVEYOR_TEST_PG_URL")]
    pub pg_url: String,
    /// Redis for the daemon's cache; without it the daemon uses its in-memory cache.
    #[arg(long, env = "CONVEYOR_TEST_REDIS_URL")]
    pub redis_url: Option<String>,
    #[arg(long, default_value_t = 50_000)]
    pub events: usize,
    #[arg(long, default_value_t = 5_000)]
    pub devices: usize,
    /// Partitions of the topic (and the daemon's log.partitions).
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Concurrent tasks (and pool size) of the raw PostgreSQL baseline.
    #[arg(long, default_value_t = 16)]
    pub pg_tasks: usize,
    /// Skip the raw PostgreSQL upsert baseline.
    #[arg(long)]
    pub no_raw_pg: bool,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    /// The `conveyor` binary (default: next to this one, or target/release/conveyor).
    #[arg(long)]
    pub conveyor_bin: Option<std::path::PathBuf>,
}

fn kafka_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers).set("client.id", "conveyor-bench");
    c
}

/// One pre-built record: key, Conveyor's JSON payload, and its headers' values.
struct Prepared {
    key: String,
    payload: Vec<u8>,
    traceparent: String,
    request_id: String,
}

/// Event `n` goes to device `n % devices` with that device's sequence number `n / devices + 1`,
/// so every device gets the same count and its last seq is `events / devices`.
fn prepare(events: usize, devices: usize) -> anyhow::Result<Vec<Prepared>> {
    let mut out = Vec::with_capacity(events);
    for n in 0..events {
        let device = n % devices;
        let seq = n / devices + 1;
        let mut payload = serde_json::Map::new();
        payload.insert("seq".into(), json!(seq));
        let event = DeviceEvent {
            request_id: uuid::Uuid::now_v7(),
            device_id: format!("dev-{device:05}"),
            payload,
            user_id: "bench".into(),
            received_at: chrono::Utc::now(),
        };
        let trace = uuid::Uuid::new_v4().simple().to_string();
        let span = uuid::Uuid::new_v4().simple().to_string();
        out.push(Prepared {
            key: event.device_id.clone(),
            payload: serde_json::to_vec(&event)?,
            traceparent: format!("00-{trace}-{}-01", span.get(..16).unwrap_or("0000000000000000")),
            request_id: uuid::Uuid::new_v4().to_string(),
        });
    }
    Ok(out)
}

async fn create_topics(brokers: &str, topics: &[String], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_config(brokers).create()?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

async fn delete_topics(brokers: &str, topics: &[String]) {
    let Ok(admin) = kafka_config(brokers).create::<AdminClient<DefaultClientContext>>() else { return };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    if let Err(err) = admin.delete_topics(&names, &opts).await {
        eprintln!("  (could not delete topics {names:?}: {err})");
    }
}

/// Produces every record the way Conveyor's producer does (acks=all, idempotent, key =
/// device_id, its two headers) and waits for every acknowledgement.
async fn prefill(brokers: &str, topic: &str, records: &[Prepared]) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka_config(brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()?;
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header { key: "traceparent", value: Some(r.traceparent.as_bytes()) })
            .insert(Header { key: "x-request-id", value: Some(r.request_id.as_bytes()) });
        let mut record = FutureRecord::to(topic).key(r.key.as_str()).payload(r.payload.as_slice()).headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((err, _)) => return Err(err.into()),
            }
        }
    }
    for delivery in pending {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((err, _))) => return Err(err).context("producing a pre-fill record"),
            Err(_) => bail!("the producer dropped a pre-fill record"),
        }
    }
    Ok(())
}

/// The raw consumer baseline: a fresh group reading every partition, decoding each payload as
/// a [`DeviceEvent`]. Returns (seconds until all seen, seconds until the first one).
fn raw_consume(
    brokers: &str,
    topic: &str,
    group: &str,
    expected: usize,
    limit: Duration,
) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let consumer: BaseConsumer = kafka_config(brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut seen = 0usize;
    let mut first = None;
    while seen < expected {
        if started.elapsed() > limit {
            bail!("raw consumer saw only {seen} of {expected} records within {limit:?}");
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(err)) => return Err(err).context("raw consumer poll"),
            Some(Ok(msg)) => {
                let payload = msg.payload().context("record without payload")?;
                let event: DeviceEvent = serde_json::from_slice(payload)?;
                std::hint::black_box(event);
                seen += 1;
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            }
        }
    }
    let total = started.elapsed().as_secs_f64();
    consumer.unsubscribe();
    Ok((total, first.unwrap_or(total)))
}

async fn connect_pg(url: &str, pool: u32) -> anyhow::Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(url.to_string());
    opts.max_connections(pool).min_connections(1).sqlx_logging(false);
    Ok(Database::connect(opts).await?)
}

async fn drop_schema(db: &DatabaseConnection, schema: &str) {
    if let Err(err) = db.execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await {
        eprintln!("  (could not drop schema {schema}: {err})");
    }
}

/// (rows, rows whose seq is `last_seq`) in `schema.resources`; (0, 0) before the table exists.
async fn progress(db: &DatabaseConnection, schema: &str, last_seq: usize) -> (i64, i64) {
    let sql = format!(
        "SELECT count(*), count(*) FILTER (WHERE (value->>'seq')::bigint = {last_seq}) FROM \"{schema}\".resources"
    );
    match db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql)).await {
        Ok(Some(row)) => (row.try_get_by_index::<i64>(0).unwrap_or(0), row.try_get_by_index::<i64>(1).unwrap_or(0)),
        _ => (0, 0),
    }
}

/// The store baseline: the same rows written with the same guarded upsert Conveyor issues,
/// one statement per event, `tasks` tasks over a pool of `tasks` connections; each task owns
/// a slice of the devices and writes their events in order. Returns seconds.
async fn raw_pg(
    url: &str,
    schema: &str,
    records: Arc<Vec<Prepared>>,
    devices: usize,
    tasks: usize,
) -> anyhow::Result<f64> {
    let db = connect_pg(url, tasks as u32).await?;
    db.execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).await?;
    db.execute_unprepared(&format!(
        "CREATE TABLE IF NOT EXISTS \"{schema}\".resources (id varchar NOT NULL PRIMARY KEY, \
         value jsonb NOT NULL, last_offset bigint NOT NULL, last_partition integer, updated_at timestamptz NOT NULL)"
    ))
    .await?;
    let sql = Arc::new(format!(
        "INSERT INTO \"{schema}\".resources (id, value, last_offset, last_partition, updated_at) \
         VALUES ($1, $2, $3, 0, $4) ON CONFLICT (id) DO UPDATE SET value = excluded.value, \
         last_offset = excluded.last_offset, last_partition = excluded.last_partition, updated_at = excluded.updated_at \
         WHERE \"{schema}\".resources.last_partition IS NULL \
         OR \"{schema}\".resources.last_partition <> excluded.last_partition \
         OR \"{schema}\".resources.last_offset < excluded.last_offset"
    ));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for t in 0..tasks {
        let (db, sql, records) = (db.clone(), sql.clone(), records.clone());
        set.spawn(async move {
            // Records are in offset order and a device belongs to one task, so each device's
            // events are written in order.
            for (n, r) in records.iter().enumerate().filter(|(n, _)| (n % devices) % tasks == t) {
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
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined??;
    }
    let secs = started.elapsed().as_secs_f64();
    db.close().await?;
    Ok(secs)
}

struct ConveyorRun {
    total_s: f64,
    startup_s: f64,
    first_row_s: Option<f64>,
    upserts: Option<f64>,
    processed: Option<f64>,
    clean_exit: bool,
    /// From the listening line until done.
    cpu: CpuUsage,
}

async fn conveyor(args: &ProcessingArgs, id: &str, topic: &str, last_seq: usize) -> anyhow::Result<ConveyorRun> {
    let spec = DaemonSpec {
        bin: daemon::conveyor_bin(args.conveyor_bin.as_deref())?,
        backends: Backends::Real {
            brokers: args.brokers.clone(),
            pg_url: args.pg_url.clone(),
            redis_url: args.redis_url.clone(),
        },
        id: id.to_string(),
        topic_in: Some(topic.to_string()),
        extra_env: vec![("CONVEYOR_LOG__PARTITIONS".into(), args.partitions.to_string())],
    };
    let poll_db = connect_pg(&args.pg_url, 2).await?;
    let started = Instant::now();
    let mut daemon = spec.spawn()?;
    let startup_s = daemon.startup.as_secs_f64();
    let cpu_before = CpuSample::take(Some(daemon.pid()));
    let limit = Duration::from_secs(args.timeout);
    let mut first_row_s = None;
    let done = loop {
        let (rows, at_last) = progress(&poll_db, id, last_seq).await;
        if rows > 0 && first_row_s.is_none() {
            first_row_s = Some(started.elapsed().as_secs_f64());
        }
        if at_last as usize >= args.devices {
            break Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > limit {
            break Err(anyhow::anyhow!(
                "conveyor wrote {at_last} of {} final rows ({rows} rows) within {limit:?}; log tail:\n{}",
                args.devices,
                daemon.log_tail(30)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cpu = CpuSample::take(Some(daemon.pid())).since(&cpu_before);
    let metrics = daemon.metrics().await;
    let clean_exit = daemon.terminate(Duration::from_secs(30)).await;
    drop(daemon);
    drop_schema(&poll_db, id).await;
    let _ = poll_db.close().await;
    Ok(ConveyorRun {
        total_s: done?,
        startup_s,
        first_row_s,
        upserts: daemon::metric_sum(&metrics, "conveyor_store_batch_rows_sum", &["upsert_resources"]),
        processed: daemon::metric_sum(&metrics, "conveyor_partition_records_processed", &[]),
        clean_exit,
        cpu,
    })
}

pub async fn run(args: ProcessingArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.events == 0 || !args.events.is_multiple_of(args.devices) {
        bail!("--events must be a positive multiple of --devices");
    }
    let last_seq = args.events / args.devices;
    let id = report::unique_id("bench");
    let topic = format!("{id}-events-input");
    let dlq = format!("{id}-events-dlq");
    let limit = Duration::from_secs(args.timeout);
    println!(
        "processing: {} events over {} devices ({} each), {} partitions, brokers {}",
        args.events, args.devices, last_seq, args.partitions, args.brokers
    );

    create_topics(&args.brokers, &[topic.clone(), dlq.clone()], args.partitions).await?;
    let records = Arc::new(prepare(args.events, args.devices)?);
    eprintln!("  pre-filling {topic}…");
    let prefill_started = Instant::now();
    prefill(&args.brokers, &topic, &records).await?;
    let prefill_s = prefill_started.elapsed().as_secs_f64();
    eprintln!("  pre-filled in {prefill_s:.2}s");

    eprintln!("  baseline: raw rdkafka consumer…");
    let (brokers, t, group, n) = (args.brokers.clone(), topic.clone(), format!("{id}-raw-consumer"), args.events);
    let before = CpuSample::take(None);
    let (raw_s, raw_first_s) =
        tokio::task::spawn_blocking(move || raw_consume(&brokers, &t, &group, n, limit)).await??;
    let raw_cpu = CpuSample::take(None).since(&before);

    let raw_pg_s = if args.no_raw_pg {
        None
    } else {
        eprintln!("  baseline: raw PostgreSQL upserts ({} tasks)…", args.pg_tasks);
        let schema = format!("{id}_raw");
        let before = CpuSample::take(None);
        let result = raw_pg(&args.pg_url, &schema, records.clone(), args.devices, args.pg_tasks)
            .await
            .map(|s| (s, CpuSample::take(None).since(&before)));
        if let Ok(db) = connect_pg(&args.pg_url, 1).await {
            drop_schema(&db, &schema).await;
            let _ = db.close().await;
        }
        Some(result?)
    };

    eprintln!("  conveyor daemon…");
    let conveyor_run = conveyor(&args, &id, &topic, last_seq).await;
    delete_topics(&args.brokers, &[topic.clone(), dlq.clone()]).await;
    let c = conveyor_run?;

    let events = args.events as f64;
    let raw_rate = events / raw_s;
    let conveyor_rate = events / c.total_s;
    let conveyor_rate_listening = events / (c.total_s - c.startup_s).max(1e-9);
    let raw_pg_cpu = raw_pg_s.map(|(_, cpu)| cpu);
    let raw_pg_s = raw_pg_s.map(|(s, _)| s);
    let raw_pg_rate = raw_pg_s.map(|s| events / s);
    println!();
    let mut rows = vec![vec![
        "raw rdkafka consumer (decode only)".to_string(),
        format!("{raw_s:.2}"),
        thousands(raw_rate),
        "1.000".into(),
        format!("{:.0}", raw_cpu.machine_busy_pct),
    ]];
    if let (Some(s), Some(rate)) = (raw_pg_s, raw_pg_rate) {
        rows.push(vec![
            format!("raw PostgreSQL upserts ({} tasks)", args.pg_tasks),
            format!("{s:.2}"),
            thousands(rate),
            format!("{:.3}", rate / raw_rate),
            raw_pg_cpu.map(|c| format!("{:.0}", c.machine_busy_pct)).unwrap_or_default(),
        ]);
    }
    rows.push(vec![
        "conveyor (from spawn)".into(),
        format!("{:.2}", c.total_s),
        thousands(conveyor_rate),
        format!("{:.3}", conveyor_rate / raw_rate),
        String::new(),
    ]);
    rows.push(vec![
        "conveyor (from listening line)".into(),
        format!("{:.2}", c.total_s - c.startup_s),
        thousands(conveyor_rate_listening),
        format!("{:.3}", conveyor_rate_listening / raw_rate),
        format!("{:.0}", c.cpu.machine_busy_pct),
    ]);
    report::table(&["pipeline", "seconds", "events/s", "vs raw consumer", "machine busy %"], &rows);
    if let Some(p) = c.cpu.process_pct {
        println!("  conveyor process CPU after listening: {p:.0}% of one core");
    }
    if let Some(rate) = raw_pg_rate {
        println!("  ratio conveyor/raw PostgreSQL upserts: {:.3}", conveyor_rate / rate);
    }
    if let Some(u) = c.upserts {
        println!("  conveyor store upserts: {} for {} events (coalescing)", thousands(u), thousands(events));
    }

    let body = json!({
        "passed": true,
        "config": {
            "events": args.events,
            "devices": args.devices,
            "events_per_device": last_seq,
            "partitions": args.partitions,
            "brokers": args.brokers,
            "cache": if args.redis_url.is_some() { "redis" } else { "memory" },
            "record_format": "conveyor_devices::DeviceEvent as JSON, key = device_id, headers traceparent + x-request-id, payload {\"seq\": n}",
        },
        "prefill_s": round(prefill_s, 3),
        "baseline": {
            "name": "raw rdkafka BaseConsumer, fresh group, all partitions, serde_json decode of each DeviceEvent",
            "seconds": round(raw_s, 3),
            "seconds_to_first_record": round(raw_first_s, 3),
            "events_per_sec": round(raw_rate, 1),
            "cpu_during_run": raw_cpu.to_json(),
        },
        "raw_postgres": raw_pg_s.map(|s| json!({
            "name": format!("single-row guarded upserts (same SQL shape as Conveyor), {} tasks, pool of {}", args.pg_tasks, args.pg_tasks),
            "seconds": round(s, 3),
            "events_per_sec": round(events / s, 1),
            "cpu_during_run": raw_pg_cpu.map(CpuUsage::to_json),
        })),
        "conveyor": {
            "seconds_from_spawn": round(c.total_s, 3),
            "seconds_to_listening": round(c.startup_s, 3),
            "seconds_to_first_row": c.first_row_s.map(|s| round(s, 3)),
            "events_per_sec": round(conveyor_rate, 1),
            "events_per_sec_after_listening": round(conveyor_rate_listening, 1),
            "store_upserts": c.upserts,
            "records_processed_metric": c.processed,
            "clean_shutdown": c.clean_exit,
            "cpu_after_listening": c.cpu.to_json(),
            "store_max_connections": "default (store.max_connections = 10)",
        },
        "ratio_conveyor_over_raw_consumer": round(conveyor_rate / raw_rate, 4),
        "ratio_conveyor_over_raw_postgres": raw_pg_rate.map(|r| round(conveyor_rate / r, 4)),
        "notes": [
            "Conveyor's time runs from spawning the daemon (process start, store connect + migrations, \
             consumer-group join) until every device's row holds its last seq, polled from PostgreSQL every 50 ms.",
            "The raw consumer's time runs from creating the consumer (group join included) until it decoded every record.",
            "Conveyor coalesces queued records of one device into one upsert (max_coalesce 100), so with a \
             pre-filled topic it issues fewer store writes than events (see store_upserts); the raw PostgreSQL \
             baseline writes every event.",
            "Each Conveyor write also deletes the device's cache entry (Redis when configured).",
        ],
    });
    let path = report::write("processing", body)?;
    println!("  wrote {}", path.display());
    Ok(())
}
