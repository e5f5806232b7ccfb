//! Sending one webhook: no redirects, a resolver that refuses private targets, a timeout
//! for the whole exchange, and a response read only up to a cap.

use std::time::{Duration, Instant};

use super::target::{BlockedTarget, GuardedResolver, TargetPolicy};
use conveyor_actors::config::WebhooksConfig;

/// How an attempt ended (a bounded metric label and the attempt record's `error_class`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    sea_orm::EnumIter,
    sea_orm::DeriveActiveEnum,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "String(sea_orm::sea_query::StringLen::None)", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum AttemptClass {
    /// No error.
    #[sea_orm(string_value = "none")]
    #[serde(rename = "none")]
    Succeeded,
    Timeout,
    Connect,
    /// A 3xx: redirects are not followed.
    Redirect,
    #[sea_orm(string_value = "http_429")]
    #[serde(rename = "http_429")]
    Http429,
    #[sea_orm(string_value = "http_4xx")]
    #[serde(rename = "http_4xx")]
    Http4xx,
    #[sea_orm(string_value = "http_5xx")]
    #[serde(rename = "http_5xx")]
    Http5xx,
    /// 410: the endpoint asks to be disabled.
    Gone,
    /// The URL resolves only to addresses the configuration refuses.
    BlockedTarget,
}

impl AttemptClass {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptClass::Succeeded => "none",
            AttemptClass::Timeout => "timeout",
            AttemptClass::Connect => "connect",
            AttemptClass::Redirect => "redirect",
            AttemptClass::Http429 => "http_429",
            AttemptClass::Http4xx => "http_4xx",
            AttemptClass::Http5xx => "http_5xx",
            AttemptClass::Gone => "gone",
            AttemptClass::BlockedTarget => "blocked_target",
        }
    }

    pub fn from_status(status: u16) -> AttemptClass {
        match status {
            200..=299 => AttemptClass::Succeeded,
            410 => AttemptClass::Gone,
            429 => AttemptClass::Http429,
            300..=399 => AttemptClass::Redirect,
            500..=599 => AttemptClass::Http5xx,
            _ => AttemptClass::Http4xx,
        }
    }
}

/// What one request produced.
#[derive(Debug, Clone)]
pub struct Response {
    pub class: AttemptClass,
    pub status: Option<u16>,
    pub latency: Duration,
    /// The first `response_excerpt_bytes` of the body, lossily decoded.
    pub excerpt: Option<String>,
    /// What went wrong, for the attempt record (never the request body).
    pub error: Option<String>,
    /// A 429's or 503's `Retry-After`.
    pub retry_after: Option<Duration>,
}

/// The shared client; each endpoint's actor bounds its own concurrency, so the client's
/// connection pool is the only thing endpoints share, and it is per host.
#[derive(Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
    policy: TargetPolicy,
    max_response: usize,
    excerpt: usize,
}

/// One request to send.
pub struct Request<'a> {
    pub method: reqwest::Method,
    pub url: &'a str,
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
    /// Shorter than the client's timeout for this request only.
    pub timeout: Option<Duration>,
}

impl<'a> Request<'a> {
    /// A JSON POST (a webhook delivery).
    pub fn post(url: &'a str, headers: Vec<(String, String)>, body: bytes::Bytes) -> Self {
        Request { method: reqwest::Method::POST, url, headers, body, timeout: None }
    }
}

impl WebhookClient {
    pub fn new(config: &WebhooksConfig) -> Result<Self, reqwest::Error> {
        let policy = TargetPolicy { allow_loopback: config.allow_loopback, allow_private: config.allow_private };
        let timeout = Duration::from_millis(config.request_timeout_ms);
        Self::build(policy, timeout, config.max_response_bytes, config.response_excerpt_bytes, "Conveyor-Webhooks")
    }

    /// A client with its own policy, timeout and caps (workflows keep whole responses).
    pub fn build(
        policy: TargetPolicy,
        timeout: Duration,
        max_response: usize,
        excerpt: usize,
        agent: &str,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // HTTP(S)_PROXY would hand the name to the proxy to resolve, around the guard.
            .no_proxy()
            .dns_resolver(GuardedResolver::shared(policy))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(format!("{agent}/{}", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(WebhookClient { client, policy, max_response, excerpt })
    }

    pub async fn send(&self, request: Request<'_>) -> Response {
        let started = Instant::now();
        let failed = |class, error: String| Response {
            class,
            status: None,
            latency: started.elapsed(),
            excerpt: None,
            error: Some(error),
            retry_after: None,
        };
        // Literal addresses never reach the resolver, so they are checked here.
        let url = match self.policy.check_url(request.url) {
            Ok(url) => url,
            Err(reason) => return failed(AttemptClass::BlockedTarget, format!("target refused: {reason}")),
        };
        let mut builder = self.client.request(request.method, url).body(request.body);
        if !request.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            builder = builder.header("content-type", "application/json");
        }
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        if let Some(timeout) = request.timeout {
            builder = builder.timeout(timeout);
        }
        let mut response = match builder.send().await {
            Ok(response) => response,
            Err(err) => return failed(classify_error(&err), describe(&err)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| conveyor_actors::retry::parse_retry_after(v, chrono::Utc::now()));
        // Read up to the cap; the rest is dropped with the connection.
        let mut body = Vec::new();
        let mut read_error = None;
        while body.len() < self.max_response {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(self.max_response - body.len())]),
                Ok(None) => break,
                Err(err) => {
                    read_error = Some(err);
                    break;
                }
            }
        }
        let excerpt =
            (!body.is_empty()).then(|| String::from_utf8_lossy(&body[..body.len().min(self.excerpt)]).into_owned());
        let class = AttemptClass::from_status(status);
        // A success whose body timed out still delivered: the endpoint has the event.
        let error = match (&read_error, class) {
            (Some(err), _) => Some(format!("reading the response: {}", describe(err))),
            (None, AttemptClass::Succeeded) => None,
            (None, _) => Some(format!("HTTP {status}")),
        };
        Response { class, status: Some(status), latency: started.elapsed(), excerpt, error, retry_after }
    }
}

fn classify_error(err: &reqwest::Error) -> AttemptClass {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<BlockedTarget>().is_some() {
            return AttemptClass::BlockedTarget;
        }
        source = e.source();
    }
    if err.is_timeout() { AttemptClass::Timeout } else { AttemptClass::Connect }
}

/// The error and its causes on one line (for the attempt record).
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify() {
        assert_eq!(AttemptClass::from_status(204), AttemptClass::Succeeded);
        assert_eq!(AttemptClass::from_status(410), AttemptClass::Gone);
        assert_eq!(AttemptClass::from_status(429), AttemptClass::Http429);
        assert_eq!(AttemptClass::from_status(302), AttemptClass::Redirect);
        assert_eq!(AttemptClass::from_status(400), AttemptClass::Http4xx);
        assert_eq!(AttemptClass::from_status(503), AttemptClass::Http5xx);
    }

    #[tokio::test]
    async fn literal_private_targets_are_refused_without_a_request() {
        let client = WebhookClient::new(&WebhooksConfig::default()).expect("client");
        let r = client.send(Request::post("http://127.0.0.1:9/hook", vec![], bytes::Bytes::new())).await;
        assert_eq!(r.class, AttemptClass::BlockedTarget);
        assert!(r.status.is_none());
    }
}
