//! Webhook sinks: local HTTP servers that record what they receive and answer by a script
//! per path, and the independent signature check (the `standardwebhooks` package from PyPI).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Serves HTTP/1 on `listener` in the background, each request answered by `answer`.
pub fn serve<F, Fut>(listener: tokio::net::TcpListener, answer: F)
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            let service = service_fn(move |req| {
                let answered = answer(req);
                async move { Ok::<_, Infallible>(answered.await) }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
}

/// How a path answers.
#[derive(Debug, Clone)]
pub enum Script {
    /// 200 every time.
    Ok,
    /// This status `n` times, then 200.
    FailThenOk(u16, usize),
    /// This status every time (with `Retry-After` if given).
    Always(u16, Option<u64>),
    /// 429 with `Retry-After: secs` `n` times, then 200.
    LimitedThenOk(u64, usize),
    /// Never answers (holds the connection open).
    Hang,
}

/// One request a sink received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub at: Instant,
}

impl Hit {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    pub fn id(&self) -> String {
        self.headers.get("webhook-id").cloned().unwrap_or_default()
    }
}

#[derive(Clone, Default)]
pub struct Sink {
    pub base: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    scripts: Arc<Mutex<HashMap<String, (Script, usize)>>>,
}

impl Sink {
    pub async fn start() -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let base = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
        let sink = Sink { base, ..Sink::default() };
        let server = sink.clone();
        serve(listener, move |req| {
            let sink = server.clone();
            async move { sink.answer(req).await }
        });
        sink
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn script(&self, path: &str, script: Script) {
        self.scripts.lock().unwrap().insert(path.to_string(), (script, 0));
    }

    pub fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits.lock().unwrap().iter().filter(|h| h.path == path).cloned().collect()
    }

    async fn answer(&self, req: http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let headers =
            req.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let hit =
            Hit { path: path.clone(), headers, body: String::from_utf8_lossy(&body).into_owned(), at: Instant::now() };
        self.hits.lock().unwrap().push(hit);
        let (script, seen) = {
            let mut scripts = self.scripts.lock().unwrap();
            let entry = scripts.entry(path).or_insert((Script::Ok, 0));
            entry.1 += 1;
            (entry.0.clone(), entry.1)
        };
        let (status, retry_after) = match script {
            Script::Ok => (200, None),
            Script::FailThenOk(status, n) if seen <= n => (status, None),
            Script::FailThenOk(..) => (200, None),
            Script::Always(status, retry_after) => (status, retry_after),
            Script::LimitedThenOk(secs, n) if seen <= n => (429, Some(secs)),
            Script::LimitedThenOk(..) => (200, None),
            Script::Hang => std::future::pending().await,
        };
        let mut response = http::Response::new(Full::new(Bytes::from(format!("{{\"answer\":{status}}}"))));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
        if let Some(secs) = retry_after {
            response.headers_mut().insert("retry-after", secs.into());
        }
        response
    }
}

/// Checks every entry with the `standardwebhooks` package (scripts/verify-webhooks.py):
/// `(name, secrets, hit, expect_valid)`. Panics with the script's report unless all match.
pub fn verify_with_standardwebhooks(entries: &[(String, Vec<String>, Hit, bool)]) {
    let python = std::env::var("CONVEYOR_STANDARDWEBHOOKS_PYTHON").unwrap_or_else(|_| {
        panic!("CONVEYOR_STANDARDWEBHOOKS_PYTHON is not set: run through scripts/test.sh, or set it to $(scripts/install-deps.sh standardwebhooks-python)")
    });
    let deliveries: Vec<Value> = entries
        .iter()
        .map(|(name, secrets, hit, valid)| {
            serde_json::json!({
                "name": name,
                "secrets": secrets,
                "headers": {
                    "webhook-id": hit.headers.get("webhook-id"),
                    "webhook-timestamp": hit.headers.get("webhook-timestamp"),
                    "webhook-signature": hit.headers.get("webhook-signature"),
                },
                "body": hit.body,
                "expect": if *valid { "valid" } else { "invalid" },
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("capture.json");
    std::fs::write(&capture, serde_json::json!({ "deliveries": deliveries }).to_string()).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/verify-webhooks.py");
    let out = std::process::Command::new(python).arg(script).arg(&capture).output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "standardwebhooks disagreed:\n{report}");
    assert!(report.contains(&format!("{n}/{n} as expected", n = entries.len())), "{report}");
}
