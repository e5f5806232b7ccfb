//! Start-up and shutdown: SIGTERM, `config check`, `token mint`, the generated secret.

use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::devices::{await_final_state, send_sequenced};
use crate::harness::{Backend, Daemon, Opts, command, token};

#[tokio::test]
async fn sigterm_drains_commits_and_exits_zero_within_the_grace_period() {
    let mut d = Daemon::start(Opts::new()).await;
    let t = token("gw", &["device", "user"]);
    let expected = send_sequenced(&d, &t, "term", 40, 5, 0).await;
    let status = d.terminate(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", d.log_tail(20));
    let log = d.log_tail(200);
    assert!(log.contains("conveyor stopped"), "shutdown must run to the end:\n{log}");
    assert!(log.contains("partitions revoked, draining"), "partitions are drained on shutdown:\n{log}");

    // Restarted on the same log and group: all events are there, nothing is lost.
    let d = Daemon::start(Opts::restart_of(&mut d)).await;
    assert!(await_final_state(&d, &t, &expected, Duration::from_secs(60)).await.is_empty());
}

#[test]
fn config_check_prints_redacted_config_and_names_a_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    // The file's values must not be overridden by the real-backend environment.
    let mut opts = Opts::new();
    opts.backend = Backend::Embedded;
    let good = command(&opts, dir.path())
        .args(["config", "check"])
        .env("CONVEYOR_STORE__URL", "postgres://u:hunter2@db/conveyor")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(out.contains("[http]") && out.contains("addr = \"127.0.0.1:0\""), "{out}");
    assert!(!out.contains("hunter2") && !out.contains(crate::harness::SECRET), "secrets must not print:\n{out}");
    assert!(out.contains("[redacted]"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[processing]\nmax_in_flight_per_partition = 0\n").unwrap();
    let out = command(&opts, dir.path()).args(["--config", bad.to_str().unwrap(), "config", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("processing.max_in_flight_per_partition"));

    std::fs::write(&bad, "[log]\nbackend = \"carrier-pigeon\"\n").unwrap();
    let out = command(&opts, dir.path()).args(["--config", bad.to_str().unwrap(), "config", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("log.backend"));

    let out =
        command(&opts, dir.path()).args(["config", "check"]).env("CONVEYOR_HTTP__ADDR", "no-port").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.addr"));
}

/// With no secret configured, one is generated into the data directory, and
/// `conveyor token mint` signs with it.
#[tokio::test]
async fn minted_tokens_work_with_the_generated_secret() {
    let mut opts = Opts::new();
    opts.env.push(("CONVEYOR_AUTH__JWT_SECRET".into(), String::new()));
    let dir = tempfile::tempdir().unwrap();
    opts.data_dir = Some(dir.path().to_path_buf());
    let mint = |roles: &str| {
        let out = command(&opts, dir.path())
            .args(["token", "mint", "--sub", "cli-user", "--roles", roles, "--ttl", "10m"])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let device = mint("device,user");
    let user_only = mint("user");
    assert!(dir.path().join("jwt_secret").exists(), "the secret is generated into data_dir");
    let d = Daemon::start(opts).await;
    let (s, _) = d.post("/events", Some(&device), &json!({"device_id": "minted", "payload": {}})).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _) = d.post("/events", Some(&token("x", &["device"])), &json!({"device_id": "m", "payload": {}})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a token signed with another secret is refused");
    let (s, _) = d.post("/events", Some(&user_only), &json!({"device_id": "m", "payload": {}})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}
