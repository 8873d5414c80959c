//! The broker's web console and the worker's status page end to end: the
//! embedded pages over real HTTP, the series behind the charts following a
//! real queue, and in a real browser (headless chromium over WebDriver)
//! against a live broker with two real workers: both workers and a
//! service's depth shown, a chart moving while `alaska-bench` runs,
//! maintenance toggled in the page taking a worker out, a dead letter
//! replayed from the page, the token asked once, and a worker's own page.
//! Screenshots are written under `target/screenshots/`.

use crate::common;
use crate::ops_support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use alaska::broker::BrokerHandle;
use alaska::mlm::DeliveryKind;
use alaska::worker::runners::{HttpConfig, Pattern, RunnerConfig, RunnerKind};
use assert_cmd::cargo::CommandCargoExt;
use common::browser::Browser;
use common::{broker_with, client, expect, ready, script, Worker};
use ops_support::http::{agent, get, json, wait_for};
use ops_support::worker::OpsWorker;

const WAIT: Duration = Duration::from_secs(20);

/// `target/screenshots/<name>.png`.
fn screenshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("screenshots")
        .join(format!("{name}.png"))
}

/// A live broker with HTTP, two in-process workers offering `svc` with
/// the script `subject` = `body`, and a producer that has seen them serve.
struct Live {
    b: BrokerHandle,
    base: String,
    dir: tempfile::TempDir,
    p: alaska::mlm::Client,
    _workers: (Worker, Worker),
}

impl Live {
    fn start(subject: &str, body: &str) -> Live {
        let (b, base) = broker();
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), subject, body);
        let workers = (
            Worker::start(b.endpoint(), dir.path(), |_, p| p.size = 2),
            Worker::start(b.endpoint(), dir.path(), |_, p| p.size = 2),
        );
        let mut p = client(b.endpoint(), "producer");
        ready(&mut p, dir.path());
        Live {
            b,
            base,
            dir,
            p,
            _workers: workers,
        }
    }
}

/// The addresses of the clients offering `svc`, from the admin API.
fn worker_addresses(base: &str) -> Vec<String> {
    let v = json(&get(&agent(), &format!("{base}/v1/clients")).1);
    v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["offers"].as_array().is_some_and(|o| !o.is_empty()))
        .map(|c| c["address"].as_str().unwrap().to_string())
        .collect()
}

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

#[test]
fn the_console_shows_workers_depth_and_charts_that_move_under_load() {
    let Some(browser) = Browser::start("console overview") else {
        return;
    };
    // Every field bound (a `..` would drop the broker and the workers here).
    let Live {
        b,
        base,
        dir: _dir,
        mut p,
        _workers: _w,
    } = Live::start("echo", "return alaskaContext");
    // A second service nobody offers: its depth is exactly 5.
    for _ in 0..5 {
        p.sendfor("backlog", "s", "", 0, vec![b"x".to_vec()])
            .unwrap();
    }
    browser.goto(&format!("{base}/"));
    browser.wait_until(
        "both workers",
        "return document.querySelectorAll('[data-client^=\"worker-\"]').length === 2",
        WAIT,
    );
    browser.wait_until(
        "the backlog's depth of 5",
        "const e = document.querySelector('[data-queued=\"backlog\"]'); return !!e && e.textContent === '5'",
        WAIT,
    );
    // Load for a while; the svc requests/s chart's latest point rises.
    let mut bench = Command::cargo_bin("alaska-bench")
        .unwrap()
        .args([
            "-e",
            b.endpoint(),
            "-a",
            "svc",
            "-s",
            "echo",
            "-n",
            "200000",
            "-w",
            "20",
            "--rate",
            "2000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    browser.wait_until(
        "the svc requests/s chart above 0",
        "const e = document.querySelector('[data-title=\"svc requests/s\"]'); return !!e && Number(e.dataset.last) > 0",
        WAIT,
    );
    let points = browser.eval(
        "return Number(document.querySelector('[data-title=\"svc requests/s\"]').dataset.points)",
    );
    browser.wait_until(
        "a new point on the chart",
        &format!("return Number(document.querySelector('[data-title=\"svc requests/s\"]').dataset.points) > {points} || {points} >= 900"),
        WAIT,
    );
    browser.screenshot(&screenshot_path("console-overview"));
    // A phone's width: the page reflows to one column and nothing but the
    // tables (which scroll inside their own sections) is wider than it.
    browser.set_size(390, 844);
    browser.wait_until(
        "the page within a phone's width",
        "return document.documentElement.scrollWidth <= window.innerWidth",
        WAIT,
    );
    browser.screenshot(&screenshot_path("console-phone"));
    let _ = bench.kill();
    let _ = bench.wait();
    assert!(
        screenshot_path("console-overview")
            .metadata()
            .unwrap()
            .len()
            > 10_000
    );
}

#[test]
fn maintenance_toggled_in_the_page_takes_a_worker_out() {
    let Some(browser) = Browser::start("console maintenance") else {
        return;
    };
    let Live {
        b: _b,
        base,
        dir: _dir,
        mut p,
        _workers: _w,
    } = Live::start("echo", "return alaskaContext");
    wait_for("two workers offering", || {
        worker_addresses(&base).len() == 2
    });
    let workers = worker_addresses(&base);
    let (out, stays) = (&workers[0], &workers[1]);
    browser.goto(&format!("{base}/"));
    let button = format!("button[data-maint=\"{out}\"][data-on=\"1\"]");
    browser.wait_until(
        "the maintenance button",
        &format!(
            "return !!document.querySelector('{}')",
            button.replace('\'', "\\'")
        ),
        WAIT,
    );
    browser.click(&button);
    let asked = browser.dialog(WAIT);
    assert!(
        asked.contains(out.as_str()) && asked.contains("maintenance"),
        "{asked}"
    );
    browser.accept(None);
    browser.wait_until(
        "the maintenance tag",
        "return document.querySelectorAll('.tag').length === 1",
        WAIT,
    );
    // Every request now goes to the other worker.
    for n in 0..20 {
        p.sendfor("svc", "echo", &format!("t{n}"), 0, vec![b"m".to_vec()])
            .unwrap();
        let d = expect(&mut p, DeliveryKind::Mailbox, WAIT);
        assert_eq!(&d.sender, stays, "request {n} went to {}", d.sender);
    }
}

#[test]
fn a_dead_letter_is_replayed_from_the_page() {
    let Some(browser) = Browser::start("console replay") else {
        return;
    };
    let Live {
        b,
        base,
        dir,
        mut p,
        _workers: _w,
    } = Live::start("job", "return alaska.fail('not yet')");
    p.sendfor("svc", "job", "t", 0, vec![b"order-7".to_vec()])
        .unwrap();
    expect(&mut p, DeliveryKind::Mailbox, WAIT);
    browser.goto(&format!("{base}/"));
    browser.wait_until(
        "the dead letter's replay button",
        "return !!document.querySelector('button[data-replay]')",
        WAIT,
    );
    script(
        dir.path(),
        "job",
        "sendTo('done', alaskaContext, 'replayed') return 'ok'",
    );
    browser.click("button[data-replay]");
    assert!(browser.dialog(WAIT).contains("Replay dead letter"));
    browser.accept(None);
    let mut seen = client(b.endpoint(), "replayed");
    let d = expect(&mut seen, DeliveryKind::Mailbox, WAIT);
    assert_eq!(d.content[0], b"order-7");
    browser.wait_until(
        "the dead-letter table empty",
        "return document.getElementById('dead').textContent.includes('no dead letters')",
        WAIT,
    );
}

#[test]
fn the_page_asks_for_the_token_once_and_then_shows_the_broker() {
    let Some(browser) = Browser::start("console token") else {
        return;
    };
    let b = broker_with(|c| {
        c.http_listen = Some("127.0.0.1:0".into());
        c.http_token = Some("s3cret".into());
    });
    let base = format!("http://{}", b.http_addr().unwrap());
    // The page itself needs no token; the API does.
    assert_eq!(get(&agent(), &format!("{base}/")).0, 200);
    assert_eq!(get(&agent(), &format!("{base}/v1/clients")).0, 401);
    let _p = client(b.endpoint(), "someone");
    browser.goto(&format!("{base}/"));
    assert!(browser.dialog(WAIT).contains("Admin token"));
    browser.accept(Some("s3cret"));
    browser.wait_until(
        "the client list",
        "return !!document.querySelector('[data-client=\"someone\"]')",
        WAIT,
    );
    assert_eq!(
        browser.eval("return sessionStorage.getItem('alaska-token')"),
        serde_json::json!("s3cret")
    );
}

#[test]
fn a_workers_own_page_shows_its_state_and_outcomes() {
    let Some(browser) = Browser::start("worker page") else {
        return;
    };
    let b = common::broker();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "hello", "return 'hi'");
    // One HTTP runner configured (nothing listens there: the page only
    // shows what the worker runs).
    let w = OpsWorker::start(b.endpoint(), dir.path(), |o, _| {
        o.runners.push(RunnerConfig {
            name: "orders".into(),
            pattern: Pattern(regex::Regex::new("^order").unwrap()),
            kind: RunnerKind::Http(HttpConfig {
                url: "http://127.0.0.1:9/orders".into(),
                timeout: Duration::from_secs(5),
                concurrency: 3,
                headers: Vec::new(),
            }),
            lines: Vec::new(),
        })
    });
    let mut p = client(b.endpoint(), "producer");
    ready(&mut p, dir.path());
    p.sendfor("svc", "hello", "t", 0, vec![b"x".to_vec()])
        .unwrap();
    expect(&mut p, DeliveryKind::Mailbox, WAIT);
    browser.goto(&w.url("/"));
    browser.wait_until(
        "the state serving",
        "const e = document.querySelector('[data-state]'); return !!e && e.textContent === 'serving'",
        WAIT,
    );
    browser.wait_until(
        "the subject hello with one done",
        "const e = document.querySelector('[data-subject=\"hello\"]'); return !!e && e.closest('tr').children[1].textContent === '1'",
        WAIT,
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('#vms tbody tr').length"),
        serde_json::json!(2)
    );
    assert_eq!(
        browser.eval(
            "return Array.from(document.querySelectorAll('#runners tbody td')).map(td => td.textContent)"
        ),
        serde_json::json!(["orders", "http", "^order", "http://127.0.0.1:9/orders", "3"])
    );
    browser.screenshot(&screenshot_path("worker-status"));
}

#[test]
fn with_open_reads_everyone_may_look_and_only_the_token_may_act() {
    let b = broker_with(|c| {
        c.http_listen = Some("127.0.0.1:0".into());
        c.http_token = Some("s3cret".into());
        c.http_open_reads = true;
    });
    let base = format!("http://{}", b.http_addr().unwrap());
    let a = agent();
    let _w = client(b.endpoint(), "someone");
    for path in ["/", "/v1/clients", "/v1/dead", "/metrics"] {
        assert_eq!(get(&a, &format!("{base}{path}")).0, 200, "{path}");
    }
    let (status, text) = ops_support::http::post(
        &a,
        &format!("{base}/v1/clients/someone/maintenance"),
        "{\"on\": true}",
    );
    assert_eq!(status, 401, "{text}");
    assert_eq!(
        ops_support::http::post(&a, &format!("{base}/v1/dead/purge"), "{}").0,
        401
    );
}

#[test]
fn a_delayed_request_is_cancelled_from_the_page_and_schedules_are_listed() {
    let Some(browser) = Browser::start("console delayed") else {
        return;
    };
    let (cfg, _) = alaska::broker::parse_config(
        "mlm_server\n    schedule\n        nightly\n            cron = \"0 3 * * *\"\n            address = \"svc\"\n            subject = \"report\"\n",
        std::path::Path::new("."),
    )
    .unwrap();
    let b = broker_with(|c| {
        c.http_listen = Some("127.0.0.1:0".into());
        c.schedules = cfg.schedules;
    });
    let base = format!("http://{}", b.http_addr().unwrap());
    let mut p = client(b.endpoint(), "p");
    p.sendfor_delayed(
        "svc",
        "later",
        "",
        0,
        vec![b"x".to_vec()],
        Duration::from_secs(600),
    )
    .unwrap();
    browser.goto(&format!("{base}/"));
    browser.wait_until(
        "the delayed request's cancel button",
        "return !!document.querySelector('button[data-cancel]')",
        WAIT,
    );
    let schedules = browser.eval("return document.getElementById('schedules').textContent");
    let schedules = schedules.as_str().unwrap_or_default();
    assert!(
        schedules.contains("nightly") && schedules.contains("0 3 * * * (UTC)"),
        "{schedules}"
    );
    browser.click("button[data-cancel]");
    assert!(browser.dialog(WAIT).contains("Cancel delayed request"));
    browser.accept(None);
    browser.wait_until(
        "the delayed table empty",
        "return document.getElementById('delayed').textContent.includes('nothing delayed')",
        WAIT,
    );
    assert_eq!(
        json(&get(&agent(), &format!("{base}/v1/delayed")).1)["total"],
        0
    );
}
