//! A real browser for tests: Debian's `chromium`, headless, driven over
//! W3C WebDriver by `chromedriver` (the `chromium-driver` package). The
//! protocol is a handful of JSON calls over HTTP, made here with ureq (a
//! test dependency already): a session, navigate, run a script, find and
//! click an element, read and accept a `confirm()` dialog, screenshot.
//! See docs/DESIGN.md ("Browser tests") for why no WebDriver crate.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// A headless chromium session; the driver is killed on drop.
pub struct Browser {
    driver: Child,
    base: String,
    agent: ureq::Agent,
}

/// Where the driver and the browser are (Debian's paths).
const DRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

impl Browser {
    /// Starts chromedriver and a headless session; `None` (and a line
    /// saying so) when chromium or its driver is not installed.
    pub fn start(test: &str) -> Option<Browser> {
        if !Path::new(DRIVER).exists() || !Path::new(CHROMIUM).exists() {
            println!(
                "{test}: skipped: {DRIVER} or {CHROMIUM} missing (apt-get install chromium chromium-driver)"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut b = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            agent,
        };
        // The driver answers /status once it listens.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = b
                .agent
                .get(&format!("{}/status", b.base))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50)); // bounded poll (deadline above)
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1100"]
            }
        }}});
        let v = b.call("POST", "/session", Some(caps));
        let session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        b.base = format!("{}/session/{session}", b.base);
        Some(b)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let resp = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let text = resp.body_mut().read_to_string().expect("WebDriver answers");
        let v: Value = serde_json::from_str(&text).expect("WebDriver answers JSON");
        v.get("value").cloned().unwrap_or(v)
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `body` (a function body: `return ...`) in the page.
    pub fn eval(&self, body: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": body, "args": [] })),
        )
    }

    /// Waits (polling every 100 ms, at most `within`) until `body`
    /// returns true in the page.
    pub fn wait_until(&self, what: &str, body: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.eval(body) == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100)); // bounded poll (deadline above)
        }
    }

    /// Clicks the first element matching `css` (a real click: the
    /// browser's own event, as a person's).
    pub fn click(&self, css: &str) {
        let el = self.call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        let id = el
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {el}"))
            .to_string();
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// The text of the open dialog (`confirm`, `prompt`), waiting for it
    /// at most `within`.
    pub fn dialog(&self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let v = self.call("GET", "/alert/text", None);
            if let Some(t) = v.as_str() {
                return t.to_string();
            }
            assert!(Instant::now() < deadline, "no dialog opened: {v}");
            std::thread::sleep(Duration::from_millis(50)); // bounded poll (deadline above)
        }
    }

    /// Answers the open dialog with OK (after typing `text` into a
    /// prompt, if given).
    pub fn accept(&self, text: Option<&str>) {
        if let Some(t) = text {
            self.call("POST", "/alert/text", Some(json!({ "text": t })));
        }
        self.call("POST", "/alert/accept", Some(json!({})));
    }

    /// Resizes the window (a phone's width, say).
    pub fn set_size(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// Writes a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        let v = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("a screenshot"))
            .expect("base64 PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
