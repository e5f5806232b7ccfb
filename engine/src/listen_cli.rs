//! `conveyor webhook listen`: a local receiver that prints each delivery it gets and whether
//! its Standard Webhooks signature verifies, so a first endpoint can be tried without writing
//! one (the README's quick start uses it).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::Notify;

/// Receivers refuse a timestamp further than this from their clock (the specification's advice),
/// so a captured request cannot be replayed later.
const TOLERANCE_SECS: i64 = 5 * 60;

#[derive(Args)]
pub struct ListenArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    addr: SocketAddr,
    /// The endpoint's `whsec_…` secret; without it signatures are shown but not checked.
    #[arg(long, env = "CONVEYOR_WEBHOOK_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Exit after this many deliveries were accepted.
    #[arg(long)]
    count: Option<u64>,
}

/// What the receiver made of a request's signature.
#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Verdict {
    Valid,
    Invalid,
    /// A timestamp outside the tolerance: refused whatever the signature says.
    Stale,
    /// A header is missing.
    Unsigned,
    /// No secret given: not checked.
    Unchecked,
}

/// One line of output per request.
#[derive(Serialize)]
struct Received<'a> {
    webhook_id: &'a str,
    timestamp: Option<i64>,
    signature: Verdict,
    body: serde_json::Value,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn verdict(secret: Option<&str>, id: Option<&str>, ts: Option<i64>, sig: Option<&str>, body: &[u8]) -> Verdict {
    let (Some(id), Some(ts), Some(sig)) = (id, ts, sig) else { return Verdict::Unsigned };
    let Some(secret) = secret else { return Verdict::Unchecked };
    if (now_secs() - ts).abs() > TOLERANCE_SECS {
        return Verdict::Stale;
    }
    if conveyor_webhooks::signing::verify(secret, id, ts, body, sig) { Verdict::Valid } else { Verdict::Invalid }
}

pub async fn run(args: ListenArgs) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("cannot listen on {}", args.addr))?;
    println!("listening on http://{}", listener.local_addr()?);
    let secret: Arc<Option<String>> = Arc::new(args.secret);
    let accepted = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let limit = args.count;
    loop {
        let (stream, _) = tokio::select! {
            conn = listener.accept() => conn?,
            () = done.notified() => return Ok(()),
        };
        let (secret, accepted, done) = (secret.clone(), accepted.clone(), done.clone());
        let service = service_fn(move |req: Request<Incoming>| {
            let (secret, accepted, done) = (secret.clone(), accepted.clone(), done.clone());
            async move {
                let id = header(&req, "webhook-id").map(str::to_string);
                let ts = header(&req, "webhook-timestamp").and_then(|v| v.parse().ok());
                let sig = header(&req, "webhook-signature").map(str::to_string);
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let signature = verdict(secret.as_deref(), id.as_deref(), ts, sig.as_deref(), &body);
                let line = Received {
                    webhook_id: id.as_deref().unwrap_or_default(),
                    timestamp: ts,
                    signature,
                    body: serde_json::from_slice(&body)
                        .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned().into()),
                };
                println!("{}", serde_json::to_string(&line).unwrap_or_default());
                let ok = matches!(signature, Verdict::Valid | Verdict::Unchecked);
                if ok && limit.is_some_and(|n| accepted.fetch_add(1, Ordering::SeqCst) + 1 >= n) {
                    done.notify_one();
                }
                // A refused signature is a 4xx: the sender must not count it delivered.
                let status = if ok { StatusCode::NO_CONTENT } else { StatusCode::BAD_REQUEST };
                Ok::<_, Infallible>(
                    Response::builder().status(status).body(Full::new(Bytes::new())).unwrap_or_default(),
                )
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let secret = conveyor_webhooks::signing::generate_secret();
        let now = now_secs();
        let sig = conveyor_webhooks::signing::signature_header(&[&secret], "msg_1", now, b"{}");
        let v = |secret: Option<&str>, ts: i64, body: &[u8]| verdict(secret, Some("msg_1"), Some(ts), Some(&sig), body);
        assert!(v(Some(&secret), now, b"{}") == Verdict::Valid);
        assert!(v(Some(&secret), now, b"{\"x\":1}") == Verdict::Invalid);
        assert!(v(Some(&secret), now - TOLERANCE_SECS - 1, b"{}") == Verdict::Stale);
        assert!(v(None, now, b"{}") == Verdict::Unchecked);
        assert!(verdict(Some(&secret), None, Some(now), Some(&sig), b"{}") == Verdict::Unsigned);
    }
}
