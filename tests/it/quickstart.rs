//! The README's quick start, with the request bodies and token roles read from the README
//! itself, so the front page cannot drift from what the daemon does.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use crate::harness::{Daemon, Opts};

/// The README's "Sixty seconds" section.
fn quick_start() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find("## Sixty seconds").expect("README has a Sixty seconds section");
    let rest = &readme[start + 3..];
    rest[..rest.find("\n## ").unwrap_or(rest.len())].to_string()
}

/// The `-d '…'` bodies in the order they appear, as JSON.
fn bodies(section: &str) -> Vec<Value> {
    section
        .split("-d '")
        .skip(1)
        .map(|s| serde_json::from_str(&s[..s.find('\'').unwrap()]).unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect()
}

#[tokio::test]
async fn the_readme_quick_start_processes_an_event_and_delivers_a_signed_webhook() {
    let section = quick_start();
    let [event, endpoint, notification] = <[Value; 3]>::try_from(bodies(&section)).unwrap();
    let roles = section.split("--roles ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().to_string();
    assert!(section.contains(r#""signature":"valid""#), "the README shows a verified delivery");

    let d = Daemon::start(Opts::new().env("CONVEYOR_WEBHOOKS__ALLOW_LOOPBACK", "true")).await;
    let out = d.cli(&["token", "mint", "--sub", "demo", "--roles", &roles, "--ttl", "1h"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let (s, body) = d.post("/events", Some(&token), &event).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let device = event["device_id"].as_str().unwrap();
    let mut seen = Value::Null;
    for _ in 0..200 {
        let (s, body) = d.get(&format!("/resource/{device}"), Some(&token)).await;
        if s == StatusCode::OK {
            seen = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, serde_json::json!({"id": device, "value": event["payload"]}));

    // The receiver, on a free port instead of the README's 9000.
    let (s, created) = d.post("/webhooks/endpoints", Some(&token), &endpoint).await;
    let secret = created["secret"].as_str().unwrap_or_else(|| panic!("{s} {created}")).to_string();
    let mut listener = d
        .cli(&["webhook", "listen", "--addr", "127.0.0.1:0", "--secret", &secret, "--count", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = format!("{}/", first.strip_prefix("listening on ").unwrap_or_else(|| panic!("{first}")));
    let id = created["id"].as_str().unwrap();
    let (s, _, body) = d
        .request(
            http::Method::PATCH,
            &format!("/webhooks/endpoints/{id}"),
            Some(&token),
            &[],
            serde_json::to_vec(&serde_json::json!({"url": url})).unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");

    let (s, body) = d.post("/notifications", Some(&token), &notification).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let received = tokio::task::spawn_blocking(move || {
        let line = lines.next().map(|l| l.unwrap()).unwrap_or_default();
        (line, listener.wait())
    });
    let (line, status) = tokio::time::timeout(Duration::from_secs(30), received).await.expect("a delivery").unwrap();
    assert!(status.unwrap().success(), "the listener exits after --count 1");
    let line: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert_eq!(line["signature"], "valid", "{line}");
    assert_eq!(line["webhook_id"], notification["id"]);
    assert_eq!(line["body"]["data"], notification["data"]);
}
