//! Spawns the `conveyor` binary on port 0 with unique topics, group, schema and key
//! prefix per test, against the embedded backends or the real ones (`CONVEYOR_IT_BACKENDS`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub const SECRET: &str = "it-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Real,
}

impl Backend {
    pub fn from_env() -> Self {
        match std::env::var("CONVEYOR_IT_BACKENDS").as_deref() {
            Ok("real") => Backend::Real,
            _ => Backend::Embedded,
        }
    }
}

/// True when the suite runs against real services; tests that need them say so and return.
pub fn real_only(test: &str) -> bool {
    if Backend::from_env() == Backend::Real {
        return true;
    }
    eprintln!("{test}: runs in the real-backend phase (CONVEYOR_IT_BACKENDS=real)");
    false
}

fn env_required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set for real backends (scripts/services.sh env)"))
}

/// Names that make one test's daemons independent of every other test's.
#[derive(Debug, Clone)]
pub struct Names {
    pub id: String,
    pub topic_in: String,
    pub topic_dlq: String,
    pub group: String,
}

impl Names {
    /// `(env var, value)` for the saga's topics and the groups beyond the events group.
    fn saga_env(&self) -> [(&'static str, String); 9] {
        let id = &self.id;
        [
            ("CONVEYOR_LOG__TOPICS__REGISTRATION", format!("{id}-registration")),
            ("CONVEYOR_LOG__TOPICS__LOYALTY", format!("{id}-loyalty")),
            ("CONVEYOR_LOG__GROUPS__LOYALTY", format!("{id}-loyalty")),
            ("CONVEYOR_LOG__GROUPS__IDENTITY", format!("{id}-identity-saga")),
            ("CONVEYOR_DLQ__INDEX_GROUP", format!("{id}-dlq-index")),
            ("CONVEYOR_LOG__TOPICS__NOTIFICATIONS", format!("{id}-notifications")),
            ("CONVEYOR_LOG__GROUPS__WEBHOOKS", format!("{id}-webhooks")),
            ("CONVEYOR_LOG__TOPICS__WORKFLOWS_COMMAND", format!("{id}-workflows.command")),
            ("CONVEYOR_LOG__GROUPS__WORKFLOWS", format!("{id}-workflows")),
        ]
    }
}

impl Names {
    pub fn unique() -> Self {
        let id = format!("it{}", uuid::Uuid::new_v4().simple().to_string().get(..12).unwrap_or("x"));
        Names {
            topic_in: format!("{id}-events-input"),
            topic_dlq: format!("{id}-events-dlq"),
            group: format!("{id}-events-processor"),
            id,
        }
    }
}

/// How to start a daemon.
pub struct Opts {
    pub backend: Backend,
    pub names: Names,
    pub data_dir: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    /// The temporary directory handed over from a stopped daemon, kept alive.
    keep: Option<tempfile::TempDir>,
}

impl Opts {
    pub fn new() -> Self {
        Opts { backend: Backend::from_env(), names: Names::unique(), data_dir: None, env: Vec::new(), keep: None }
    }

    /// A restart of `stopped`: same names, same data directory (which it now keeps alive).
    pub fn restart_of(stopped: &mut Daemon) -> Self {
        Opts {
            backend: stopped.backend,
            names: stopped.names.clone(),
            data_dir: Some(stopped.data_dir.clone()),
            env: stopped.env.clone(),
            keep: stopped._tmp.take(),
        }
    }
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }
}

pub struct Daemon {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub names: Names,
    backend: Backend,
    env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The daemon's environment for `opts`, inherited `CONVEYOR_*` variables removed.
pub fn command(opts: &Opts, data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conveyor"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CONVEYOR_") {
            cmd.env_remove(k);
        }
    }
    let n = &opts.names;
    cmd.current_dir(data_dir)
        .env("CONVEYOR_DATA_DIR", data_dir)
        .env("CONVEYOR_HTTP__ADDR", "127.0.0.1:0")
        .env("CONVEYOR_AUTH__JWT_SECRET", SECRET)
        .env("CONVEYOR_LOG__TOPICS__EVENTS_INPUT", &n.topic_in)
        .env("CONVEYOR_LOG__TOPICS__EVENTS_DLQ", &n.topic_dlq)
        .env("CONVEYOR_LOG__GROUPS__EVENTS", &n.group)
        .env("CONVEYOR_TELEMETRY__LOG_FORMAT", "json")
        .env("CONVEYOR_RETRY__BASE_MS", "50")
        .env("CONVEYOR_RETRY__CAP_MS", "400")
        .env("CONVEYOR_PROCESSING__COMMIT_INTERVAL_MS", "200")
        .env("CONVEYOR_SHUTDOWN__GRACE_PERIOD_MS", "15000")
        // Many tests log in from 127.0.0.1; the rate-limit tests set their own quotas.
        .env("CONVEYOR_RATE_LIMIT__AUTH_PER_IP", "{per_period=1000,period_secs=1,burst=1000}")
        .env("CONVEYOR_RATE_LIMIT__TRUSTED_PROXIES", r#"["127.0.0.1"]"#)
        // Cheaper hashing keeps the suite quick; the production cost is in the unit tests' reach.
        .env("CONVEYOR_AUTH__PASSWORD__ARGON2_MEMORY_KIB", "4096")
        .env("CONVEYOR_AUTH__PASSWORD__ARGON2_ITERATIONS", "1")
        // Webhook sinks live on loopback; retries come quickly.
        .env("CONVEYOR_WEBHOOKS__ALLOW_LOOPBACK", "true")
        .env("CONVEYOR_WEBHOOKS__POLL_INTERVAL_MS", "100")
        .env("CONVEYOR_WEBHOOKS__RETRY_SCHEDULE_MS", "[0, 100, 100, 100, 100]")
        .env("CONVEYOR_WEBHOOKS__RETRY_JITTER", "0")
        .env("CONVEYOR_WEBHOOKS__BASIC_AUTH_USERNAME", "admin")
        .env("CONVEYOR_WEBHOOKS__BASIC_AUTH_PASSWORD", "admin");
    for (k, v) in n.saga_env() {
        cmd.env(k, v);
    }
    if opts.backend == Backend::Real {
        cmd.env("CONVEYOR_LOG__BACKEND", "kafka")
            .env("CONVEYOR_LOG__KAFKA__BROKERS", env_required("CONVEYOR_TEST_KAFKA_BROKERS"))
            .env("CONVEYOR_LOG__KAFKA__SESSION_TIMEOUT_MS", "6000")
            .env("CONVEYOR_STORE__URL", env_required("CONVEYOR_TEST_PG_URL"))
            .env("CONVEYOR_STORE__SCHEMA", &n.id)
            .env("CONVEYOR_CACHE__URL", env_required("CONVEYOR_TEST_REDIS_URL"))
            .env("CONVEYOR_CACHE__KEY_PREFIX", format!("{}:", n.id));
    }
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    cmd
}

impl Daemon {
    pub async fn start(mut opts: Opts) -> Daemon {
        let (tmp, data_dir) = match &opts.data_dir {
            Some(dir) => (opts.keep.take(), dir.clone()),
            None => {
                let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
                let path = tmp.path().to_path_buf();
                (Some(tmp), path)
            }
        };
        std::fs::create_dir_all(&data_dir).unwrap_or_else(|e| panic!("data dir: {e}"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("daemon.log"))
            .unwrap_or_else(|e| panic!("log file: {e}"));
        let mut child = command(&opts, &data_dir)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning conveyor: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("conveyor listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!("daemon did not start; log:\n{}", tail(&data_dir.join("daemon.log"), 40));
            }
        };
        let client = Client::builder(TokioExecutor::new()).build_http();
        let daemon = Daemon {
            child,
            base,
            data_dir,
            names: opts.names,
            backend: opts.backend,
            env: opts.env,
            _tmp: tmp,
            client,
        };
        daemon.wait_ready().await;
        daemon
    }

    /// Waits until `/ready` is 200 and this daemon owns at least one partition.
    pub async fn wait_ready(&self) {
        let ok = eventually(Duration::from_secs(60), || async {
            let (status, body) = self.get("/ready", None).await;
            status == StatusCode::OK && body["partitions"].as_array().is_some_and(|p| !p.is_empty())
        })
        .await;
        assert!(ok, "daemon never became ready; log:\n{}", self.log_tail(40));
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Partitions of the input topic this daemon owns now, from `/ready`.
    pub async fn partitions(&self) -> Vec<String> {
        let (_, body) = self.get("/ready", None).await;
        let prefix = format!("{}/", self.names.topic_in);
        body["partitions"]
            .as_array()
            .map(|a| {
                a.iter().filter_map(|v| v.as_str().filter(|p| p.starts_with(&prefix)).map(str::to_string)).collect()
            })
            .unwrap_or_default()
    }

    /// A `conveyor` tool command with this daemon's configuration (store, cache, names).
    pub fn cli(&self, args: &[&str]) -> Command {
        let opts = Opts {
            backend: self.backend,
            names: self.names.clone(),
            data_dir: Some(self.data_dir.clone()),
            env: self.env.clone(),
            keep: None,
        };
        let mut cmd = command(&opts, &self.data_dir);
        cmd.args(args);
        cmd
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.data_dir.join("daemon.log"), lines)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, http::HeaderMap, Value) {
        let mut req = Request::builder().method(method).uri(format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap_or_else(|e| panic!("request: {e}"));
        let resp = self.client.request(req).await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, headers, value)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (s, _, v) = self.request(Method::GET, path, token, &[], Vec::new()).await;
        (s, v)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let (s, _, v) = self.request(Method::POST, path, token, &[("content-type", "application/json")], bytes).await;
        (s, v)
    }

    pub async fn metrics(&self) -> String {
        let (_, body) = self.get("/metrics", None).await;
        body.as_str().unwrap_or_default().to_string()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        signal(&self.child, "TERM");
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(started.elapsed() < within, "daemon did not exit within {within:?}; log:\n{}", self.log_tail(30));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: no chance to drain or commit.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `kill -9` through a shared reference (while load generators still hold the daemon);
    /// [`Daemon::kill9`] or drop reaps it later.
    pub fn send_kill9(&self) {
        signal(&self.child, "KILL");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon log ({}) ---\n{}", self.base, self.log_tail(40));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status();
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if started.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A token as seed 003's README mints it with PyJWT: HS256, `sub`, `roles`, `exp`, nothing else.
pub fn token(sub: &str, roles: &[&str]) -> String {
    let exp = chrono_now() + 3600;
    sign(&serde_json::json!({"sub": sub, "roles": roles, "exp": exp}))
}

pub fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("sign: {e}"))
}

pub fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

/// The value of a Prometheus sample line `name{...labels containing filter...} value`, summed.
pub fn metric_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

impl Daemon {
    /// A request that reports a failed connection or a timeout instead of panicking: for
    /// load generators that must tell "Conveyor answered badly" from "Conveyor did not answer".
    pub async fn try_post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        within: Duration,
    ) -> Result<(StatusCode, Value), String> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{}", self.base, path))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let req = req.body(Full::new(Bytes::from(bytes))).map_err(|e| format!("request: {e}"))?;
        let answer = async {
            let resp = self.client.request(req).await.map_err(|e| format!("{path}: {e:?}"))?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).map_err(|e| format!("body: {e}"))?;
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
            Ok((status, value))
        };
        tokio::time::timeout(within, answer).await.map_err(|_| format!("{path}: no answer within {within:?}"))?
    }
}

pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}
