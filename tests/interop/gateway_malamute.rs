//! alaska-gateway against the real Malamute broker (skipped, passing, when
//! no Malamute is installed; see docs/interop.md for where it is looked
//! for): requests answered by an alaska worker, error replies, late
//! replies, mail to a client, and concurrent requests, all through the
//! reference broker. The barrier mail the gateway sends itself is ordinary
//! mail there.

use crate::common;

use std::time::{Duration, Instant};

use alaska::gateway::{Gateway, GatewayOptions};
use alaska::mlm::DeliveryKind;
use common::malamute::{free_port, malamute_binary, Malamute};
use common::{client, expect, script, Worker};

const WAIT: Duration = Duration::from_secs(10);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

fn post(a: &ureq::Agent, url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut r = a.post(url).send(body).expect("HTTP POST");
    (r.status().as_u16(), r.body_mut().read_to_vec().unwrap())
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
    }
}

#[test]
fn the_gateway_through_the_real_malamute() {
    let Some(bin) = malamute_binary() else {
        println!("skipped: real Malamute not found (set ALASKA_MALAMUTE)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let m = Malamute::start(&bin, dir.path(), free_port());
    let scripts = tempfile::tempdir().unwrap();
    script(scripts.path(), "echo", "return alaskaContext");
    script(scripts.path(), "fail", "error('boom')");
    script(scripts.path(), "slow", "alaska.sleep(300) return 'slow'");
    let _w = Worker::start(&m.endpoint, scripts.path(), |o, p| {
        o.errors_reply = true;
        p.timeout = Duration::from_secs(5);
    });
    let mut o = GatewayOptions::new(m.endpoint.clone(), "127.0.0.1:0");
    o.address = format!("gw-{}", common::unique());
    let g = Gateway::start(o).unwrap();
    wait_for("connected", || g.is_connected());
    let base = format!("http://{}", g.local_addr().unwrap());
    let a = agent();
    // The worker's offer is in when it answers a client of our own (a
    // probe through the gateway could time out and leave a late reply).
    let mut probe = client(&m.endpoint, &format!("probe-{}", common::unique()));
    probe
        .sendfor("svc", "echo", "probe", 0, vec![b"p".to_vec()])
        .unwrap();
    expect(&mut probe, DeliveryKind::Mailbox, WAIT);

    let body: Vec<u8> = (0..=255u8).collect();
    assert_eq!(
        post(&a, &format!("{base}/v1/request/svc/echo"), &body),
        (200, body.clone())
    );
    let (status, text) = post(&a, &format!("{base}/v1/request/svc/fail"), b"x");
    assert_eq!(status, 502);
    assert!(String::from_utf8_lossy(&text).contains("boom"));
    assert_eq!(
        post(&a, &format!("{base}/v1/request/svc/slow?timeout=50"), b"x").0,
        504
    );
    wait_for("the late reply counted", || {
        g.metrics()
            .render()
            .contains("alaska_gateway_late_replies_total 1\n")
    });

    let mut inbox = client(&m.endpoint, "inbox");
    assert_eq!(
        post(&a, &format!("{base}/v1/mail/inbox/hi"), b"mail").0,
        202
    );
    let d = expect(&mut inbox, DeliveryKind::Mailbox, WAIT);
    assert_eq!(
        (d.subject.as_str(), d.content),
        ("hi", vec![b"mail".to_vec()])
    );

    let threads: Vec<_> = (0..50)
        .map(|i| {
            let url = format!("{base}/v1/request/svc/echo");
            std::thread::spawn(move || {
                let body = format!("concurrent {i}");
                (post(&agent(), &url, body.as_bytes()), body)
            })
        })
        .collect();
    for t in threads {
        let ((status, got), body) = t.join().unwrap();
        assert_eq!(
            (status, String::from_utf8_lossy(&got).to_string()),
            (200, body)
        );
    }
    let text = g.metrics().render();
    assert!(
        text.contains("alaska_gateway_unmatched_replies_total 0\n"),
        "{text}"
    );
}
