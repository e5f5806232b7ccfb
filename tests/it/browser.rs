//! Pages checked in headless Chromium (`scripts/chromium.sh`): the interactive API docs.

use std::path::PathBuf;
use std::process::Command;

use http::StatusCode;

use crate::harness::{Daemon, Opts};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/chromium.sh")
}

/// Runs `scripts/chromium.sh ARGS`; its stdout.
pub fn chromium(args: &[&str]) -> String {
    let out = Command::new(script()).args(args).output().unwrap_or_else(|e| panic!("chromium.sh: {e}"));
    assert!(
        out.status.success(),
        "chromium.sh {args:?} failed ({}); install Chromium with scripts/install-deps.sh pkg chromium\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn swagger_ui_lists_every_operation_from_the_binary() {
    let d = Daemon::start(Opts::new()).await;
    let (s, doc) = d.get("/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
    let (s, headers, _) = d.request(http::Method::GET, "/docs", None, &[], vec![]).await;
    assert_eq!(
        (s, headers.get("location").and_then(|v| v.to_str().ok())),
        (StatusCode::MOVED_PERMANENTLY, Some("/docs/"))
    );

    let base = d.base.clone();
    let dom =
        tokio::task::spawn_blocking(move || chromium(&["dom", &format!("{base}/docs/")])).await.unwrap_or_default();
    // Swagger UI renders one `opblock` per operation, with its path.
    let operations = dom.matches("opblock-summary-path\"").count() + dom.matches("opblock-summary-path ").count();
    let documented: usize =
        doc["paths"].as_object().into_iter().flatten().map(|(_, item)| item.as_object().map_or(0, |o| o.len())).sum();
    assert_eq!(
        operations,
        documented,
        "every documented operation is listed; the page:\n{}",
        &dom[..dom.len().min(2000)]
    );
    for path in [
        "/events",
        "/auth/registration",
        "/loyalty/{uuid}",
        "/admin/dead-letters",
        "/notifications",
        "/webhooks/endpoints/{id}",
        "/workflows/{id}/runs",
    ] {
        assert!(
            dom.contains(&format!(">{path}<")) || dom.contains(&format!("data-path=\"{path}\"")),
            "{path} not listed"
        );
    }
    assert!(dom.contains("Authorize"), "the page offers to authorize with a token");
}
