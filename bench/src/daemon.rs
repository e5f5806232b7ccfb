//! Starting the real `conveyor` daemon the way tests/it/harness.rs does: port 0, its own
//! data directory as working directory, inherited `CONVEYOR_*` variables removed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::report::{TempDir, workspace_root};

/// The JWT secret every benchmark daemon is started with.
pub const SECRET: &str = "bench-secret";

/// Where the release `conveyor` binary is: `--conveyor-bin`, else next to this binary,
/// else `target/release/conveyor` in the workspace.
pub fn conveyor_bin(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let sibling = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("conveyor")));
    let candidates = sibling.into_iter().chain([workspace_root().join("target/release/conveyor")]);
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("no conveyor binary found; build it with `cargo build --release -p conveyor-engine`")
}

/// The backends a daemon talks to.
#[derive(Debug, Clone)]
pub enum Backends {
    /// Embedded log, SQLite, in-memory cache (all under the data directory).
    Embedded,
    /// Kafka + PostgreSQL + Redis (or the in-memory cache when no Redis URL is given).
    Real { brokers: String, pg_url: String, redis_url: Option<String> },
}

impl Backends {
    /// The real backends from the variables `scripts/services.sh env` prints.
    pub fn real_from_env() -> anyhow::Result<Self> {
        let get = |k: &str| {
            std::env::var(k).with_context(|| format!("{k} must be set (eval \"$(scripts/services.sh env)\")"))
        };
        Ok(Backends::Real {
            brokers: get("CONVEYOR_TEST_KAFKA_BROKERS")?,
            pg_url: get("CONVEYOR_TEST_PG_URL")?,
            redis_url: std::env::var("CONVEYOR_TEST_REDIS_URL").ok(),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backends::Embedded => "embedded",
            Backends::Real { .. } => "real",
        }
    }
}

/// How to start one daemon.
pub struct DaemonSpec {
    pub bin: PathBuf,
    pub backends: Backends,
    /// Prefix of topics, group, schema and cache keys, unique per run.
    pub id: String,
    /// Overrides the input topic name (default `{id}-events-input`).
    pub topic_in: Option<String>,
    pub extra_env: Vec<(String, String)>,
}

pub struct Daemon {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// From spawn to the `conveyor listening on` line.
    pub startup: Duration,
    pub data_dir: TempDir,
}

impl DaemonSpec {
    pub fn topic_in(&self) -> String {
        self.topic_in.clone().unwrap_or_else(|| format!("{}-events-input", self.id))
    }

    fn command(&self, data_dir: &Path) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (k, _) in std::env::vars() {
            if k.starts_with("CONVEYOR_") {
                cmd.env_remove(k);
            }
        }
        let id = &self.id;
        cmd.current_dir(data_dir)
            .env("CONVEYOR_DATA_DIR", data_dir)
            .env("CONVEYOR_HTTP__ADDR", "127.0.0.1:0")
            .env("CONVEYOR_AUTH__JWT_SECRET", SECRET)
            // One load generator on one IP with one token: quotas would measure themselves.
            .env("CONVEYOR_RATE_LIMIT__ENABLED", "false")
            .env("CONVEYOR_TELEMETRY__LOG_FILTER", "warn")
            .env("CONVEYOR_TELEMETRY__LOG_FORMAT", "json")
            .env("CONVEYOR_LOG__TOPICS__EVENTS_INPUT", self.topic_in())
            .env("CONVEYOR_LOG__TOPICS__EVENTS_DLQ", format!("{id}-events-dlq"))
            .env("CONVEYOR_LOG__GROUPS__EVENTS", format!("{id}-events-processor"));
        if let Backends::Real { brokers, pg_url, redis_url } = &self.backends {
            cmd.env("CONVEYOR_LOG__BACKEND", "kafka")
                .env("CONVEYOR_LOG__KAFKA__BROKERS", brokers)
                .env("CONVEYOR_LOG__KAFKA__SESSION_TIMEOUT_MS", "6000")
                .env("CONVEYOR_STORE__URL", pg_url)
                .env("CONVEYOR_STORE__SCHEMA", id)
                .env("CONVEYOR_CACHE__URL", redis_url.as_deref().unwrap_or("memory"))
                .env("CONVEYOR_CACHE__KEY_PREFIX", format!("{id}:"));
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Spawns `conveyor serve` and waits for its listening line (up to 90 s).
    pub fn spawn(&self) -> anyhow::Result<Daemon> {
        let data_dir = TempDir::new("conveyor-bench-")?;
        let log_path = data_dir.path().join("daemon.log");
        let stderr = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let started = Instant::now();
        let mut child = self
            .command(data_dir.path())
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let stdout = child.stdout.take().context("daemon stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("conveyor listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(base) => Ok(Daemon { child, base, startup: started.elapsed(), data_dir }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("conveyor did not start; log tail:\n{}", tail(&log_path, 30))
            }
        }
    }
}

impl Daemon {
    /// Waits until `/ready` is 200 and the daemon owns at least one partition.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let uri: hyper::Uri = format!("{}/ready", self.base).parse()?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(resp) = client.get(uri.clone()).await {
                let ok = resp.status() == hyper::StatusCode::OK;
                let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if ok && value["partitions"].as_array().is_some_and(|p| !p.is_empty()) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("conveyor never became ready; log tail:\n{}", self.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The body of `GET /metrics` (empty on failure).
    pub async fn metrics(&self) -> String {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let Ok(uri) = format!("{}/metrics", self.base).parse::<hyper::Uri>() else { return String::new() };
        let Ok(resp) = client.get(uri).await else { return String::new() };
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        String::from_utf8_lossy(&body).into_owned()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.data_dir.path().join("daemon.log"), lines)
    }

    /// SIGTERM, then up to `within` for a clean exit, then SIGKILL. True on a clean exit.
    pub async fn terminate(&mut self, within: Duration) -> bool {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sums the samples of a Prometheus metric family whose line contains every `filter`.
pub fn metric_sum(text: &str, prefix: &str, filters: &[&str]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(prefix) && filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// An HS256 token for `sub` with `roles`, valid for an hour, signed with [`SECRET`].
pub fn token(sub: &str, roles: &[&str]) -> anyhow::Result<String> {
    let exp = chrono::Utc::now().timestamp() + 3600;
    let claims = serde_json::json!({"sub": sub, "roles": roles, "exp": exp});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}
