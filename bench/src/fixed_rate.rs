//! An open-loop, fixed-rate load generator (what wrk2 does, which is not installed): each of
//! `connections` hyper HTTP/1 connections sends its share of `rate` requests per second on
//! a fixed schedule, and a request's latency is measured from the moment the schedule says
//! it should have been sent, not from when it actually went out. A server that stalls
//! therefore shows the wait of every request scheduled during the stall (no coordinated
//! omission), and the p99 is honest at that rate.
//!
//! One wait is not the server's: tokio's timer has a 1 ms resolution and wakes a connection
//! up to a millisecond after its send time. Against the hello server at 8,500 req/s that
//! alone made a p50 of 1.14 ms and a p99 of 2.16 ms. So when a connection was idle at its
//! send time (the server had answered the previous request in time), its latency counts
//! from when the request actually went out; when it was still busy (the server was late),
//! from the schedule, as before. What was left out is reported as `timer_late_ms`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::report::round;

/// What one fixed-rate run measured.
#[derive(Debug, Clone, Default)]
pub struct FixedRateRun {
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub requests: u64,
    pub non_202: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// How late this generator's timer sent requests on idle connections (left out of the
    /// latencies): p50 and p99.
    pub timer_late_p50_ms: f64,
    pub timer_late_p99_ms: f64,
}

impl FixedRateRun {
    pub fn to_json(&self) -> Value {
        json!({
            "target_rate": round(self.target_rate, 1),
            "achieved_rate": round(self.achieved_rate, 1),
            "requests": self.requests,
            "non_202": self.non_202,
            "latency_ms_from_schedule": {
                "p50": round(self.p50_ms, 3),
                "p90": round(self.p90_ms, 3),
                "p99": round(self.p99_ms, 3),
                "max": round(self.max_ms, 3),
            },
            "timer_late_ms": {
                "p50": round(self.timer_late_p50_ms, 3),
                "p99": round(self.timer_late_p99_ms, 3),
            },
        })
    }
}

/// The request every connection sends: `POST {path}` with a bearer token and a JSON body
/// naming one of `devices` devices (the same shape as the wrk script's).
#[derive(Clone)]
pub struct Target {
    pub addr: String,
    pub token: String,
    pub devices: u32,
}

impl Target {
    /// `http://127.0.0.1:PORT` → `127.0.0.1:PORT`.
    pub fn from_base(base: &str, token: &str, devices: u32) -> Self {
        let addr = base.trim_start_matches("http://").trim_end_matches('/').to_string();
        Target { addr, token: token.to_string(), devices: devices.max(1) }
    }

    fn request(&self, n: u64) -> anyhow::Result<http::Request<Full<Bytes>>> {
        // A cheap spread over the devices (a multiplicative hash of the request number).
        let device = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % u64::from(self.devices) + 1;
        let body = format!(r#"{{"device_id":"dev-{device}","payload":{{"t":1}}}}"#);
        Ok(http::Request::post("/events")
            .header(http::header::HOST, &self.addr)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Full::new(Bytes::from(body)))?)
    }
}

/// Latencies (µs) and the count of answers that were not 202, of one connection.
struct ConnResult {
    latencies_us: Vec<u32>,
    /// Send time minus schedule, for requests whose connection was idle at the schedule.
    timer_late_us: Vec<u32>,
    non_202: u64,
}

/// One keep-alive connection, ready to send.
async fn connect(target: &Target) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let stream =
        tokio::net::TcpStream::connect(&target.addr).await.with_context(|| format!("connect {}", target.addr))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn connection(
    target: Target,
    mut sender: http1::SendRequest<Full<Bytes>>,
    start: Instant,
    first: u64,
    step: Duration,
    until: Instant,
) -> anyhow::Result<ConnResult> {
    let mut out = ConnResult { latencies_us: Vec::new(), timer_late_us: Vec::new(), non_202: 0 };
    let micros = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
    let mut k: u32 = 0;
    loop {
        let scheduled = start + step * k;
        if scheduled >= until {
            break;
        }
        let idle = Instant::now() < scheduled;
        tokio::time::sleep_until(scheduled.into()).await;
        sender.ready().await?;
        let origin = if idle {
            let sent = Instant::now();
            out.timer_late_us.push(micros(sent - scheduled));
            sent
        } else {
            scheduled
        };
        let response = sender.send_request(target.request(first + u64::from(k))?).await?;
        let status = response.status();
        response.into_body().collect().await?;
        out.latencies_us.push(micros(origin.elapsed()));
        if status != http::StatusCode::ACCEPTED {
            out.non_202 += 1;
        }
        k += 1;
    }
    Ok(out)
}

fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    f64::from(sorted_us[rank.clamp(1, sorted_us.len()) - 1]) / 1000.0
}

/// Sends `rate` requests/s spread evenly over `connections` for `seconds`, each connection
/// staggered so the whole forms one even schedule.
pub async fn run(target: &Target, rate: f64, connections: u32, seconds: u32) -> anyhow::Result<FixedRateRun> {
    if rate.is_nan() || rate <= 0.0 || connections == 0 {
        bail!("fixed-rate load needs a positive rate and at least one connection");
    }
    let per_conn = rate / f64::from(connections);
    let step = Duration::from_secs_f64(1.0 / per_conn);
    // Every connection first, so the schedule does not start with the handshakes' wait (a
    // fixed head start was not always enough on a busy machine: the requests scheduled
    // before a connection existed then counted the wait as latency).
    let mut senders = Vec::new();
    for _ in 0..connections {
        senders.push(connect(target).await?);
    }
    let start = Instant::now() + Duration::from_millis(10);
    let until = start + Duration::from_secs(u64::from(seconds));
    let tasks: Vec<_> = senders
        .into_iter()
        .zip(0..connections)
        .map(|(sender, c)| {
            let offset = step.mul_f64(f64::from(c) / f64::from(connections));
            let first = u64::from(c) << 32;
            tokio::spawn(connection(target.clone(), sender, start + offset, first, step, until))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut late = Vec::new();
    let mut non_202 = 0;
    for task in tasks {
        let r = task.await.context("load connection panicked")??;
        latencies.extend(r.latencies_us);
        late.extend(r.timer_late_us);
        non_202 += r.non_202;
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    latencies.sort_unstable();
    late.sort_unstable();
    Ok(FixedRateRun {
        target_rate: rate,
        achieved_rate: latencies.len() as f64 / elapsed,
        requests: latencies.len() as u64,
        non_202,
        p50_ms: percentile_ms(&latencies, 50.0),
        p90_ms: percentile_ms(&latencies, 90.0),
        p99_ms: percentile_ms(&latencies, 99.0),
        max_ms: latencies.last().map(|l| f64::from(*l) / 1000.0).unwrap_or(0.0),
        timer_late_p50_ms: percentile_ms(&late, 50.0),
        timer_late_p99_ms: percentile_ms(&late, 99.0),
    })
}

#[cfg(test)]
mod tests {
    use super::percentile_ms;

    #[test]
    fn percentiles_are_nearest_rank() {
        let us: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert!((percentile_ms(&us, 99.0) - 99.0).abs() < 1e-9);
        assert!((percentile_ms(&us, 50.0) - 50.0).abs() < 1e-9);
        assert_eq!(percentile_ms(&[], 99.0), 0.0);
    }
}
