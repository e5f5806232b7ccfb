//! docker/prometheus/prometheus.yml and how compose runs Prometheus.

use serde_json::Value;

use crate::compose::{Compose, PROM_CONFIG, compose_rel};
use crate::report::{Report, items, text};

/// Go-style durations as Prometheus writes them (ms, s, m, h), in seconds.
pub fn seconds(d: &str) -> Option<f64> {
    let (num, mult) = if let Some(n) = d.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = d.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = d.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = d.strip_suffix('h') {
        (n, 3600.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

pub fn check(report: &mut Report, c: &Compose, promcfg: &Value) {
    let prom = c.service("prometheus");
    let cmd: Vec<String> = match &prom["command"] {
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        v => items(v).iter().map(text).collect(),
    };
    let config_flag = cmd
        .iter()
        .find_map(|a| a.strip_prefix("--config.file="))
        .unwrap_or("/etc/prometheus/prometheus.yml")
        .to_string();
    let mount = c.mounts("prometheus").into_iter().find(|m| m.bind && compose_rel(&m.source) == PROM_CONFIG);
    if report.check(mount.is_some(), format!("prometheus mounts {PROM_CONFIG}"), "")
        && let Some(m) = mount
    {
        report.check(
            m.target == config_flag,
            format!("prometheus config is mounted where --config.file points ({config_flag})"),
            format!("mounted at {}", m.target),
        );
        report.check(m.read_only, "prometheus config is mounted read-only", "");
    }
    report.check(c.ports("prometheus").iter().any(|p| p.ends_with("9090:9090")), "prometheus publishes 9090:9090", "");
    let port = c.container_port("conveyor", "8000");
    let jobs: Vec<(&Value, Vec<String>)> = items(&promcfg["scrape_configs"])
        .iter()
        .map(|job| {
            let targets =
                items(&job["static_configs"]).iter().flat_map(|sc| items(&sc["targets"]).iter().map(text)).collect();
            (job, targets)
        })
        .filter(|(_, t): &(&Value, Vec<String>)| t.iter().any(|t| t.split(':').next() == Some("conveyor")))
        .collect();
    if report.check(
        jobs.len() == 1,
        "prometheus.yml has one scrape job for the conveyor service",
        format!("{} jobs", jobs.len()),
    ) {
        let (job, targets) = &jobs[0];
        let want = format!("conveyor:{port}");
        report.check(
            targets.contains(&want),
            format!("conveyor scrape target is {want} (the service's HTTP port)"),
            format!("targets {targets:?}"),
        );
        let path = job["metrics_path"].as_str().unwrap_or("/metrics");
        report.check(path == "/metrics", "conveyor is scraped at /metrics", format!("metrics_path {path:?}"));
        let scheme = job["scheme"].as_str().unwrap_or("http");
        report.check(scheme == "http", "conveyor is scraped over http (the container serves plain HTTP)", scheme);
        let glob = &promcfg["global"];
        let interval = job["scrape_interval"].as_str().or(glob["scrape_interval"].as_str()).unwrap_or("1m");
        report.check(interval == "5s", "conveyor is scraped every 5s", format!("scrape_interval {interval:?}"));
        let timeout = job["scrape_timeout"].as_str().or(glob["scrape_timeout"].as_str()).unwrap_or("10s");
        match (seconds(timeout), seconds(interval)) {
            (Some(t), Some(i)) => report.check(
                t <= i,
                format!("scrape_timeout {timeout} <= scrape_interval {interval}"),
                "Prometheus refuses such a config",
            ),
            _ => report.check(
                false,
                format!("scrape_timeout {timeout:?} / scrape_interval {interval:?} are durations"),
                "",
            ),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::{load_yaml, real};
    use serde_json::json;

    #[test]
    fn a_wrong_scrape_target_or_timeout_fails() {
        let root = crate::repo_root();
        let (c, _) = real();
        let mut prom = load_yaml(&root, PROM_CONFIG);
        prom["scrape_configs"][0]["static_configs"][0]["targets"] = json!(["conveyor:9000"]);
        prom["scrape_configs"][0]["scrape_timeout"] = json!("10s");
        let mut r = Report::default();
        check(&mut r, &c, &prom);
        assert!(r.failed("scrape target is conveyor:8000"), "{:?}", r.failures);
        assert!(r.failed("scrape_timeout 10s <= scrape_interval 5s"), "{:?}", r.failures);
    }
}
