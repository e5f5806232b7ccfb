//! A small WebDriver client for the browser tests: it starts ChromeDriver (Debian's
//! `chromium-driver`, `/usr/bin/chromedriver`) on a free loopback port, opens one headless
//! Chromium session with a fresh profile, and speaks the W3C WebDriver HTTP API through the
//! suite's own HTTP client: navigate, find by CSS selector, click, type, read text, take
//! screenshots. Install with `scripts/install-deps.sh pkg chromium chromium-driver`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// The key under which WebDriver names an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long the `wait_*` helpers poll before failing the test.
pub const WAIT: Duration = Duration::from_secs(20);

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's `/usr/bin/chromium` is a launcher script; ChromeDriver wants the binary itself.
const CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// An element found on the page (its WebDriver reference).
#[derive(Debug, Clone)]
pub struct Element(String);

/// One headless Chromium session, driven through its own ChromeDriver.
pub struct Browser {
    driver: tokio::process::Child,
    base: String,
    session: String,
    client: Client<HttpConnector, Full<Bytes>>,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("a free port: {e}"));
    listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("a free port: {e}"))
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium session (1400 × 1000).
    pub async fn start() -> Browser {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "ChromeDriver or Chromium is missing: scripts/install-deps.sh pkg chromium chromium-driver"
        );
        let port = free_port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{CHROMEDRIVER}: {e}"));
        let profile = tempfile::tempdir().unwrap_or_else(|e| panic!("profile dir: {e}"));
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            _profile: profile,
        };
        let started = Instant::now();
        loop {
            let ready = browser.call(Method::GET, "/status", None).await.ok();
            if ready.is_some_and(|v| v["ready"] == true) {
                break;
            }
            assert!(started.elapsed() < WAIT, "ChromeDriver did not come up on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A fresh profile; nothing reaches out of the machine (no updates, sync or pings).
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1400,1000",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", browser._profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let session =
            browser.call(Method::POST, "/session", Some(caps)).await.unwrap_or_else(|e| panic!("new session: {e}"));
        browser.session = session["sessionId"].as_str().unwrap_or_default().to_string();
        assert!(!browser.session.is_empty(), "no session id in {session}");
        browser
    }

    /// One WebDriver command: its `value`, or the WebDriver error as text.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap_or_default()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| format!("{path}: {e}"))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value["value"].clone())
        } else {
            Err(format!("{path}: {status} {} {}", value["value"]["error"], value["value"]["message"]))
        }
    }

    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await.unwrap_or_else(|e| panic!("webdriver {e}"))
    }

    pub async fn navigate(&self, url: &str) {
        self.command(Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    /// The page's title.
    pub async fn title(&self) -> String {
        self.command(Method::GET, "/title", None).await.as_str().unwrap_or_default().to_string()
    }

    /// The first element matching `css`, if any, now.
    pub async fn find(&self, css: &str) -> Option<Element> {
        let path = format!("/session/{}/element", self.session);
        let found = self.call(Method::POST, &path, Some(json!({"using": "css selector", "value": css}))).await;
        found.ok().and_then(|v| v[ELEMENT].as_str().map(|id| Element(id.to_string())))
    }

    /// Waits until an element matches `css`.
    pub async fn wait_for(&self, css: &str) -> Element {
        let started = Instant::now();
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            if started.elapsed() >= WAIT {
                let shot = self.screenshot("webdriver-failure").await;
                panic!(
                    "no element matches {css} after {WAIT:?} (see {}); the page:\n{}",
                    shot.display(),
                    self.body_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the first element matching `css` has a text for which `ok` holds; that text.
    pub async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        let mut last = String::new();
        loop {
            if let Some(e) = self.find(css).await {
                // The element may be replaced between finding and reading it: read again then.
                if let Ok(text) = self.try_text(&e).await {
                    if ok(&text) {
                        return text;
                    }
                    last = text;
                }
            }
            if started.elapsed() >= WAIT {
                let shot = self.screenshot("webdriver-failure").await;
                panic!("{css} never showed the expected text (see {}); last: {last:?}", shot.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, e: &Element) {
        self.command(Method::POST, &format!("/element/{}/click", e.0), Some(json!({}))).await;
    }

    /// Clicks the first element matching `css`, waiting for it to appear.
    pub async fn click_on(&self, css: &str) {
        let e = self.wait_for(css).await;
        self.click(&e).await;
    }

    async fn try_text(&self, e: &Element) -> Result<String, String> {
        let path = format!("/session/{}/element/{}/text", self.session, e.0);
        self.call(Method::GET, &path, None).await.map(|v| v.as_str().unwrap_or_default().to_string())
    }

    /// The element's rendered text.
    pub async fn text(&self, e: &Element) -> String {
        self.try_text(e).await.unwrap_or_else(|err| panic!("webdriver {err}"))
    }

    /// The page's visible text (for failure messages).
    pub async fn body_text(&self) -> String {
        match self.find("body").await {
            Some(body) => self.try_text(&body).await.unwrap_or_default(),
            None => String::new(),
        }
    }

    /// Saves a PNG of the viewport to `target/screenshots/NAME.png`; its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.command(Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("screenshot is not base64: {e}"));
        let path = screenshots().join(format!("{name}.png"));
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// Ends the session (Chromium exits) and ChromeDriver.
    pub async fn quit(mut self) {
        let path = format!("/session/{}", self.session);
        let _ = self.call(Method::DELETE, &path, None).await;
        self.session.clear();
        let _ = self.driver.kill().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed before quit(): ask ChromeDriver to close Chromium before it is
        // killed (kill_on_drop), so that no browser outlives the test. Plain blocking HTTP.
        if self.session.is_empty() {
            return;
        }
        let addr = self.base.trim_start_matches("http://").to_string();
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session
        );
        if let Ok(mut stream) = std::net::TcpStream::connect(&addr) {
            use std::io::{Read, Write};
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = stream.write_all(request.as_bytes());
            let _ = stream.read(&mut [0u8; 256]);
        }
    }
}

/// `target/screenshots/`, created if missing.
pub fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}
