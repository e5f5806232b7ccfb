//! One `conveyor serve` process: spawned with a clean environment, found through the
//! `conveyor listening on` line it prints once its port is bound, ready once `/ready` is 200
//! and it owns a partition.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::Error;

/// How long a daemon may take to print its listening line (migrations, a cold cache).
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long after listening it may take to own its partitions.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

const LISTENING: &str = "conveyor listening on ";

/// `bin` with `env` in `data_dir` (also its working directory, so no `./config.toml` of the
/// caller's is read), on port 0, every inherited `CONVEYOR_*` variable removed: a developer's
/// backends, ports or secrets never reach it.
pub fn command<K: AsRef<str>, V: AsRef<str>>(bin: &Path, data_dir: &Path, env: &[(K, V)]) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CONVEYOR_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(data_dir).env("CONVEYOR_DATA_DIR", data_dir).env("CONVEYOR_HTTP__ADDR", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k.as_ref(), v.as_ref());
    }
    cmd
}

/// A running daemon, killed on drop unless [`Daemon::detach`]ed.
pub struct Daemon {
    child: Option<Child>,
    pid: u32,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// From spawn to the listening line.
    pub startup: Duration,
    log: PathBuf,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Daemon {
    /// Runs `cmd serve` (a [`command`]), its stderr appended to `log`, and waits up to
    /// [`START_TIMEOUT`] for its listening line.
    pub fn spawn(mut cmd: Command, log: &Path) -> Result<Daemon, Error> {
        let io = |what, source| Error::Io { what, path: log.to_path_buf(), source };
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| io("opening", e))?;
        let started = Instant::now();
        let bin = PathBuf::from(cmd.get_program());
        let mut child = cmd
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|source| Error::Spawn { bin, source })?;
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            // Keeps reading after the line, so the daemon never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(addr) = line.strip_prefix(LISTENING) {
                        let _ = tx.send(addr.trim().to_string());
                    }
                }
            });
        }
        let base = rx.recv_timeout(START_TIMEOUT);
        let client = Client::builder(TokioExecutor::new()).build_http();
        let daemon = Daemon {
            child: Some(child),
            pid,
            base: base.clone().unwrap_or_default(),
            startup: started.elapsed(),
            log: log.to_path_buf(),
            client,
        };
        match base {
            Ok(_) => Ok(daemon),
            // Dropping it kills it.
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(Error::NotListening { secs: START_TIMEOUT.as_secs(), log: daemon.log_tail(40) })
            }
            // Its stdout closed: it exited (a bad setting, a backend refusing it).
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Error::Exited { log: daemon.log_tail(40) }),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// `GET path`: the status and body.
    pub async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), Error> {
        self.send(http::Method::GET, path, None, None).await
    }

    /// A request with an optional bearer token and JSON body: the status and body.
    pub async fn send(
        &self,
        method: http::Method,
        path: &str,
        token: Option<&str>,
        json: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let uri = format!("{}{path}", self.base);
        let http_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Http { uri: uri.clone(), source };
        let mut req = http::Request::builder().method(method).uri(&uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match json {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(|e| http_err(Box::new(e)))?)
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).map_err(|e| http_err(Box::new(e)))?;
        let resp = self.client.request(req).await.map_err(|e| http_err(Box::new(e)))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| http_err(Box::new(e)))?.to_bytes();
        Ok((status, body))
    }

    /// Waits until `/ready` is 200 and names at least one owned partition.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((StatusCode::OK, body)) = self.get("/ready").await {
                let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if value["partitions"].as_array().is_some_and(|p| !p.is_empty()) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady { secs: within.as_secs(), log: self.log_tail(40) });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The body of `GET /metrics` (empty on failure).
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.map(|(_, b)| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Sends `SIG<sig>` (e.g. "TERM", "KILL", "STOP") through kill(1): no libc, no unsafe.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.pid.to_string()).status();
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then up to `within` for it to exit; SIGKILL and an error if it does not.
    pub async fn terminate(&mut self, within: Duration) -> Result<ExitStatus, Error> {
        self.signal("TERM");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = self.log_tail(30);
        self.kill9();
        Err(Error::NoExit { secs: within.as_secs(), log })
    }

    /// `kill -9` and reap: no chance to drain or commit.
    pub fn kill9(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Leaves the process running past this value's drop (for a caller that stops it by
    /// pid, such as scripts/fuzz.sh); its pid.
    pub fn detach(mut self) -> u32 {
        self.child = None;
        self.pid
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last `lines` lines of a file (empty when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
