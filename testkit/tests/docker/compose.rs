//! docker/compose.yml: its services, images, environment, ports and volumes, and the paths of
//! the files it mounts (checked in prometheus.rs and grafana.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::report::{Report, items, text};

pub const COMPOSE: &str = "docker/compose.yml";
pub const PROM_CONFIG: &str = "docker/prometheus/prometheus.yml";
pub const DS_FILE: &str = "docker/grafana/provisioning/datasources/prometheus.yml";
pub const PROVIDER_FILE: &str = "docker/grafana/provisioning/dashboards/conveyor.yml";
pub const DASHBOARD: &str = "docker/grafana/dashboards/conveyor.json";

/// A parsed YAML file of the repo.
pub fn load_yaml(root: &Path, rel: &str) -> Value {
    let text = std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

/// One volume of a service.
#[derive(Debug, Clone)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
    pub bind: bool,
}

/// What the later checks (Prometheus, Grafana, dashboard) need from compose.
pub struct Compose {
    pub doc: Value,
}

impl Compose {
    pub fn service(&self, name: &str) -> &Value {
        &self.doc["services"][name]
    }

    pub fn services(&self) -> Vec<String> {
        self.doc["services"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    }

    /// A service's environment, list or map form, values as strings (None: no value).
    pub fn env(&self, svc: &str) -> BTreeMap<String, Option<String>> {
        let env = &self.service(svc)["environment"];
        match env {
            Value::Array(list) => list
                .iter()
                .map(|e| {
                    let e = text(e);
                    match e.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (e, None),
                    }
                })
                .collect(),
            Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), (!v.is_null()).then(|| text(v)))).collect(),
            _ => BTreeMap::new(),
        }
    }

    pub fn ports(&self, svc: &str) -> Vec<String> {
        items(&self.service(svc)["ports"]).iter().map(text).collect()
    }

    pub fn mounts(&self, svc: &str) -> Vec<Mount> {
        items(&self.service(svc)["volumes"])
            .iter()
            .map(|v| {
                if v.is_object() {
                    return Mount {
                        source: text(&v["source"]),
                        target: text(&v["target"]),
                        read_only: v["read_only"].as_bool().unwrap_or(false),
                        bind: v["type"] == "bind",
                    };
                }
                let s = text(v);
                let parts: Vec<&str> = s.split(':').collect();
                let source = parts[0].to_string();
                Mount {
                    target: parts.get(1).unwrap_or(&parts[0]).to_string(),
                    read_only: parts.get(2).is_some_and(|m| m.split(',').any(|f| f == "ro")),
                    bind: source.starts_with(['.', '/', '~']),
                    source,
                }
            })
            .collect()
    }

    /// The container port of a service's first published port.
    pub fn container_port(&self, svc: &str, default: &str) -> String {
        self.ports(svc)
            .first()
            .and_then(|p| p.rsplit(':').next())
            .map(|p| p.split('/').next().unwrap_or(p).to_string())
            .unwrap_or_else(|| default.to_string())
    }
}

/// A compose bind-mount source relative to the repo root (compose paths are relative to docker/).
pub fn compose_rel(src: &str) -> String {
    let mut parts: Vec<&str> = vec!["docker"];
    for c in src.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() { ".".to_string() } else { parts.join("/") }
}

/// Unquoted `host:container` ports can be read as base-60 numbers by YAML 1.1 parsers; the
/// parsed value cannot tell quoted from plain, so the items under `ports:` are read as text.
pub fn unquoted_ports(compose_text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_ports: Option<usize> = None;
    for line in compose_text.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(base) = in_ports {
            if indent > base && t.starts_with("- ") {
                let item = t[2..].trim();
                if !item.starts_with(['"', '\'', '{']) {
                    out.push(item.to_string());
                }
                continue;
            }
            in_ports = None;
        }
        if t == "ports:" {
            in_ports = Some(indent);
        }
    }
    out
}

pub fn check_compose(report: &mut Report, c: &Compose, root: &Path, exposed: &[String], compose_text: &str) {
    let services = c.services();
    for name in ["kafka", "postgres", "redis", "conveyor", "kafka-ui", "prometheus", "grafana"] {
        report.check(services.iter().any(|s| s == name), format!("compose defines service {name}"), "");
    }
    for (name, prefix) in [
        ("kafka", "apache/kafka:"),
        ("postgres", "postgres:"),
        ("redis", "redis:"),
        ("kafka-ui", "provectuslabs/kafka-ui"),
    ] {
        let img = text(&c.service(name)["image"]);
        report.check(img.starts_with(prefix), format!("{name} uses image {prefix}*"), format!("got {img:?}"));
    }
    let conv = c.service("conveyor");
    let (context, dockerfile) = match &conv["build"] {
        Value::String(s) => (s.clone(), "Dockerfile".to_string()),
        b => (
            b["context"].as_str().unwrap_or(".").to_string(),
            b["dockerfile"].as_str().unwrap_or("Dockerfile").to_string(),
        ),
    };
    let context_rel = compose_rel(&context);
    report.check(context_rel == ".", "conveyor build context is the repo root", format!("got {context_rel}"));
    report.check(
        dockerfile.trim_start_matches("./") == crate::dockerfile::DOCKERFILE,
        format!("conveyor build uses {}", crate::dockerfile::DOCKERFILE),
        format!("got {dockerfile:?}"),
    );
    report.check(root.join(&dockerfile).is_file(), format!("{dockerfile} exists in the build context"), "");
    let env = c.env("conveyor");
    let expected: [(&str, Option<&str>); 5] = [
        ("CONVEYOR_LOG__BACKEND", Some("kafka")),
        ("CONVEYOR_LOG__KAFKA__BROKERS", Some("kafka:9092")),
        ("CONVEYOR_STORE__URL", Some("postgres://conveyor:conveyor@postgres:5432/conveyor")),
        ("CONVEYOR_CACHE__URL", Some("redis://redis:6379")),
        ("CONVEYOR_AUTH__JWT_SECRET", None), // any non-empty value
    ];
    for (key, want) in expected {
        let got = env.get(key).cloned().flatten();
        match want {
            None => {
                report.check(got.as_deref().is_some_and(|g| !g.is_empty()), format!("conveyor env {key} is set"), "")
            }
            Some(w) => {
                report.check(got.as_deref() == Some(w), format!("conveyor env {key}={w}"), format!("got {got:?}"))
            }
        };
    }
    let ports = c.ports("conveyor");
    report.check(
        ports.iter().any(|p| p.ends_with("8000:8000")),
        "conveyor publishes 8000:8000",
        format!("ports {ports:?}"),
    );
    for dep in ["kafka", "postgres", "redis"] {
        let cond = text(&conv["depends_on"][dep]["condition"]);
        report.check(
            cond == "service_healthy",
            format!("conveyor depends_on {dep} (service_healthy)"),
            format!("got {cond:?}"),
        );
        report.check(!c.service(dep)["healthcheck"].is_null(), format!("{dep} has a healthcheck"), "");
    }
    let kenv = c.env("kafka");
    let roles = kenv.get("KAFKA_PROCESS_ROLES").cloned().flatten().unwrap_or_default();
    report.check(roles.contains("broker") && roles.contains("controller"), "kafka runs KRaft as broker+controller", "");
    let adv = kenv.get("KAFKA_ADVERTISED_LISTENERS").cloned().flatten().unwrap_or_default();
    report.check(adv.contains("PLAINTEXT://kafka:9092"), "kafka advertises PLAINTEXT://kafka:9092 to containers", &adv);
    report.check(
        adv.contains("EXTERNAL://localhost:9094"),
        "kafka advertises EXTERNAL://localhost:9094 to the host",
        &adv,
    );
    report.check(c.ports("kafka").iter().any(|p| p.ends_with("9094:9094")), "kafka publishes 9094", "");
    let penv = c.env("postgres");
    report.check(
        ["POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"]
            .iter()
            .all(|k| penv.get(*k).cloned().flatten().as_deref() == Some("conveyor")),
        "postgres user/password/db are conveyor",
        "",
    );
    let uenv = c.env("kafka-ui");
    report.check(
        uenv.get("KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS").cloned().flatten().as_deref() == Some("kafka:9092"),
        "kafka-ui points at kafka:9092",
        "",
    );
    report.check(c.ports("kafka-ui").iter().any(|p| p.ends_with("8080:8080")), "kafka-ui publishes 8080", "");

    // Volumes and ports of every service.
    let declared: BTreeSet<String> =
        c.doc["volumes"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    for svc in &services {
        for m in c.mounts(svc) {
            if m.bind {
                let rel = compose_rel(&m.source);
                report.check(
                    root.join(&rel).exists(),
                    format!("{svc} bind-mounts {} (-> {rel}), which exists", m.source),
                    "compose would mount nothing there",
                );
            } else if !m.source.is_empty() {
                report.check(
                    declared.contains(&m.source),
                    format!("{svc} volume {} is declared under top-level volumes", m.source),
                    "",
                );
            }
        }
        for p in items(&c.service(svc)["ports"]) {
            report.check(
                p.is_string(),
                format!("{svc} port {p} is a quoted string"),
                "a number is no host:container mapping",
            );
        }
    }
    for p in unquoted_ports(compose_text) {
        report.fail(format!(
            "port {p} is a quoted string: unquoted host:container ports can be read as base-60 numbers by YAML 1.1"
        ));
    }
    let pinned = |svc: &str, prefix: &[&str], what: &str, report: &mut Report| {
        let img = text(&c.service(svc)["image"]);
        let tag = prefix.iter().find_map(|p| img.strip_prefix(p)).unwrap_or("");
        let tag = tag.strip_prefix('v').unwrap_or(tag);
        let parts: Vec<&str> = tag.split('.').collect();
        let ok = parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        let ok = ok && (!prefix[0].starts_with("prom/") || img.contains(":v"));
        report.check(
            ok,
            format!("{svc} image {img:?} is {what} with a pinned version tag"),
            "use an explicit version, never latest",
        );
    };
    pinned("prometheus", &["prom/prometheus:"], "prom/prometheus", report);
    pinned("grafana", &["grafana/grafana:", "grafana/grafana-oss:"], "grafana/grafana", report);
    let port = c.container_port("conveyor", "8000");
    report.check(
        exposed.contains(&port),
        format!("conveyor's container port {port} is EXPOSEd by the Dockerfile"),
        format!("EXPOSE {exposed:?}"),
    );
}

/// The repo's compose file, parsed and as text (for the negative tests).
#[cfg(test)]
pub fn real() -> (Compose, String) {
    let root = crate::repo_root();
    let text = std::fs::read_to_string(root.join(COMPOSE)).unwrap_or_default();
    (Compose { doc: load_yaml(&root, COMPOSE) }, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compose_report(c: &Compose, text: &str) -> Report {
        let mut r = Report::default();
        check_compose(&mut r, c, &crate::repo_root(), &["8000".to_string()], text);
        r
    }

    #[test]
    fn the_real_files_pass() {
        let root = crate::repo_root();
        let (c, text) = real();
        let mut r = compose_report(&c, &text);
        crate::prometheus::check(&mut r, &c, &load_yaml(&root, PROM_CONFIG));
        crate::grafana::check(&mut r, &c, &root, &load_yaml(&root, DS_FILE), &load_yaml(&root, PROVIDER_FILE));
        r.assert_clean();
    }

    #[test]
    fn a_missing_env_key_a_missing_bind_source_and_an_undeclared_volume_fail() {
        let (mut c, text) = real();
        let conv = &mut c.doc["services"]["conveyor"];
        conv["environment"].as_object_mut().map(|e| e.remove("CONVEYOR_STORE__URL"));
        conv["volumes"] = json!(["./nowhere.yml:/x:ro", "undeclared:/data"]);
        let r = compose_report(&c, &text);
        assert!(r.failed("CONVEYOR_STORE__URL"), "{:?}", r.failures);
        assert!(r.failed("bind-mounts ./nowhere.yml"), "{:?}", r.failures);
        assert!(r.failed("volume undeclared is declared"), "{:?}", r.failures);
    }

    #[test]
    fn unquoted_ports_and_unpinned_images_fail() {
        let (mut c, text) = real();
        c.doc["services"]["grafana"]["image"] = json!("grafana/grafana:latest");
        let text = text.replace("- \"8000:8000\"", "- 8000:8000");
        let r = compose_report(&c, &text);
        assert!(r.failed("port 8000:8000 is a quoted string"), "{:?}", r.failures);
        assert!(r.failed("pinned version tag"), "{:?}", r.failures);
    }
}
