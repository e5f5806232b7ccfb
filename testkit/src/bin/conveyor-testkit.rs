//! `conveyor-testkit`: the test kit for shell scripts (scripts/fuzz.sh).
//!
//! `daemon` starts `conveyor serve` the way the integration suite does, prints `BASE=URL` and
//! `PID=PID` once it is ready, and keeps it running until this process gets SIGTERM or SIGINT,
//! which it passes on (then waits for the daemon's drain). `token` prints a signed token.
//! `sink` is a webhook receiver (POST /ok/... 204, other POSTs 503) that prints its port.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use conveyor_testkit::{Daemon, READY_TIMEOUT, command, mint};

#[derive(Parser)]
#[command(name = "conveyor-testkit", about = "Start a conveyor daemon or mint its tokens (for scripts)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start `conveyor serve` on port 0 in DATA_DIR; print BASE= and PID= when ready.
    Daemon {
        #[arg(long)]
        binary: PathBuf,
        /// Working and data directory (created when missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// The daemon's stderr (its log) is appended here.
        #[arg(long)]
        log: PathBuf,
        /// KEY=VALUE for the daemon's environment (repeatable); nothing CONVEYOR_* is inherited.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Seconds the daemon gets to drain after SIGTERM before SIGKILL.
        #[arg(long, default_value_t = 45)]
        stop_timeout: u64,
    },
    /// A webhook sink on 127.0.0.1: prints its port, then answers POST /ok/... 204 and any
    /// other POST 503 until killed; logs each request on stderr.
    Sink {
        /// 0 picks a free port.
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Print an HS256 token with `sub`, `roles` and `exp`.
    Token {
        #[arg(long)]
        secret: String,
        #[arg(long)]
        sub: String,
        /// Comma-separated roles.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: i64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Daemon { binary, data_dir, log, set, stop_timeout } => {
            daemon(binary, data_dir, log, set, Duration::from_secs(stop_timeout)).await
        }
        Cmd::Sink { port } => conveyor_testkit::sink::serve(port, |p| println!("{p}")).await.map_err(|e| report(&e)),
        Cmd::Token { secret, sub, roles, ttl_secs } => {
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            mint(&secret, &sub, &roles, ttl_secs).map(|t| println!("{t}")).map_err(|e| report(&e))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// Prints an error with its causes; the exit code for "could not start".
fn report(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("conveyor-testkit: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
    ExitCode::from(2)
}

async fn daemon(
    binary: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    set: Vec<String>,
    stop_timeout: Duration,
) -> Result<(), ExitCode> {
    let mut env = Vec::new();
    for kv in &set {
        let Some((k, v)) = kv.split_once('=') else {
            eprintln!("conveyor-testkit: --set {kv}: expected KEY=VALUE");
            return Err(ExitCode::from(64));
        };
        env.push((k.to_string(), v.to_string()));
    }
    if let Err(e) = std::fs::create_dir_all(&data_dir) {
        return Err(report(&e));
    }
    let mut d = Daemon::spawn(command(&binary, &data_dir, &env), &log).map_err(|e| report(&e))?;
    d.wait_ready(READY_TIMEOUT).await.map_err(|e| report(&e))?;
    println!("BASE={}\nPID={}", d.base, d.pid());
    let (Ok(mut term), Ok(mut int)) = (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) else {
        eprintln!("conveyor-testkit: cannot install signal handlers");
        return Err(ExitCode::from(2));
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(status) = d.try_wait() {
                    eprintln!("conveyor-testkit: the daemon exited on its own ({status})");
                    return Err(ExitCode::from(1));
                }
            }
        }
    }
    eprintln!("conveyor-testkit: stopping the daemon (pid {})", d.pid());
    match d.terminate(stop_timeout).await {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => {
            eprintln!("conveyor-testkit: the daemon exited with {status}");
            Err(ExitCode::from(1))
        }
        Err(e) => Err(report(&e)),
    }
}
