//! The VM pool driven directly (no broker): the scripting API, failures,
//! budgets, isolation between requests, reloading, concurrency, shutdown.

use std::time::{Duration, Instant};

use crate::common;

use alaska::worker::{ErrorKind, Job, Output, Request};
use common::pool::{text, Harness};

#[test]
fn send_and_send_to_like_the_original_pi_script() {
    let mut h = Harness::new(1);
    h.script(
        "pi",
        "local n = require('cjson').decode(alaskaContext).n\n\
         local ans, j = 3, 2\n\
         for i = 1, n do local inc = 4.0 / (j * (j + 1) * (j + 2)); if i % 2 == 1 then ans = ans + inc else ans = ans - inc end; j = j + 2 end\n\
         sendTo('pi.' .. n, ans, 'aw.res.pi')\n\
         send('pi.' .. n, ans, 'numbers')\n\
         sendTo('plain', 'x')\n\
         send('att', 'body', nil, 'attached')\n",
    );
    let c = h.run("pi", r#"{"n":28}"#);
    assert_eq!(c.error(), None);
    let pi = match &c.run.outputs[0] {
        Output::Mail {
            address,
            subject,
            content,
        } => {
            assert_eq!((address.as_str(), subject.as_str()), ("aw.res.pi", "pi.28"));
            String::from_utf8(content[0].clone()).unwrap()
        }
        o => panic!("expected mail, got {o:?}"),
    };
    assert!(pi.starts_with("3.1415"), "{pi}");
    assert_eq!(
        c.run.outputs[1..],
        [
            Output::Stream {
                stream: "numbers".into(),
                subject: "pi.28".into(),
                content: vec![pi.clone().into_bytes()]
            },
            Output::Mail {
                address: "aw.res".into(),
                subject: "plain".into(),
                content: vec![b"x".to_vec()]
            },
            Output::Stream {
                stream: "aw.res".into(),
                subject: "att".into(),
                content: vec![b"body".to_vec(), b"attached".to_vec()]
            },
        ]
    );
    assert_eq!(c.reply(), None, "no return value, no reply");
}

#[test]
fn cjson_decode_encode_and_null() {
    let mut h = Harness::new(1);
    h.script(
        "dump",
        "local cjson = require 'cjson'\n\
         local t = cjson.decode(alaskaContext)\n\
         assert(t.missing == cjson.null, 'null decodes to cjson.null')\n\
         assert(t.list[2] == 'b')\n\
         return { c = t.c + 1, list = t.list, missing = cjson.null }",
    );
    let c = h.run("dump", r#"{"c":1,"list":["a","b"],"missing":null}"#);
    assert_eq!(c.error(), None);
    let v: serde_json::Value = serde_json::from_slice(c.reply().as_deref().unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"c": 2, "list": ["a", "b"], "missing": null})
    );
    let c = h.run("dump", "not json");
    let e = c.error().unwrap();
    assert_eq!(e.kind, ErrorKind::Runtime);
    assert!(e.message.contains("cjson.decode"), "{}", e.message);
}

#[test]
fn every_failure_kind_is_reported_with_text() {
    let mut h = Harness::new(1);
    h.script("syntax", "this is not lua");
    h.script("runtime", "local t = nil\nreturn t.x");
    h.script("table", "error({ code = 42, why = 'nope' })");
    for (subject, kind, needle) in [
        ("missing", ErrorKind::MissingScript, "no script"),
        ("syntax", ErrorKind::Syntax, "syntax"),
        ("runtime", ErrorKind::Runtime, "attempt to index"),
        ("table", ErrorKind::Runtime, "\"code\":42"),
    ] {
        let c = h.run(subject, "{}");
        let e = c
            .error()
            .unwrap_or_else(|| panic!("{subject} did not fail"));
        assert_eq!(e.kind, kind, "{subject}: {}", e.message);
        assert!(e.message.contains(needle), "{subject}: {}", e.message);
        if kind == ErrorKind::Runtime {
            assert!(
                e.message.contains("stack traceback"),
                "{subject}: {}",
                e.message
            );
        }
        assert_eq!(
            c.request.content,
            vec![b"{}".to_vec()],
            "content comes back for the report"
        );
    }
}

#[test]
fn traversal_subjects_run_nothing() {
    let mut h = Harness::new(1);
    let outside = h
        .dir
        .path()
        .parent()
        .unwrap()
        .join("alaska-outside-test.lua");
    std::fs::write(&outside, "sendTo('x', 'escaped')").unwrap();
    std::fs::create_dir_all(h.dir.path().join("a")).unwrap();
    std::fs::write(h.dir.path().join("a/b.lua"), "sendTo('x', 'nested')").unwrap();
    for subject in [
        "../alaska-outside-test",
        "a/b",
        "",
        "a\0b",
        "..",
        "/etc/passwd",
    ] {
        let c = h.run(subject, "{}");
        let e = c.error().unwrap_or_else(|| panic!("{subject:?} ran"));
        assert_eq!(e.kind, ErrorKind::BadSubject, "{subject:?}: {}", e.message);
        assert!(c.run.outputs.is_empty());
    }
    let _ = std::fs::remove_file(outside);
}

#[test]
fn budgets_stop_loops_and_memory_bombs_and_the_vm_serves_on() {
    let mut h = Harness::with(1, |c| c.timeout = Duration::from_millis(200));
    h.script("loop", "while true do end");
    h.script(
        "pcall_loop",
        "while true do pcall(function() while true do end end) end",
    );
    h.script(
        "xpcall_loop",
        "while true do xpcall(function() while true do end end, function(e) return e end) end",
    );
    h.script(
        "co_loop",
        "local co = coroutine.create(function() while true do end end)\n\
         while true do coroutine.resume(co) end",
    );
    h.script(
        "wrap_loop",
        "local f = coroutine.wrap(function() while true do end end)\nwhile true do pcall(f) end",
    );
    h.script("ok", "return 'still serving'");
    for (subject, kind) in [
        ("loop", ErrorKind::Timeout),
        ("pcall_loop", ErrorKind::Timeout),
        ("xpcall_loop", ErrorKind::Timeout),
        ("co_loop", ErrorKind::Timeout),
        ("wrap_loop", ErrorKind::Timeout),
    ] {
        let started = Instant::now();
        let c = h.run(subject, "{}");
        let e = c
            .error()
            .unwrap_or_else(|| panic!("{subject} was not stopped"));
        assert_eq!(e.kind, kind, "{subject}: {}", e.message);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{subject} took {:?}",
            started.elapsed()
        );
        let next = h.run("ok", "{}");
        assert_eq!(next.error(), None, "after {subject}");
        assert_eq!(text(&next.reply()), "still serving");
    }
}

#[test]
fn memory_bombs_are_stopped_and_the_vm_is_replaced() {
    // A generous time budget: this is about memory, and a garbage
    // collector working near the limit is slow in a debug build.
    let mut h = Harness::with(1, |c| c.timeout = Duration::from_secs(20));
    h.script(
        "bomb",
        "local t = {}\nlocal i = 0\nwhile true do i = i + 1; t[i] = string.rep('x', 1024) .. i end",
    );
    h.script("pcall_bomb", "local t = {}\nwhile true do pcall(function() for i = 1, 1e9 do t[#t + 1] = string.rep('y', 4096) .. i end end) end");
    h.script("ok", "return 'still serving'");
    for subject in ["bomb", "pcall_bomb"] {
        let c = h.run(subject, "{}");
        let e = c
            .error()
            .unwrap_or_else(|| panic!("{subject} was not stopped"));
        assert_eq!(e.kind, ErrorKind::Memory, "{subject}: {}", e.message);
        let next = h.run("ok", "{}");
        assert_eq!(next.error(), None, "after {subject}");
        assert_eq!(text(&next.reply()), "still serving");
    }
}

#[test]
fn globals_do_not_leak_between_requests_but_modules_stay_loaded() {
    let libs = tempfile::tempdir().unwrap();
    let lib = libs.path().to_path_buf();
    std::fs::write(
        lib.join("counter.lua"),
        "local M = { n = 0 }\nfunction M.bump() M.n = M.n + 1; return M.n end\nreturn M",
    )
    .unwrap();
    let lib_dir = lib.clone();
    let mut h = Harness::with(1, move |c| c.lua_path = vec![lib_dir]);
    h.script(
        "leak",
        "local seen = tostring(leaked) .. ',' .. tostring(_G.leaked2)\n\
         leaked = 'yes'\n_G.leaked2 = 'yes'\n\
         return seen .. ',' .. require('counter').bump()",
    );
    let first = h.run("leak", "");
    assert_eq!(first.error(), None);
    assert_eq!(text(&first.reply()), "nil,nil,1");
    assert_eq!(text(&h.run("leak", "").reply()), "nil,nil,2");
}

#[test]
fn a_script_edited_on_disk_is_picked_up() {
    let mut h = Harness::new(1);
    h.script("v", "return 'one'");
    assert_eq!(text(&h.run("v", "").reply()), "one");
    h.script("v", "return 'two, longer'");
    assert_eq!(text(&h.run("v", "").reply()), "two, longer");
}

#[test]
fn replies_and_request_metadata() {
    let mut h = Harness::new(1);
    h.script(
        "meta",
        "return { sender = alaska.sender, subject = alaska.subject, address = alaska.address,\n\
                  tracker = alaska.tracker, frames = alaska.frames, ctx = alaskaContext }",
    );
    h.script("num", "return 42");
    h.submit("meta", &[b"first", b"second"]);
    let c = h.next_done();
    let v: serde_json::Value = serde_json::from_slice(c.reply().as_deref().unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"sender": "requester", "subject": "meta", "address": "svc",
                           "tracker": "trk", "frames": ["first", "second"], "ctx": "first"})
    );
    assert_eq!(text(&h.run("num", "").reply()), "42");
}

#[test]
fn binary_chunks_and_os_exit_are_refused() {
    let mut h = Harness::new(1);
    h.script("bin", "local f, err = load(string.dump(function() return 1 end))\nreturn tostring(f) .. ' ' .. tostring(err)");
    h.script("exit", "os.exit(1)");
    let r = text(&h.run("bin", "").reply());
    assert!(r.starts_with("nil ") && r.contains("binary"), "{r}");
    let e = h.run("exit", "").error().unwrap();
    assert!(
        e.message.contains("os.exit is not allowed"),
        "{}",
        e.message
    );
}

#[test]
fn four_vms_run_concurrently() {
    let mut h = Harness::with(4, |c| c.backlog = 64);
    h.script("nap", "alaska.sleep(50)\nreturn alaskaContext");
    let started = Instant::now();
    for i in 0..40 {
        h.submit("nap", &[format!("{i}").as_bytes()]);
    }
    let mut seen = Vec::new();
    for _ in 0..40 {
        let c = h.next_done();
        assert_eq!(c.error(), None);
        seen.push(text(&c.reply()).parse::<u32>().unwrap());
    }
    let took = started.elapsed();
    seen.sort();
    assert_eq!(seen, (0..40).collect::<Vec<_>>());
    // One VM would need 40 x 50 ms = 2 s; four need about 0.5 s.
    assert!(took < Duration::from_millis(1500), "40 naps took {took:?}");
}

#[test]
fn full_pool_refuses_and_shutdown_returns_unstarted_jobs() {
    let mut h = Harness::with(1, |c| {
        c.backlog = 2;
        c.timeout = Duration::from_secs(5);
    });
    let marks = h.dir.path().display().to_string();
    h.script(
        "nap",
        &format!(
            "io.open('{marks}/' .. alaskaContext .. '.mark', 'w'):close()\n\
             alaska.sleep(300)\nreturn 'done'"
        ),
    );
    h.submit("nap", &[b"1"]);
    // Job 1 on the VM: 2 and 3 then fill the backlog.
    common::wait_marks(h.dir.path(), &["1"], Duration::from_secs(5));
    h.submit("nap", &[b"2"]);
    h.submit("nap", &[b"3"]);
    let extra = Job {
        id: 99,
        request: Request {
            sender: String::new(),
            address: String::new(),
            subject: "nap".into(),
            tracker: String::new(),
            content: vec![],
            attempt: 1,
            hops: 0,
        },
    };
    assert!(
        h.pool.as_ref().unwrap().try_submit(extra).is_err(),
        "backlog of 2 is full"
    );
    let unstarted = h.pool.take().unwrap().shutdown(Duration::from_secs(2));
    let first = h.next_done();
    assert_eq!(
        (first.id, text(&first.reply()).as_str()),
        (1, "done"),
        "running job finished"
    );
    let mut ids: Vec<u64> = unstarted.iter().map(|j| j.id).collect();
    ids.sort();
    assert_eq!(ids, [2, 3]);
}

#[test]
fn scripts_end_in_outcomes() {
    use alaska::worker::Outcome;
    let mut h = Harness::new(1);
    for (name, body, want) in [
        (
            "retry_ms",
            "return alaska.retry(250)",
            Outcome::Retry {
                after: Some(Duration::from_millis(250)),
                reason: "the script asked to retry".into(),
            },
        ),
        (
            "retry_backoff",
            "return alaska.retry(nil, 'busy')",
            Outcome::Retry {
                after: None,
                reason: "busy".into(),
            },
        ),
        (
            "fail",
            "return alaska.fail('bad input')",
            Outcome::Fail {
                reason: "bad input".into(),
            },
        ),
        ("drop", "return alaska.drop()", Outcome::Drop),
        (
            "forward_own",
            "return alaska.forward('next', 'stage2')",
            Outcome::Forward {
                address: "next".into(),
                subject: "stage2".into(),
                content: None,
                delay: None,
            },
        ),
        (
            "forward_later",
            "return alaska.forward('next', 'stage2', nil, { delay = 250 })",
            Outcome::Forward {
                address: "next".into(),
                subject: "stage2".into(),
                content: None,
                delay: Some(Duration::from_millis(250)),
            },
        ),
        (
            "forward_text",
            "return alaska.forward('next', 'stage2', 'new body')",
            Outcome::Forward {
                address: "next".into(),
                subject: "stage2".into(),
                content: Some(vec![b"new body".to_vec()]),
                delay: None,
            },
        ),
        (
            "forward_frames",
            "return alaska.forward('next', 'stage2', {'a', 'b', 3})",
            Outcome::Forward {
                address: "next".into(),
                subject: "stage2".into(),
                content: Some(vec![b"a".to_vec(), b"b".to_vec(), b"3".to_vec()]),
                delay: None,
            },
        ),
        (
            "done",
            "return 'hi'",
            Outcome::Done {
                reply: Some(b"hi".to_vec()),
            },
        ),
        ("nothing", "local x = 1", Outcome::Done { reply: None }),
    ] {
        h.script(name, body);
        let c = h.run(name, "");
        assert_eq!(c.outcome(), Some(&want), "{name}: {:?}", c.error());
    }
    for (name, body, needle) in [
        (
            "bad_forward",
            "return alaska.forward('', 'x')",
            "bad argument #1 to 'forward'",
        ),
        (
            "bad_retry",
            "return alaska.retry(-5)",
            "bad argument #1 to 'retry'",
        ),
        (
            "bad_frames",
            "return alaska.forward('a', 'b', {{}})",
            "frame 1 is not a string",
        ),
        (
            "function_reply",
            "return alaska.retry",
            "a function cannot be a reply",
        ),
    ] {
        h.script(name, body);
        let e = h
            .run(name, "")
            .error()
            .unwrap_or_else(|| panic!("{name} passed"));
        assert!(e.message.contains(needle), "{name}: {}", e.message);
    }
}

#[test]
fn scripts_see_the_attempt_and_hop_count() {
    let mut h = Harness::new(1);
    h.script(
        "meta",
        "return alaska.attempt .. ',' .. alaska.hops .. ',' .. alaska.tracker",
    );
    h.submit_request(Request {
        sender: "s".into(),
        address: "svc".into(),
        subject: "meta".into(),
        tracker: "t9".into(),
        content: vec![],
        attempt: 3,
        hops: 2,
    });
    assert_eq!(text(&h.next_done().reply()), "3,2,t9");
}

#[test]
fn four_vms_share_one_dictionary_and_count_exactly() {
    let mut h = Harness::new(4);
    h.script(
        "count",
        "for i = 1, 1000 do alaska.shared:incr('n', 1, 0) end return 'ok'",
    );
    for _ in 0..4 {
        h.submit("count", &[b""]);
    }
    for _ in 0..4 {
        let c = h.next_done();
        assert_eq!(c.error(), None);
    }
    h.script("read", "return alaska.shared.get('n')");
    assert_eq!(text(&h.run("read", "").reply()), "4000");
}

#[test]
fn the_shared_dictionary_api() {
    let mut h = Harness::with(2, |c| c.shared_bytes = 4096);
    h.script(
        "api",
        "local s = alaska.shared\n\
         local r = {}\n\
         r[#r+1] = tostring(s:set('a', 'x'))\n\
         r[#r+1] = tostring(s.set('n', 41))\n\
         r[#r+1] = tostring(s:add('a', 'y'))\n\
         r[#r+1] = tostring(s:add('b', true))\n\
         r[#r+1] = tostring(s:incr('n', 1))\n\
         r[#r+1] = tostring(s:incr('missing', 1))\n\
         r[#r+1] = select(2, s:incr('a', 1))\n\
         r[#r+1] = tostring(s:get('a'))\n\
         s:set('b', nil)\n\
         r[#r+1] = tostring(s:get('b'))\n\
         s:set('t', 'short', 50)\n\
         s:delete('a')\n\
         local keys = s:keys() table.sort(keys)\n\
         r[#r+1] = table.concat(keys, '+')\n\
         r[#r+1] = tostring(pcall(s.set, 'big', string.rep('x', 8192)))\n\
         r[#r+1] = tostring(pcall(s.set, 'f', function() end))\n\
         return table.concat(r, ' ')",
    );
    let c = h.run("api", "");
    assert_eq!(
        text(&c.reply()),
        "true true false true 42 nil not a number x nil n+t false false",
        "{:?}",
        c.error()
    );
    // Time passing is what is tested: the 50 ms TTL of 't' lies behind us.
    std::thread::sleep(Duration::from_millis(80));
    h.script(
        "later",
        "return tostring(alaska.shared:get('t')) .. ' ' .. alaska.shared:get('n')",
    );
    assert_eq!(
        text(&h.run("later", "").reply()),
        "nil 42",
        "ttl expired, the rest stays"
    );
}
