//! TLS to PostgreSQL (`sslmode=verify-full` + `sslrootcert`) and Redis (`rediss://` +
//! `cache.tls_ca_file`), against the TLS listeners `scripts/services.sh` starts with its
//! throwaway CA; and a CA that did not sign the server's certificate fails loudly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::harness::{Daemon, Opts, command, eventually, metric_sum, real_only, token};

/// The TLS endpoints and CA `scripts/services.sh env` prints.
struct TlsEnv {
    pg_url: String,
    pg_plain_url: String,
    redis_url: String,
    ca: String,
}

fn tls_env() -> TlsEnv {
    let get =
        |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} must be set (eval \"$(scripts/services.sh env)\")"));
    TlsEnv {
        pg_url: get("CONVEYOR_TEST_PG_TLS_URL"),
        pg_plain_url: get("CONVEYOR_TEST_PG_URL"),
        redis_url: get("CONVEYOR_TEST_REDIS_TLS_URL"),
        ca: get("CONVEYOR_TEST_TLS_CA"),
    }
}

/// A self-signed CA that signed nothing the services present.
fn wrong_ca(dir: &Path) -> PathBuf {
    let (key, pem) = (dir.join("wrong.key"), dir.join("wrong.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=Not the services CA"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&pem)
        .output()
        .unwrap_or_else(|e| panic!("openssl (scripts/install-deps.sh installs it): {e}"));
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    pem
}

#[tokio::test]
async fn real_tls_store_and_cache_verify_the_server_and_carry_events() {
    real_only("real_tls_store_and_cache_verify_the_server_and_carry_events");
    let tls = tls_env();
    assert!(tls.pg_url.contains("sslmode=verify-full"), "{}", tls.pg_url);
    assert!(tls.redis_url.starts_with("rediss://"), "{}", tls.redis_url);
    let d = Daemon::start(
        Opts::new()
            .env("CONVEYOR_STORE__URL", tls.pg_url.clone())
            .env("CONVEYOR_CACHE__URL", tls.redis_url.clone())
            .env("CONVEYOR_CACHE__TLS_CA_FILE", tls.ca.clone()),
    )
    .await;
    let (_, ready) = d.get("/ready", None).await;
    assert_eq!(
        (ready["checks"]["store"].as_str(), ready["checks"]["cache"].as_str()),
        (Some("ok"), Some("ok")),
        "{ready}"
    );

    let t = token("tls-device", &["device", "user"]);
    let (s, body) = d.post("/events", Some(&t), &json!({"device_id": "tls-1", "payload": {"over": "tls"}})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let stored = eventually(Duration::from_secs(30), || async {
        d.get("/resource/tls-1", Some(&t)).await.1["value"]["over"] == "tls"
    })
    .await;
    assert!(stored, "the event never reached the store over TLS");
    // The first read filled the cache; this one is served from Redis over TLS.
    let (s, body) = d.get("/resource/tls-1", Some(&t)).await;
    assert_eq!((s, body["value"]["over"].as_str()), (StatusCode::OK, Some("tls")));
    let text = d.metrics().await;
    assert!(metric_sum(&text, "conveyor_cache_hits_total", "") >= 1.0, "no cache hit over rediss://");
    assert_eq!(metric_sum(&text, "conveyor_cache_errors_total", ""), 0.0, "cache errors over rediss://");
}

#[tokio::test]
async fn real_tls_store_with_the_wrong_ca_fails_start_up_naming_the_certificate() {
    real_only("real_tls_store_with_the_wrong_ca_fails_start_up_naming_the_certificate");
    let tls = tls_env();
    let dir = tempfile::tempdir().unwrap();
    let wrong = wrong_ca(dir.path());
    let base = tls.pg_plain_url.split_once('?').map_or(tls.pg_plain_url.as_str(), |(base, _)| base);
    let url = format!("{base}?sslmode=verify-full&sslrootcert={}", wrong.display());
    let opts = Opts::new().env("CONVEYOR_STORE__URL", url);
    let mut cmd = tokio::process::Command::from(command(&opts, dir.path()));
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the daemon must give up on an untrusted store, not hang")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started against an untrusted store:\n{stderr}");
    assert!(stderr.contains("store"), "the error names the store:\n{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "the error names the certificate:\n{stderr}");
}

#[tokio::test]
async fn real_tls_cache_with_the_wrong_ca_says_so_in_the_log_and_ready() {
    real_only("real_tls_cache_with_the_wrong_ca_says_so_in_the_log_and_ready");
    let tls = tls_env();
    let dir = tempfile::tempdir().unwrap();
    let wrong = wrong_ca(dir.path());
    let d = Daemon::start(
        Opts::new()
            .env("CONVEYOR_CACHE__URL", tls.redis_url.clone())
            .env("CONVEYOR_CACHE__TLS_CA_FILE", wrong.display().to_string()),
    )
    .await;
    // The cache is optional: the daemon runs, degraded, and says why.
    let degraded = eventually(Duration::from_secs(15), || async {
        let (s, body) = d.get("/ready", None).await;
        s == StatusCode::OK && body["checks"]["cache"].as_str().is_some_and(|c| c.starts_with("error"))
    })
    .await;
    assert!(degraded, "/ready must report the cache: {}", d.get("/ready", None).await.1);
    let logged = eventually(Duration::from_secs(15), || async {
        let log = d.log_tail(200);
        log.contains("redis connection failed") && log.to_lowercase().contains("certificate")
    })
    .await;
    assert!(logged, "the log must say the certificate was refused:\n{}", d.log_tail(40));
}
