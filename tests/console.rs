//! The broker's web console end to end over real HTTP: the embedded page at
//! `/` and the series behind its charts (`/v1/series`) following a real
//! service's queue. Browser-driven tests (chromium over WebDriver) are not
//! written yet: see docs/CONSOLE.md.

mod common;
mod ops_support;

use alaska::broker::BrokerHandle;
use common::{broker_with, client};
use ops_support::http::{agent, get, json, wait_for};

/// A broker on free ports, HTTP included; its base URL.
fn broker() -> (BrokerHandle, String) {
    let handle = broker_with(|c| c.http_listen = Some("127.0.0.1:0".into()));
    let base = format!("http://{}", handle.http_addr().expect("HTTP is served"));
    (handle, base)
}

#[test]
fn the_console_page_is_served_at_the_root() {
    let (_b, base) = broker();
    let (status, body) = get(&agent(), &format!("{base}/"));
    assert_eq!(status, 200);
    assert_eq!(body, alaska::broker::console::INDEX_HTML);
}

#[test]
fn the_series_follow_a_service_queue() {
    let (b, base) = broker();
    let a = agent();
    let mut p = client(b.endpoint(), "p");
    // Nobody offers "svc": both requests stay queued.
    for _ in 0..2 {
        p.sendfor("svc", "s", "", 0, vec![b"x".to_vec()]).unwrap();
    }
    // Sampled once a second by the router: wait for a point showing them.
    wait_for("a depth of 2 in the series", || {
        let (status, text) = get(&a, &format!("{base}/v1/series"));
        assert_eq!(status, 200, "{text}");
        let v = json(&text);
        assert_eq!(v["resolution_seconds"], 1.0, "{v}");
        v["services"]["svc"]["depth"]
            .as_array()
            .and_then(|d| d.last())
            .is_some_and(|d| d == 2)
            && v["services"]["*"]["depth"]
                .as_array()
                .and_then(|d| d.last())
                .is_some_and(|d| d == 2)
    });
}
