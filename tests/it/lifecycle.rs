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
    let missing = await_final_state(&d, &t, &expected, Duration::from_secs(60)).await;
    assert!(missing.is_empty(), "not in their final state: {missing:?}\nlog:\n{}", d.log_tail(60));
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

/// A mounted secret: the JWT key comes from the file `CONVEYOR_AUTH__JWT_SECRET_FILE` names
/// (its trailing newline is not part of the key), and tokens signed with it are accepted.
#[tokio::test]
async fn jwt_secret_from_a_file_signs_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "from-a-mounted-file-0123456789abcdef";
    let path = dir.path().join("jwt_secret");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    let d = Daemon::start(
        Opts::new()
            .env_remove("CONVEYOR_AUTH__JWT_SECRET")
            .env("CONVEYOR_AUTH__JWT_SECRET_FILE", path.display().to_string()),
    )
    .await;
    let signed = conveyor_testkit::mint(secret, "file-user", &["device", "user"], 3600).unwrap();
    let (s, body) = d.post("/events", Some(&signed), &json!({"device_id": "file-1", "payload": {"k": 1}})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let with_newline = conveyor_testkit::mint(&format!("{secret}\n"), "file-user", &["device"], 3600).unwrap();
    let (s, _) = d.post("/events", Some(&with_newline), &json!({"device_id": "file-1", "payload": {"k": 2}})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the file's newline must not be part of the key");
    let (s, _) =
        d.post("/events", Some(&token("file-user", &["device"])), &json!({"device_id": "file-1", "payload": {}})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the harness's usual key must not verify");
}

#[test]
fn a_secret_file_that_cannot_be_used_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Opts::new();
    opts.backend = Backend::Embedded;
    let missing = dir.path().join("no-such-secret");
    let out = command(&opts, dir.path())
        .args(["config", "check"])
        .env("CONVEYOR_TELEMETRY__METRICS_TOKEN_FILE", &missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("CONVEYOR_TELEMETRY__METRICS_TOKEN_FILE") && stderr.contains("no-such-secret"), "{stderr}");
    // The harness sets CONVEYOR_AUTH__JWT_SECRET: its _FILE as well is ambiguous.
    let file = dir.path().join("jwt");
    std::fs::write(&file, "hunter2-in-a-file\n").unwrap();
    let out = command(&opts, dir.path())
        .args(["config", "check"])
        .env("CONVEYOR_AUTH__JWT_SECRET_FILE", &file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("CONVEYOR_AUTH__JWT_SECRET and CONVEYOR_AUTH__JWT_SECRET_FILE"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the content never prints: {stderr}");
}
