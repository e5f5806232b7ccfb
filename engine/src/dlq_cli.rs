//! `conveyor dlq list|show|replay|purge`: the dead-letter admin API from the command line.
//! It talks to the running daemon (so it works with the embedded log, which one process
//! owns) with a short-lived admin token signed by the configured key.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use conveyor_actors::config::Config;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Args)]
pub struct DlqArgs {
    /// The daemon's base URL (default: from http.addr).
    #[arg(long, global = true)]
    url: Option<String>,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Args, Default)]
struct Filter {
    #[arg(long)]
    source_topic: Option<String>,
    #[arg(long)]
    error_class: Option<String>,
    /// Last failure at or after this time (ms since the epoch).
    #[arg(long)]
    since_ms: Option<i64>,
    #[arg(long)]
    until_ms: Option<i64>,
    #[arg(long)]
    after_id: Option<i64>,
    #[arg(long)]
    limit: Option<u64>,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters (filters optional).
    List(Filter),
    /// Show one dead letter with its payload and headers.
    Show { id: i64 },
    /// Replay one dead letter (by id) or every one matching the filters to its source topic.
    Replay {
        id: Option<i64>,
        #[command(flatten)]
        filter: Filter,
    },
    /// Remove one dead letter (by id) or every one matching the filters from the index.
    Purge {
        id: Option<i64>,
        #[command(flatten)]
        filter: Filter,
    },
}

impl Filter {
    fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        let pairs = [
            ("source_topic", self.source_topic.clone()),
            ("error_class", self.error_class.clone()),
            ("since_ms", self.since_ms.map(|v| v.to_string())),
            ("until_ms", self.until_ms.map(|v| v.to_string())),
            ("after_id", self.after_id.map(|v| v.to_string())),
            ("limit", self.limit.map(|v| v.to_string())),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                q.append_pair(k, &v);
            }
        }
        q.finish()
    }

    fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "source_topic": self.source_topic, "error_class": self.error_class, "since_ms": self.since_ms,
            "until_ms": self.until_ms, "after_id": self.after_id, "limit": self.limit,
        })
    }
}

fn base_url(config: &Config, url: Option<String>) -> String {
    url.unwrap_or_else(|| format!("http://{}", config.http.addr.replace("0.0.0.0", "127.0.0.1")))
        .trim_end_matches('/')
        .to_string()
}

pub async fn run(config: Config, args: DlqArgs) -> anyhow::Result<()> {
    let keys = conveyor_identity::tokens::keys_for(&config)?;
    let token = keys.mint("conveyor-cli", &["admin".to_string()], Duration::from_secs(300))?;
    let base = base_url(&config, args.url);
    let (method, path, body) = match args.command {
        DlqCommand::List(f) => ("GET", format!("/admin/dead-letters?{}", f.query()), None),
        DlqCommand::Show { id } => ("GET", format!("/admin/dead-letters/{id}"), None),
        DlqCommand::Replay { id: Some(id), .. } => ("POST", format!("/admin/dead-letters/{id}/replay"), None),
        DlqCommand::Replay { id: None, filter } => ("POST", "/admin/dead-letters/replay".into(), Some(filter.body())),
        DlqCommand::Purge { id: Some(id), .. } => ("DELETE", format!("/admin/dead-letters/{id}"), None),
        DlqCommand::Purge { id: None, filter } => ("POST", "/admin/dead-letters/purge".into(), Some(filter.body())),
    };
    let bytes = body.map(|b| serde_json::to_vec(&b)).transpose()?.unwrap_or_default();
    let request = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.with_context(|| format!("is the daemon running at {base}?"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let pretty = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    println!("{pretty}");
    if !status.is_success() {
        bail!("{method} {path}: {status}");
    }
    Ok(())
}
