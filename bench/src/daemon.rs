//! The benchmarks' daemons, started by the test kit the way the integration suite starts
//! its own (port 0, a private data directory, nothing `CONVEYOR_*` inherited), with rate
//! limits off and quiet logs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
pub use conveyor_testkit::Backends;
use conveyor_testkit::Names;

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

/// A benchmark's daemon: the test kit's, with the data directory it owns.
pub struct Daemon {
    process: conveyor_testkit::Daemon,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// From spawn to the `conveyor listening on` line.
    pub startup: Duration,
    pub data_dir: TempDir,
    /// The topic `POST /events` writes to and the device processors read.
    topic_in: String,
}

impl DaemonSpec {
    fn names(&self) -> Names {
        let mut names = Names::with_id(self.id.clone());
        if let Some(topic) = &self.topic_in {
            names.topic_in = topic.clone();
        }
        names
    }

    /// Spawns `conveyor serve` and waits for its listening line (up to 90 s).
    pub fn spawn(&self) -> anyhow::Result<Daemon> {
        let data_dir = TempDir::new("conveyor-bench-")?;
        let names = self.names();
        let mut env: Vec<(String, String)> = [
            ("CONVEYOR_AUTH__JWT_SECRET", SECRET),
            // One load generator on one IP with one token: quotas would measure themselves.
            ("CONVEYOR_RATE_LIMIT__ENABLED", "false"),
            ("CONVEYOR_TELEMETRY__LOG_FILTER", "warn"),
            ("CONVEYOR_TELEMETRY__LOG_FORMAT", "json"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(names.env());
        env.extend(self.backends.env(&names));
        env.extend(self.extra_env.iter().cloned());
        let cmd = conveyor_testkit::command(&self.bin, data_dir.path(), &env);
        let process = conveyor_testkit::Daemon::spawn(cmd, &data_dir.path().join("daemon.log"))?;
        let topic_in = names.topic_in;
        Ok(Daemon { base: process.base.clone(), startup: process.startup, process, data_dir, topic_in })
    }
}

impl Daemon {
    /// Waits until `/ready` is 200 and the daemon owns at least one partition.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        Ok(self.process.wait_ready(within).await?)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The body of `GET /metrics` (empty on failure).
    pub async fn metrics(&self) -> String {
        self.process.metrics().await
    }

    /// Records processed so far on the input topic, from a `GET /metrics` body.
    fn processed_in(&self, text: &str) -> f64 {
        let filter = format!("topic=\"{}\"", self.topic_in);
        metric_sum(text, "conveyor_partition_records_processed_total{", &[&filter]).unwrap_or(0.0)
    }

    /// Records processed so far on the input topic.
    pub async fn processed(&self) -> f64 {
        self.processed_in(&self.metrics().await)
    }

    /// Waits until the daemon has processed every event its ingest accepted (records done on
    /// the input topic ≥ `conveyor.ingest.accepted`): a backlog left by a saturating run
    /// would otherwise compete with whatever is measured next. Answers how long it took.
    pub async fn wait_processed(&self, within: Duration) -> anyhow::Result<Duration> {
        let started = std::time::Instant::now();
        loop {
            let text = self.metrics().await;
            let accepted = metric_sum(&text, "conveyor_ingest_accepted", &[]).unwrap_or(0.0);
            let done = self.processed_in(&text);
            if done >= accepted {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= within {
                anyhow::bail!("the daemon processed {done} of {accepted} accepted events in {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// SIGTERM, then up to `within` for a clean exit, then SIGKILL. True on a clean exit.
    pub async fn terminate(&mut self, within: Duration) -> bool {
        self.process.terminate(within).await.is_ok_and(|status| status.success())
    }
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

/// A histogram family's count and sum per value of `label`, between two scrapes: where a
/// phase's time went (e.g. store query seconds per `operation`), largest total first.
pub fn per_label(before: &str, after: &str, family: &str, label: &str) -> Vec<(String, f64, f64)> {
    let values = |text: &str, suffix: &str| -> std::collections::BTreeMap<String, f64> {
        let prefix = format!("{family}_{suffix}{{");
        let key = format!("{label}=\"");
        let mut out = std::collections::BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with(&prefix)) {
            let Some(value) = line.split(&key).nth(1).and_then(|r| r.split('"').next()) else { continue };
            let Some(n) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
            *out.entry(value.to_string()).or_insert(0.0) += n;
        }
        out
    };
    let (count0, sum0) = (values(before, "count"), values(before, "sum"));
    let sum1 = values(after, "sum");
    let mut rows: Vec<(String, f64, f64)> = values(after, "count")
        .into_iter()
        .map(|(k, c)| {
            let count = c - count0.get(&k).copied().unwrap_or(0.0);
            let sum = sum1.get(&k).copied().unwrap_or(0.0) - sum0.get(&k).copied().unwrap_or(0.0);
            (k, count, sum)
        })
        .filter(|(_, count, _)| *count > 0.0)
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    rows
}

/// An HS256 token for `sub` with `roles`, valid for an hour, signed with [`SECRET`].
pub fn token(sub: &str, roles: &[&str]) -> anyhow::Result<String> {
    Ok(conveyor_testkit::mint(SECRET, sub, roles, 3600)?)
}

/// One Prometheus histogram (the series whose line contains every filter, summed), as
/// scraped: cumulative bucket counts by upper bound, the count and the sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

impl Histogram {
    /// `family` without its suffix, e.g. `conveyor_log_append_duration_seconds`.
    pub fn scrape(text: &str, family: &str, filters: &[&str]) -> Self {
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        let bucket = format!("{family}_bucket{{");
        for line in text.lines().filter(|l| l.starts_with(&bucket) && filters.iter().all(|f| l.contains(f))) {
            let le = line.split("le=\"").nth(1).and_then(|r| r.split('"').next());
            let le = match le {
                Some("+Inf") => f64::INFINITY,
                Some(v) => match v.parse() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
                None => continue,
            };
            let Some(n) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, total)) => *total += n,
                None => buckets.push((le, n)),
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram {
            buckets,
            count: metric_sum(text, &format!("{family}_count"), filters).unwrap_or(0.0),
            sum: metric_sum(text, &format!("{family}_sum"), filters).unwrap_or(0.0),
        }
    }

    /// What was observed between `before` and `self`.
    pub fn since(&self, before: &Histogram) -> Histogram {
        let earlier = |le: f64| before.buckets.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, n)| *n);
        Histogram {
            buckets: self.buckets.iter().map(|(le, n)| (*le, n - earlier(*le))).collect(),
            count: self.count - before.count,
            sum: self.sum - before.sum,
        }
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The upper bound of the bucket holding quantile `q` (what a bucketed histogram can say).
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let wanted = q * self.count;
        (self.count > 0.0).then(|| self.buckets.iter().find(|(_, n)| *n >= wanted).map_or(f64::INFINITY, |(le, _)| *le))
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn histograms_scrape_subtract_and_bound_quantiles() {
        let at = |a: u32, b: u32, c: u32, sum: f64| {
            format!(
                "x_seconds_bucket{{topic=\"in\",le=\"0.001\"}} {a}\nx_seconds_bucket{{topic=\"in\",le=\"0.01\"}} {b}\n\
                 x_seconds_bucket{{topic=\"in\",le=\"+Inf\"}} {c}\nx_seconds_bucket{{topic=\"other\",le=\"0.001\"}} 7\n\
                 x_seconds_count{{topic=\"in\"}} {c}\nx_seconds_sum{{topic=\"in\"}} {sum}\n"
            )
        };
        let before = Histogram::scrape(&at(1, 2, 2, 0.004), "x_seconds", &["topic=\"in\""]);
        let after = Histogram::scrape(&at(51, 150, 152, 0.804), "x_seconds", &["topic=\"in\""]);
        let d = after.since(&before);
        assert_eq!(d.count, 150.0);
        assert!((d.mean().unwrap_or(0.0) - 0.8 / 150.0).abs() < 1e-12);
        assert_eq!(d.quantile_bound(0.3), Some(0.001));
        assert_eq!(d.quantile_bound(0.5), Some(0.01));
        assert_eq!(d.quantile_bound(0.995), Some(f64::INFINITY));
        assert_eq!(Histogram::default().quantile_bound(0.99), None);
    }

    #[test]
    fn per_label_subtracts_and_orders_by_total() {
        let before = "q_seconds_count{operation=\"a\"} 2\nq_seconds_sum{operation=\"a\"} 0.5\n";
        let after = "q_seconds_count{operation=\"a\"} 4\nq_seconds_sum{operation=\"a\"} 0.7\n\
                     q_seconds_count{operation=\"b\"} 1\nq_seconds_sum{operation=\"b\"} 0.9\n";
        let rows = super::per_label(before, after, "q_seconds", "operation");
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].0.as_str(), rows[0].1), ("b", 1.0));
        assert_eq!((rows[1].0.as_str(), rows[1].1), ("a", 2.0));
        assert!((rows[1].2 - 0.2).abs() < 1e-9);
    }
}
