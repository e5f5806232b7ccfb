//! Conveyor's test kit: what the integration suite, the benchmarks and the fuzz run share to
//! start the `conveyor` daemon (port 0, a private data directory, unique topics, schema and
//! key prefix, inherited `CONVEYOR_*` variables dropped), wait for it, mint its tokens, and
//! start services of a test's own. It does not link the daemon: callers pass its binary.

mod backends;
mod daemon;
mod error;
mod names;
pub mod private;
pub mod sink;
mod token;

pub use backends::Backends;
pub use daemon::{Daemon, READY_TIMEOUT, START_TIMEOUT, command, tail};
pub use error::Error;
pub use names::Names;
pub use token::{mint, now_secs, sign};

/// A port nobody listens on right now (the kernel's pick), for services started next.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Whether this process runs as root (services such as PostgreSQL then run as another user).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// Polls `check` every 100 ms until it holds (true) or `within` passes (false).
pub async fn eventually<F, Fut>(within: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = std::time::Instant::now();
    loop {
        if check().await {
            return true;
        }
        if started.elapsed() > within {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
