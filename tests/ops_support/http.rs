//! HTTP helpers for the ops tests: a blocking client that returns every
//! status instead of failing on 4xx/5xx, JSON, and bounded waiting.

use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any wait in these tests may last.
pub const WAIT: Duration = Duration::from_secs(15);

/// A client that returns 4xx and 5xx answers instead of failing.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// GET: status and body.
pub fn get(a: &ureq::Agent, url: &str) -> (u16, String) {
    let mut r = a.get(url).call().expect("HTTP GET");
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// POST `body`: status and body.
pub fn post(a: &ureq::Agent, url: &str, body: &str) -> (u16, String) {
    // JSON, as the admin APIs require of a change (a web page cannot send
    // it without a preflight).
    let mut r = a
        .post(url)
        .header("content-type", "application/json")
        .send(body.as_bytes())
        .expect("HTTP POST");
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// Parses JSON, panicking with the text.
pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Polls `f` until it holds, for at most [`WAIT`].
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
    }
}
