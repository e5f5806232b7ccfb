//! Services of one test's own (PostgreSQL, a Kafka-protocol broker) that the test may stop
//! and start without disturbing the tests running beside it. Test fixtures: a service that
//! does not come up panics with its log, which is the test's failure message.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::{eventually, free_port, is_root, tail};

/// Runs a blocking command off the async runtime; its exit status, or why it did not run.
async fn run_blocking(mut cmd: Command) -> Result<ExitStatus, String> {
    let what = format!("{cmd:?}");
    tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status())
        .await
        .map_err(|e| format!("{what}: {e}"))?
        .map_err(|e| format!("{what}: {e}"))
}

/// A PostgreSQL cluster of one test's own (initdb into a temporary directory, trust auth on
/// 127.0.0.1, a free port): stopping it disturbs no other test. Needs the Debian
/// `postgresql` package (scripts/services.sh installs it); as root, the server runs as
/// user `postgres`.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl PrivatePostgres {
    fn pg_bindir() -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|rd| {
                rd.filter_map(Result::ok).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect()
            })
            .unwrap_or_default();
        // Highest major version last ("9" < "15" as numbers, not as strings).
        dirs.sort_by_key(|p| {
            p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
        });
        dirs.pop().unwrap_or_else(|| panic!("no PostgreSQL under /usr/lib/postgresql/*/bin (scripts/services.sh up)"))
    }

    /// `tool` of the PostgreSQL installation, run as the `postgres` user when we are root.
    fn tool(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// initdb, start, and create `databases` (owned by the superuser `postgres`).
    pub async fn start_new(databases: &[&str]) -> PrivatePostgres {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        std::fs::create_dir_all(dir.path().join("sock")).unwrap_or_else(|e| panic!("sock dir: {e}"));
        if is_root() {
            let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
            assert!(chown.is_ok_and(|s| s.success()), "chown of {} to postgres failed", dir.path().display());
        }
        let pg = PrivatePostgres { bin: Self::pg_bindir(), port: free_port(), dir };
        let mut initdb = pg.tool("initdb");
        initdb.arg("-D").arg(pg.data()).args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--auth=trust",
        ]);
        let status = run_blocking(initdb).await;
        assert!(status.as_ref().is_ok_and(ExitStatus::success), "initdb: {status:?}");
        pg.start().await;
        for db in databases {
            let mut psql = pg.tool("psql");
            psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
                .arg("-p")
                .arg(pg.port.to_string())
                .arg("-c")
                .arg(format!("CREATE DATABASE \"{db}\""));
            let status = run_blocking(psql).await;
            assert!(status.as_ref().is_ok_and(ExitStatus::success), "CREATE DATABASE {db}: {status:?}");
        }
        pg
    }

    /// `postgres://` URL of `db` for the superuser (trust auth, no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn start(&self) {
        let mut ctl = self.tool("pg_ctl");
        ctl.arg("-D").arg(self.data()).arg("-l").arg(self.dir.path().join("postgres.log")).args([
            "-w",
            "-t",
            "60",
            "-o",
            &format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=100",
                self.port,
                self.dir.path().join("sock").display()
            ),
            "start",
        ]);
        let status = run_blocking(ctl).await;
        assert!(status.as_ref().is_ok_and(ExitStatus::success), "pg_ctl start: {status:?}\n{}", self.log_tail(20));
    }

    /// `pg_ctl stop -m fast`: open connections are terminated, new ones refused.
    pub async fn stop(&self) {
        let mut ctl = self.tool("pg_ctl");
        ctl.arg("-D").arg(self.data()).args(["-m", "fast", "-w", "-t", "60", "stop"]);
        let status = run_blocking(ctl).await;
        assert!(status.as_ref().is_ok_and(ExitStatus::success), "pg_ctl stop: {status:?}\n{}", self.log_tail(20));
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.path().join("postgres.log"), lines)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut ctl = self.tool("pg_ctl");
        let _ = ctl
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A nisshi broker of one test's own, on a free port, run from an empty directory (it
/// reads `./.env`), with the given storage engine URL; `kill9` and `start` take it down
/// and up again on the same port.
pub struct PrivateBroker {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
    storage: String,
}

impl PrivateBroker {
    fn binary() -> PathBuf {
        let cache = std::env::var("CONVEYOR_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/conveyor"));
        cache.join("nisshi-0.8.1/bin/nisshi")
    }

    pub async fn start_new(storage: &str) -> PrivateBroker {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        std::fs::create_dir_all(dir.path().join("run")).unwrap_or_else(|e| panic!("run dir: {e}"));
        let mut broker = PrivateBroker { dir, child: None, port: free_port(), storage: storage.to_string() };
        broker.start().await;
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker and waits until it accepts connections.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nisshi.log"))
            .unwrap_or_else(|e| panic!("broker log: {e}"));
        let err = log.try_clone().unwrap_or_else(|e| panic!("broker log: {e}"));
        let child = Command::new(Self::binary())
            .current_dir(self.dir.path().join("run"))
            .args(["broker", "--listener-url", &listener, "--advertised-listener-url", &listener])
            .args(["--storage-engine", &self.storage, "--group-initial-rebalance-delay", "0s"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", Self::binary().display()));
        self.child = Some(child);
        let addr = self.brokers();
        let up = eventually(Duration::from_secs(30), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await;
        assert!(up, "broker did not listen on {addr}; log:\n{}", self.log_tail(30));
    }

    /// SIGKILL: no clean shutdown of anything the broker holds.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.path().join("nisshi.log"), lines)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- broker log (:{}) ---\n{}", self.port, self.log_tail(30));
        }
        self.kill9();
    }
}
