//! Static checks of docker/ (Dockerfile, compose.yml, the Prometheus config and the Grafana
//! provisioning and dashboard it mounts) against the workspace, and of the dashboard's
//! queries against a real `/metrics` scrape of the daemon. No Docker engine needed: the files
//! are parsed (YAML with serde-saphyr, JSON with serde_json, TOML with toml).
//!
//! Needs the `conveyor` debug binary (`cargo build -p conveyor-engine --bins`), found next to
//! this test's target directory or at `CONVEYOR_BIN`. scripts/test.sh's docker phase runs it.

#![allow(clippy::unwrap_used)]

mod alerts;
mod compose;
mod dashboard;
mod dockerfile;
mod grafana;
mod metrics;
mod prometheus;
mod promql;
mod report;
mod workspace;

use std::path::{Path, PathBuf};
use std::time::Duration;

use conveyor_testkit::{Daemon, Names, READY_TIMEOUT, command, mint};
use http::{Method, StatusCode};
use serde_json::json;

use report::Report;

pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or_else(|| manifest.to_path_buf())
}

/// `CONVEYOR_BIN`, else `conveyor` in this test binary's profile directory (target/debug).
fn conveyor_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CONVEYOR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("conveyor");
    assert!(bin.is_file(), "no {} (cargo build -p conveyor-engine --bins, or set CONVEYOR_BIN)", bin.display());
    bin
}

const SECRET: &str = "docker-check-secret";

/// A daemon's `/metrics` after traffic that touches most instruments: events in and
/// processed, a resource read (cache, store), a registration (saga, outbox), a loyalty
/// operation, rate-limited logins.
async fn live_scrape() -> String {
    let dir = tempfile::tempdir().unwrap();
    let names = Names::unique("docker");
    let mut env = names.env();
    env.extend(
        [
            ("CONVEYOR_AUTH__JWT_SECRET", SECRET),
            ("CONVEYOR_AUTH__PASSWORD__ARGON2_MEMORY_KIB", "4096"),
            ("CONVEYOR_AUTH__PASSWORD__ARGON2_ITERATIONS", "1"),
            ("CONVEYOR_RATE_LIMIT__AUTH_PER_IP", "{per_period=1,period_secs=60,burst=1}"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let d = Daemon::spawn(command(&conveyor_bin(), dir.path(), &env), &dir.path().join("daemon.log")).unwrap();
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let device = mint(SECRET, "device-docker", &["device", "user", "admin"], 3600).unwrap();
    for n in 0..5 {
        let event = json!({"device_id": "device-docker", "payload": {"n": n}});
        let (status, _) = d.send(Method::POST, "/events", Some(&device), Some(&event)).await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let _ = d.send(Method::POST, "/events", Some(&device), Some(&json!({"nope": 1}))).await;
    let read = conveyor_testkit::eventually(Duration::from_secs(20), || async {
        matches!(d.send(Method::GET, "/resource/device-docker", Some(&device), None).await, Ok((StatusCode::OK, _)))
    })
    .await;
    assert!(read, "the events never reached their resource; log:\n{}", d.log_tail(30));
    let _ = d.send(Method::GET, "/resource/device-docker", Some(&device), None).await;
    let registration =
        json!({"email": "docker@example.com", "password": "Docker-passw0rd!", "name": "D", "birthday": "1990-01-01"});
    let _ = d.send(Method::POST, "/auth/registration", None, Some(&registration)).await;
    let login = json!({"email": "docker@example.com", "password": "wrong"});
    for _ in 0..3 {
        let _ = d.send(Method::POST, "/auth/login", None, Some(&login)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.metrics().await
}

#[tokio::test]
async fn docker_files_match_the_workspace_and_the_live_metrics() {
    let root = repo_root();
    let mut report = Report::default();
    let ws = workspace::Workspace::load(&root, &mut report);

    let df_text = std::fs::read_to_string(root.join(dockerfile::DOCKERFILE)).unwrap();
    let df = dockerfile::Dockerfile::parse(&df_text);
    let dockerignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap_or_default();
    dockerfile::check(&mut report, &ws, &df, &dockerignore);

    let compose_text = std::fs::read_to_string(root.join(compose::COMPOSE)).unwrap();
    let c = compose::Compose { doc: compose::load_yaml(&root, compose::COMPOSE) };
    compose::check_compose(&mut report, &c, &root, &df.exposed(), &compose_text);
    let promcfg = compose::load_yaml(&root, compose::PROM_CONFIG);
    prometheus::check(&mut report, &c, &promcfg);
    let grafana = grafana::check(
        &mut report,
        &c,
        &root,
        &compose::load_yaml(&root, compose::DS_FILE),
        &compose::load_yaml(&root, compose::PROVIDER_FILE),
    );

    let sources = ws.sources();
    let (instruments, unresolved) = metrics::instruments(&sources);
    for u in unresolved {
        report.fail(u);
    }
    report.check(
        instruments.len() >= 20,
        format!("found {} OpenTelemetry instruments in the sources", instruments.len()),
        "",
    );
    let scrape = metrics::Scrape::parse(&live_scrape().await);
    let naming = metrics::naming(&instruments, &scrape);
    for p in &naming.problems {
        report.fail(p);
    }
    println!("named by analogy (not in the scrape): {}", naming.derived.join(", "));
    let mut labels = scrape.labels.clone();
    labels.extend(metrics::source_labels(&sources));
    labels.extend(dashboard::ADDED_LABELS.iter().map(|s| s.to_string()));
    for job in report::items(&promcfg["scrape_configs"]) {
        for sc in report::items(&job["static_configs"]) {
            labels.extend(sc["labels"].as_object().into_iter().flat_map(|o| o.keys().cloned()));
        }
    }
    let rules = compose::load_yaml(&root, alerts::ALERTS);
    alerts::check(&mut report, &c, &promcfg, &rules, &naming, &labels);
    let dash_text = std::fs::read_to_string(root.join(compose::DASHBOARD)).unwrap();
    match serde_json::from_str::<serde_json::Value>(&dash_text) {
        Ok(dash) => {
            report.check(true, format!("{} parses as JSON", compose::DASHBOARD), "");
            dashboard::check(&mut report, &dash, &grafana.datasource_uids, &instruments, &naming, &labels);
        }
        Err(e) => report.fail(format!("{} parses as JSON: {e}", compose::DASHBOARD)),
    }
    report.assert_clean();
}
