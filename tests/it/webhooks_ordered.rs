//! Per-key FIFO webhook delivery (issue 19): an ordered endpoint receives each key's
//! deliveries one at a time in acceptance order while keys go concurrently; a failing key
//! delays only itself; a resent dead delivery is its key's head again; an unordered
//! endpoint on the same notifications is unaffected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::harness::{Daemon, Opts, eventually, token};
use crate::webhooks::{endpoint, notify};

/// One request the sink answered.
#[derive(Debug, Clone)]
struct Rec {
    path: String,
    key: String,
    id: String,
    status: u16,
    done: Instant,
}

#[derive(Default)]
struct SinkState {
    recs: Vec<Rec>,
    /// Requests open now per (path, key), and the most seen at once per path and key.
    open: HashMap<(String, String), usize>,
    most_per_key: HashMap<(String, String), usize>,
    open_per_path: HashMap<String, usize>,
    most_per_path: HashMap<String, usize>,
    /// 500 for this key's next n requests.
    fail_next: HashMap<String, usize>,
    /// 503 for this key's requests while it is here.
    failing: HashSet<String>,
    /// This key's requests wait while it is here.
    held: HashSet<String>,
}

/// A sink that reads each body's key (`subject`, else `data.key`), takes `delay` to answer,
/// counts concurrency per key and per path, and fails or holds keys on demand.
#[derive(Clone)]
struct KeySink {
    base: String,
    delay: Duration,
    state: Arc<Mutex<SinkState>>,
    released: Arc<tokio::sync::Notify>,
}

impl KeySink {
    async fn start(delay: Duration) -> KeySink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink = KeySink {
            base: format!("http://{}", listener.local_addr().unwrap()),
            delay,
            state: Arc::default(),
            released: Arc::default(),
        };
        let server = sink.clone();
        crate::sink::serve(listener, move |req| {
            let sink = server.clone();
            async move { sink.answer(req).await }
        });
        sink
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn with<T>(&self, f: impl FnOnce(&mut SinkState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    fn release(&self, key: &str) {
        self.with(|s| s.held.remove(key));
        self.released.notify_waiters();
    }

    async fn answer(&self, req: http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let id = req.headers().get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let key = v["subject"].as_str().or(v["data"]["key"].as_str()).unwrap_or("-").to_string();
        let slot = (path.clone(), key.clone());
        self.with(|s| {
            let open = s.open.entry(slot.clone()).or_default();
            *open += 1;
            let open = *open;
            let most = s.most_per_key.entry(slot.clone()).or_default();
            *most = (*most).max(open);
            let on_path = s.open_per_path.entry(path.clone()).or_default();
            *on_path += 1;
            let on_path = *on_path;
            let most = s.most_per_path.entry(path.clone()).or_default();
            *most = (*most).max(on_path);
        });
        loop {
            let released = self.released.notified();
            if !self.with(|s| s.held.contains(&key)) {
                break;
            }
            released.await;
        }
        tokio::time::sleep(self.delay).await;
        let status = self.with(|s| {
            *s.open.get_mut(&slot).unwrap() -= 1;
            *s.open_per_path.get_mut(&path).unwrap() -= 1;
            let status = match s.fail_next.get_mut(&key) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    500
                }
                _ if s.failing.contains(&key) => 503,
                _ => 200,
            };
            s.recs.push(Rec { path: path.clone(), key: key.clone(), id: id.clone(), status, done: Instant::now() });
            status
        });
        let mut response = http::Response::new(Full::new(Bytes::from_static(b"{}")));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        response
    }

    /// Ids delivered (200) to `path`, per key, in the order they completed.
    fn delivered(&self, path: &str) -> BTreeMap<String, Vec<String>> {
        let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in self.with(|s| s.recs.clone()) {
            if r.path == path && r.status == 200 {
                by_key.entry(r.key).or_default().push(r.id);
            }
        }
        by_key
    }

    fn recs(&self, path: &str) -> Vec<Rec> {
        self.with(|s| s.recs.iter().filter(|r| r.path == path).cloned().collect())
    }

    async fn wait_delivered(&self, path: &str, n: usize, within: Duration) {
        let ok = eventually(within, || async { self.delivered(path).values().map(Vec::len).sum::<usize>() >= n }).await;
        let got: usize = self.delivered(path).values().map(Vec::len).sum();
        assert!(ok, "{path}: {got} of {n} delivered");
    }
}

fn note(id: &str, key: &str) -> Value {
    json!({"id": id, "type": "order.updated", "source": "it", "specversion": "1.0", "subject": key,
        "data": {"key": key}})
}

/// Posts `per_key` notifications for each key: keys concurrently, each key's in sequence
/// (each waits for its 202). Answers each key's ids in acceptance order.
async fn post_keys(d: &Daemon, prefix: &str, keys: &[String], per_key: usize) -> BTreeMap<String, Vec<String>> {
    let posts = keys.iter().map(|key| async move {
        let mut ids = Vec::new();
        for i in 0..per_key {
            let id = format!("{prefix}-{key}-{i}");
            let (s, v) = notify(d, &note(&id, key)).await;
            assert_eq!(s, StatusCode::ACCEPTED, "{v}");
            ids.push(id);
        }
        (key.clone(), ids)
    });
    futures::future::join_all(posts).await.into_iter().collect()
}

#[tokio::test]
async fn an_ordered_endpoint_gets_each_keys_deliveries_in_acceptance_order_and_keys_concurrently() {
    let d = Daemon::start(Opts::new().env("CONVEYOR_WEBHOOKS__MAX_IN_FLIGHT_PER_ENDPOINT", "8")).await;
    let sink = KeySink::start(Duration::from_millis(15)).await;
    let user = token("alice", &["user"]);
    // Bad keys are named; null turns ordering off.
    for bad in ["not a field", "", "/a~2"] {
        let (s, v) =
            d.post("/webhooks/endpoints", Some(&user), &json!({"url": sink.url("/x"), "ordering_key": bad})).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}: {v}");
        assert_eq!(v["error"]["details"][0]["field"], "ordering_key", "{v}");
    }
    let (ordered, _) = endpoint(&d, &user, json!({"url": sink.url("/ordered"), "ordering_key": "subject"})).await;
    let (plain, _) = endpoint(&d, &user, json!({"url": sink.url("/plain")})).await;
    let (_, view) = d.get(&format!("/webhooks/endpoints/{ordered}"), Some(&user)).await;
    assert_eq!(view["ordering_key"], "subject", "{view}");
    let (_, view) = d.get(&format!("/webhooks/endpoints/{plain}"), Some(&user)).await;
    assert_eq!(view["ordering_key"], Value::Null, "{view}");

    let keys: Vec<String> = (0..20).map(|k| format!("k{k:02}")).collect();
    let posted = post_keys(&d, "evt_fifo", &keys, 10).await;
    sink.wait_delivered("/ordered", 200, Duration::from_secs(90)).await;
    sink.wait_delivered("/plain", 200, Duration::from_secs(30)).await;

    assert_eq!(sink.delivered("/ordered"), posted, "each key's deliveries in acceptance order");
    assert_eq!(sink.recs("/ordered").len(), 200, "each delivered once, no retries");
    let (per_key, per_path) = sink.with(|s| (s.most_per_key.clone(), s.most_per_path.clone()));
    let crowded: Vec<_> = per_key.iter().filter(|((p, _), n)| p == "/ordered" && **n > 1).collect();
    assert!(crowded.is_empty(), "never two of one key in flight at once: {crowded:?}");
    assert!(per_path["/ordered"] > 1, "different keys went concurrently: {per_path:?}");
    assert!(per_path["/plain"] > 1, "the unordered endpoint went concurrently: {per_path:?}");
    // The unordered endpoint got every notification too (in whatever order).
    let plain: usize = sink.delivered("/plain").values().map(Vec::len).sum();
    assert_eq!(plain, 200);

    // Turning ordering off.
    let body = serde_json::to_vec(&json!({"ordering_key": null})).unwrap();
    let path = format!("/webhooks/endpoints/{ordered}");
    let (s, _, v) =
        d.request(http::Method::PATCH, &path, Some(&user), &[("content-type", "application/json")], body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ordering_key"], Value::Null, "{v}");
}

#[tokio::test]
async fn a_failing_key_delays_only_its_own_deliveries() {
    let d = Daemon::start(
        Opts::new()
            .env("CONVEYOR_WEBHOOKS__RETRY_SCHEDULE_MS", "[0, 500, 500, 500, 500, 500]")
            .env("CONVEYOR_WEBHOOKS__RETRY_JITTER", "0")
            .env("CONVEYOR_WEBHOOKS__BREAKER_FAILURES", "100")
            .env("CONVEYOR_WEBHOOKS__MAX_IN_FLIGHT_PER_ENDPOINT", "8"),
    )
    .await;
    let sink = KeySink::start(Duration::from_millis(5)).await;
    let user = token("alice", &["user"]);
    endpoint(&d, &user, json!({"url": sink.url("/ordered"), "ordering_key": "/key"})).await;
    sink.with(|s| s.fail_next.insert("k-bad".into(), 4));
    let keys: Vec<String> = std::iter::once("k-bad".to_string()).chain((0..5).map(|k| format!("k{k}"))).collect();
    let posted = post_keys(&d, "evt_bad", &keys, 5).await;
    sink.wait_delivered("/ordered", 30, Duration::from_secs(60)).await;

    assert_eq!(sink.delivered("/ordered"), posted, "each key in acceptance order, k-bad too");
    let recs = sink.recs("/ordered");
    let bad: Vec<&Rec> = recs.iter().filter(|r| r.key == "k-bad").collect();
    let tries: Vec<(&str, u16)> = bad.iter().map(|r| (r.id.as_str(), r.status)).collect();
    let head = posted["k-bad"][0].as_str();
    assert_eq!(&tries[..5], [(head, 500), (head, 500), (head, 500), (head, 500), (head, 200)], "{tries:?}");
    assert_eq!(bad.len(), 9, "nothing of k-bad went while its head retried: {tries:?}");
    let first_bad_success = bad[4].done;
    let others_done = recs.iter().filter(|r| r.key != "k-bad").map(|r| r.done).max().unwrap();
    assert!(others_done < first_bad_success, "the other keys finished while k-bad was retrying");
}

#[tokio::test]
async fn a_resent_dead_delivery_goes_before_its_keys_later_ones() {
    let d = Daemon::start(
        Opts::new().env("CONVEYOR_WEBHOOKS__RETRY_SCHEDULE_MS", "[0, 50]").env("CONVEYOR_WEBHOOKS__RETRY_JITTER", "0"),
    )
    .await;
    let sink = KeySink::start(Duration::from_millis(1)).await;
    let user = token("alice", &["user"]);
    endpoint(&d, &user, json!({"url": sink.url("/ordered"), "ordering_key": "subject"})).await;
    sink.with(|s| s.failing.insert("k".into()));
    assert_eq!(notify(&d, &note("evt_rs-0", "k")).await.0, StatusCode::ACCEPTED);
    let dead = eventually(Duration::from_secs(20), || async {
        let (_, v) = d.get("/notifications/evt_rs-0", Some(&user)).await;
        v["deliveries"][0]["status"] == "failed"
    })
    .await;
    let (_, records) = d.get("/notifications/evt_rs-0", Some(&user)).await;
    assert!(dead, "the first delivery exhausted its schedule: {records}");
    let delivery_id = records["deliveries"][0]["id"].as_str().unwrap().to_string();

    // The key's next delivery is in flight (held at the sink) when the dead one is resent.
    sink.with(|s| {
        s.failing.clear();
        s.held.insert("k".into());
    });
    for id in ["evt_rs-1", "evt_rs-2"] {
        assert_eq!(notify(&d, &note(id, "k")).await.0, StatusCode::ACCEPTED);
    }
    let in_flight = eventually(Duration::from_secs(20), || async {
        sink.with(|s| s.open.get(&("/ordered".to_string(), "k".to_string())).copied() == Some(1))
    })
    .await;
    assert!(in_flight, "evt_rs-1 reached the sink");
    let (s, v) = d.post(&format!("/webhooks/deliveries/{delivery_id}/resend"), Some(&user), &json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    sink.release("k");
    sink.wait_delivered("/ordered", 3, Duration::from_secs(20)).await;
    let order = &sink.delivered("/ordered")["k"];
    assert_eq!(order, &["evt_rs-1", "evt_rs-0", "evt_rs-2"], "the resent one went before the key's later one");
}
