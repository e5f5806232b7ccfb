//! `conveyor dlq list|show|replay|jobs|pause|resume|cancel|purge`: the dead-letter admin API
//! from the command line. It talks to the running daemon (so it works with the embedded log,
//! which one process owns) with a short-lived admin token signed by the configured key.
//! Replaying a set of dead letters starts a replay job on the daemon ([`crate::dlq_jobs`]).

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
    /// Replay one dead letter (by id), or start a replay job for every one matching the
    /// filters and follow its progress until it ends.
    Replay(crate::dlq_jobs::ReplayArgs),
    /// Recent replay jobs, newest first.
    Jobs {
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Pause a running replay job.
    Pause { job: i64 },
    /// Resume a paused replay job.
    Resume { job: i64 },
    /// Cancel a replay job.
    Cancel { job: i64 },
    /// Keys parked behind a dead letter (`processing.on_dead_letter = "park"`).
    Parked {
        /// Only keys of this source topic.
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        after_id: Option<i64>,
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Release a parked key by replaying its dead letter (applied first, then the held records).
    Release { topic: String, key: String },
    /// Release a parked key without its dead letter (the held records are applied).
    Skip { topic: String, key: String },
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

/// The daemon's admin API with a short-lived admin token.
pub(crate) struct Admin {
    base: String,
    token: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Admin {
    fn new(config: &Config, url: Option<String>) -> anyhow::Result<Self> {
        let keys = conveyor_identity::tokens::keys_for(config)?;
        // Long enough to follow a replay job of a few hours.
        let token = keys.mint("conveyor-cli", &["admin".to_string()], Duration::from_secs(24 * 3600))?;
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Admin { base: base_url(config, url), token, client })
    }

    /// One request; the status and the body (JSON when it is JSON, else a string).
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(http::StatusCode, serde_json::Value)> {
        let base = &self.base;
        let bytes = body.map(|b| serde_json::to_vec(&b)).transpose()?.unwrap_or_default();
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))?;
        let response =
            self.client.request(request).await.with_context(|| format!("is the daemon running at {base}?"))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok((status, value))
    }

    /// [`Admin::call`], printing the body; an error status is an error.
    pub(crate) async fn print(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let (status, value) = self.call(method, path, body).await?;
        print_json(&value);
        if !status.is_success() {
            bail!("{method} {path}: {status}");
        }
        Ok(value)
    }
}

pub(crate) fn print_json(value: &serde_json::Value) {
    match value {
        serde_json::Value::String(text) => println!("{text}"),
        other => println!("{}", serde_json::to_string_pretty(other).unwrap_or_default()),
    }
}

pub async fn run(config: Config, args: DlqArgs) -> anyhow::Result<()> {
    let admin = Admin::new(&config, args.url)?;
    let (method, path, body) = match args.command {
        DlqCommand::List(f) => ("GET", format!("/admin/dead-letters?{}", f.query()), None),
        DlqCommand::Show { id } => ("GET", format!("/admin/dead-letters/{id}"), None),
        DlqCommand::Replay(replay) => return crate::dlq_jobs::replay(&admin, replay).await,
        DlqCommand::Jobs { limit } => {
            ("GET", format!("/admin/replays{}", limit.map(|l| format!("?limit={l}")).unwrap_or_default()), None)
        }
        DlqCommand::Pause { job } => ("POST", format!("/admin/replays/{job}/pause"), None),
        DlqCommand::Resume { job } => ("POST", format!("/admin/replays/{job}/resume"), None),
        DlqCommand::Cancel { job } => ("POST", format!("/admin/replays/{job}/cancel"), None),
        DlqCommand::Parked { topic, after_id, limit } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            let pairs = [
                ("topic", topic),
                ("after_id", after_id.map(|v| v.to_string())),
                ("limit", limit.map(|v| v.to_string())),
            ];
            for (k, v) in pairs {
                if let Some(v) = v {
                    q.append_pair(k, &v);
                }
            }
            ("GET", format!("/admin/parked-keys?{}", q.finish()), None)
        }
        DlqCommand::Release { topic, key } => {
            ("POST", "/admin/parked-keys/replay".into(), Some(serde_json::json!({"topic": topic, "key": key})))
        }
        DlqCommand::Skip { topic, key } => {
            ("POST", "/admin/parked-keys/skip".into(), Some(serde_json::json!({"topic": topic, "key": key})))
        }
        DlqCommand::Purge { id: Some(id), .. } => ("DELETE", format!("/admin/dead-letters/{id}"), None),
        DlqCommand::Purge { id: None, filter } => ("POST", "/admin/dead-letters/purge".into(), Some(filter.body())),
    };
    admin.print(method, &path, body).await.map(drop)
}
