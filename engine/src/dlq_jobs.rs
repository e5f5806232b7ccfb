//! `conveyor dlq replay`: one dead letter by id, or a replay job on the running daemon for
//! every one matching the filters, followed with a progress bar until it ends (the job
//! goes on on the daemon if the command is interrupted: `conveyor dlq jobs` shows it).

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use serde_json::{Value, json};

use crate::dlq_cli::{Admin, print_json};

#[derive(Args)]
pub struct ReplayArgs {
    /// Replay this one dead letter now (no job).
    #[arg(value_name = "ID", conflicts_with = "id")]
    positional_id: Option<i64>,
    /// Replay this one dead letter now (no job).
    #[arg(long)]
    id: Option<i64>,
    /// Only dead letters from this topic.
    #[arg(long)]
    source_topic: Option<String>,
    /// Only this error class (retryable, permanent, unavailable, …).
    #[arg(long)]
    error_class: Option<String>,
    /// Last failure at or after this: a time ago (`2h`, `30m`, `1d`, `90s`) or an RFC 3339
    /// timestamp.
    #[arg(long, value_parser = parse_time, conflicts_with = "since_ms")]
    since: Option<i64>,
    /// Last failure before this: a time ago or an RFC 3339 timestamp.
    #[arg(long, value_parser = parse_time, conflicts_with = "until_ms")]
    until: Option<i64>,
    /// Last failure at or after this time (ms since the epoch).
    #[arg(long)]
    since_ms: Option<i64>,
    /// Last failure before this time (ms since the epoch).
    #[arg(long)]
    until_ms: Option<i64>,
    /// Records per second (default: the daemon's dlq.replay_default_rate).
    #[arg(long)]
    rate: Option<u32>,
    /// Only print how many dead letters would be replayed; start nothing.
    #[arg(long)]
    dry_run: bool,
    /// Start the job and print it without following its progress.
    #[arg(long)]
    detach: bool,
}

/// `2h` ago, or an RFC 3339 timestamp, as ms since the epoch.
fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.timestamp_millis());
    }
    let ago = crate::parse_ttl(text).map_err(|e| format!("{e}, or an RFC 3339 timestamp"))?;
    Ok(chrono::Utc::now().timestamp_millis() - ago.as_millis() as i64)
}

/// How often the progress is polled.
const POLL: Duration = Duration::from_millis(500);

pub async fn replay(admin: &Admin, args: ReplayArgs) -> anyhow::Result<()> {
    if let Some(id) = args.id.or(args.positional_id) {
        admin.print("POST", &format!("/admin/dead-letters/{id}/replay"), None).await?;
        return Ok(());
    }
    let body = json!({
        "source_topic": args.source_topic,
        "error_class": args.error_class,
        "since_ms": args.since.or(args.since_ms),
        "until_ms": args.until.or(args.until_ms),
        "rate": args.rate,
        "dry_run": args.dry_run,
    });
    if args.dry_run || args.detach {
        admin.print("POST", "/admin/replays", Some(body)).await?;
        return Ok(());
    }
    let (status, job) = admin.call("POST", "/admin/replays", Some(body)).await?;
    if !status.is_success() {
        print_json(&job);
        bail!("POST /admin/replays: {status}");
    }
    let id = job["id"].as_i64().unwrap_or_default();
    eprintln!("replay job {id} started; following it (interrupting leaves it running: `conveyor dlq pause {id}`)");
    let done = follow(admin, id, job).await?;
    print_json(&done);
    match done["status"].as_str() {
        Some("completed") => Ok(()),
        Some(other) => bail!("replay job {id} ended {other}"),
        None => bail!("replay job {id}: no status in {done}"),
    }
}

/// Polls the job until it completes, fails or is cancelled, drawing its progress.
async fn follow(admin: &Admin, id: i64, mut job: Value) -> anyhow::Result<Value> {
    let matched = job["matched"].as_u64().unwrap_or(0);
    let bar = indicatif::ProgressBar::new(matched);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let handled = ["replayed", "skipped", "failed"].iter().map(|k| job[*k].as_u64().unwrap_or(0)).sum();
        bar.set_position(handled);
        let status = job["status"].as_str().unwrap_or("unknown").to_string();
        bar.set_message(format!(
            "{status}: {} replayed, {} skipped, {} failed",
            job["replayed"], job["skipped"], job["failed"]
        ));
        if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
            bar.finish();
            return Ok(job);
        }
        tokio::time::sleep(POLL).await;
        let (code, next) = admin.call("GET", &format!("/admin/replays/{id}"), None).await?;
        if !code.is_success() {
            bar.abandon();
            print_json(&next);
            bail!("GET /admin/replays/{id}: {code}");
        }
        job = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_ago_or_rfc3339() {
        let now = chrono::Utc::now().timestamp_millis();
        let two_hours = parse_time("2h").unwrap_or_default();
        assert!((now - 7_200_000 - two_hours).abs() < 5_000, "{two_hours}");
        assert_eq!(parse_time("2026-12-03T00:00:00Z"), Ok(1_796_256_000_000));
        assert!(parse_time("yesterday").is_err());
    }
}
