//! The suite's side of starting a daemon: which backends (`CONVEYOR_IT_BACKENDS`), the
//! settings that keep tests quick, and an HTTP client. Spawning, names, tokens and private
//! services come from the test kit (conveyor-testkit), shared with the benchmarks and fuzz.sh.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub use conveyor_testkit::{Names, eventually, tail};

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

/// Tests that need the real services are named `real_*`: the embedded phase leaves them out
/// by that name (scripts/test.sh), so nextest lists them as skipped. One run without real
/// backends anyway (a filter mistake, a bare `cargo test`) fails here instead of passing.
pub fn real_only(test: &str) {
    assert!(
        Backend::from_env() == Backend::Real,
        "{test} needs the real backends (CONVEYOR_IT_BACKENDS=real, scripts/services.sh up); \
         the embedded phase skips real_* tests (.config/nextest.toml, profile embedded)"
    );
}

/// The counterpart for tests of the embedded backends themselves, named `embedded_*`.
pub fn embedded_only(test: &str) {
    assert!(
        Backend::from_env() == Backend::Embedded,
        "{test} tests the embedded backends; the real phase skips embedded_* tests (.config/nextest.toml, profile real)"
    );
}

/// How to start a daemon.
pub struct Opts {
    pub backend: Backend,
    pub names: Names,
    pub data_dir: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    /// Variables the harness would set that this daemon must not get.
    pub removed: Vec<String>,
    /// The temporary directory handed over from a stopped daemon, kept alive.
    keep: Option<tempfile::TempDir>,
}

impl Opts {
    pub fn new() -> Self {
        Opts {
            backend: Backend::from_env(),
            names: Names::unique("it"),
            data_dir: None,
            env: Vec::new(),
            removed: Vec::new(),
            keep: None,
        }
    }

    /// A restart of `stopped`: same names, same data directory (which it now keeps alive).
    pub fn restart_of(stopped: &mut Daemon) -> Self {
        Opts {
            backend: stopped.backend,
            names: stopped.names.clone(),
            data_dir: Some(stopped.data_dir.clone()),
            env: stopped.env.clone(),
            removed: stopped.removed.clone(),
            keep: stopped._tmp.take(),
        }
    }
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }
    /// Leaves out a variable the harness sets (e.g. the JWT secret, to give it another way).
    pub fn env_remove(mut self, key: &str) -> Self {
        self.removed.push(key.to_string());
        self
    }
}

pub struct Daemon {
    process: conveyor_testkit::Daemon,
    pub base: String,
    pub data_dir: PathBuf,
    pub names: Names,
    backend: Backend,
    env: Vec<(String, String)>,
    removed: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Settings that keep the suite quick and its many logins from one address unthrottled.
const QUICK: &[(&str, &str)] = &[
    ("CONVEYOR_TELEMETRY__LOG_FORMAT", "json"),
    ("CONVEYOR_RETRY__BASE_MS", "50"),
    ("CONVEYOR_RETRY__CAP_MS", "400"),
    ("CONVEYOR_PROCESSING__COMMIT_INTERVAL_MS", "200"),
    ("CONVEYOR_SHUTDOWN__GRACE_PERIOD_MS", "15000"),
    // Many tests log in from 127.0.0.1; the rate-limit tests set their own quotas.
    ("CONVEYOR_RATE_LIMIT__AUTH_PER_IP", "{per_period=1000,period_secs=1,burst=1000}"),
    ("CONVEYOR_RATE_LIMIT__TRUSTED_PROXIES", r#"["127.0.0.1"]"#),
    // Cheaper hashing keeps the suite quick; the production cost is in the unit tests' reach.
    ("CONVEYOR_AUTH__PASSWORD__ARGON2_MEMORY_KIB", "4096"),
    ("CONVEYOR_AUTH__PASSWORD__ARGON2_ITERATIONS", "1"),
    // Webhook sinks live on loopback; retries come quickly.
    ("CONVEYOR_WEBHOOKS__ALLOW_LOOPBACK", "true"),
    ("CONVEYOR_WEBHOOKS__POLL_INTERVAL_MS", "100"),
    ("CONVEYOR_WEBHOOKS__RETRY_SCHEDULE_MS", "[0, 100, 100, 100, 100]"),
    ("CONVEYOR_WEBHOOKS__RETRY_JITTER", "0"),
    ("CONVEYOR_WEBHOOKS__BASIC_AUTH_USERNAME", "admin"),
    ("CONVEYOR_WEBHOOKS__BASIC_AUTH_PASSWORD", "admin"),
];

/// The daemon's command for `opts` (no subcommand yet), inherited `CONVEYOR_*` variables removed.
pub fn command(opts: &Opts, data_dir: &Path) -> Command {
    let mut env: Vec<(String, String)> = vec![("CONVEYOR_AUTH__JWT_SECRET".into(), SECRET.into())];
    env.extend(QUICK.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env.extend(opts.names.env());
    if opts.backend == Backend::Real {
        let backends = conveyor_testkit::Backends::real_from_env().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(&backends, conveyor_testkit::Backends::Real { redis_url: Some(_), .. }),
            "CONVEYOR_TEST_REDIS_URL must be set for real backends (scripts/services.sh env)"
        );
        env.extend(backends.env(&opts.names));
    }
    env.extend(opts.env.iter().cloned());
    env.retain(|(k, _)| !opts.removed.contains(k));
    conveyor_testkit::command(&daemon_bin(), data_dir, &env)
}

/// The daemon under test: `CONVEYOR_BIN` when set (several work trees sharing one target
/// directory each test a copy of their own build), else the one cargo built beside this test.
fn daemon_bin() -> std::path::PathBuf {
    std::env::var_os("CONVEYOR_BIN").map_or_else(|| env!("CARGO_BIN_EXE_conveyor").into(), Into::into)
}

impl Daemon {
    /// The daemon's store, opened from the test (the daemon stopped or running): its data
    /// directory, or its schema on the real PostgreSQL.
    pub async fn open_store(&self) -> conveyor_actors::store::Store {
        let mut config = conveyor_actors::config::Config { data_dir: self.data_dir.clone(), ..Default::default() };
        if self.backend() == Backend::Real {
            let backends = conveyor_testkit::Backends::real_from_env().unwrap_or_else(|e| panic!("{e}"));
            let conveyor_testkit::Backends::Real { pg_url, .. } = backends else { unreachable!() };
            config.store.url = pg_url;
            config.store.schema = self.names.id.clone();
        }
        conveyor_actors::store::Store::connect(&config).await.unwrap_or_else(|e| panic!("opening the store: {e}"))
    }

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
        let process = conveyor_testkit::Daemon::spawn(command(&opts, &data_dir), &data_dir.join("daemon.log"))
            .unwrap_or_else(|e| panic!("{e}"));
        let daemon = Daemon {
            base: process.base.clone(),
            process,
            data_dir,
            names: opts.names,
            backend: opts.backend,
            env: opts.env,
            removed: opts.removed,
            _tmp: tmp,
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        daemon.wait_ready().await;
        daemon
    }

    /// Waits until `/ready` is 200 and this daemon owns at least one partition.
    pub async fn wait_ready(&self) {
        if let Err(e) = self.process.wait_ready(conveyor_testkit::READY_TIMEOUT).await {
            panic!("{e}");
        }
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
            removed: self.removed.clone(),
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
        self.process.terminate(within).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// `kill -9`: no chance to drain or commit.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// `kill -9` through a shared reference (while load generators still hold the daemon);
    /// [`Daemon::kill9`] or drop reaps it later.
    pub fn send_kill9(&self) {
        self.process.signal("KILL");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon log ({}) ---\n{}", self.base, self.log_tail(40));
        }
    }
}

/// A token as seed 003's README mints it with PyJWT: HS256, `sub`, `roles`, `exp`, nothing else.
pub fn token(sub: &str, roles: &[&str]) -> String {
    conveyor_testkit::mint(SECRET, sub, roles, 3600).unwrap_or_else(|e| panic!("{e}"))
}

pub fn sign(claims: &Value) -> String {
    conveyor_testkit::sign(SECRET, claims).unwrap_or_else(|e| panic!("{e}"))
}

pub fn chrono_now() -> i64 {
    conveyor_testkit::now_secs()
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
