//! Property tests of every parser that reads what others send or write:
//! the MLM codec, the ZPL reader, the ACL parser, the subject rules, the
//! duration readers, the runner line protocol and the HTTP guard's header
//! helpers. Each property runs `CASES` generated inputs (proptest shrinks a
//! failure to a minimal one and prints it; a counterexample found becomes
//! an example test of its own here).

use std::path::Path;
use std::time::{Duration, Instant};

use alaska::mlm::{Message, Status};
use proptest::prelude::*;

/// Cases per property (the case counts are in docs/tests.md).
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// An MLM string: at most 255 bytes of UTF-8.
fn mlm_string() -> impl Strategy<Value = String> {
    "\\PC{0,60}".prop_filter("255 bytes at most", |s| s.len() <= 255)
}

fn frames() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..4)
}

fn status() -> impl Strategy<Value = Status> {
    (any::<u16>(), mlm_string()).prop_map(|(c, r)| Status::new(c, r))
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        mlm_string().prop_map(|address| Message::ConnectionOpen { address }),
        Just(Message::ConnectionPing),
        Just(Message::ConnectionPong),
        Just(Message::ConnectionClose),
        mlm_string().prop_map(|stream| Message::StreamWrite { stream }),
        (mlm_string(), mlm_string())
            .prop_map(|(stream, pattern)| Message::StreamRead { stream, pattern }),
        (mlm_string(), frames())
            .prop_map(|(subject, content)| Message::StreamSend { subject, content }),
        (mlm_string(), mlm_string(), mlm_string(), frames()).prop_map(
            |(address, sender, subject, content)| {
                Message::StreamDeliver {
                    address,
                    sender,
                    subject,
                    content,
                }
            }
        ),
        (
            mlm_string(),
            mlm_string(),
            mlm_string(),
            any::<u32>(),
            frames()
        )
            .prop_map(|(address, subject, tracker, timeout, content)| {
                Message::MailboxSend {
                    address,
                    subject,
                    tracker,
                    timeout,
                    content,
                }
            }),
        (
            mlm_string(),
            mlm_string(),
            mlm_string(),
            mlm_string(),
            frames()
        )
            .prop_map(|(sender, address, subject, tracker, content)| {
                Message::MailboxDeliver {
                    sender,
                    address,
                    subject,
                    tracker,
                    content,
                }
            }),
        (
            mlm_string(),
            mlm_string(),
            mlm_string(),
            any::<u32>(),
            frames()
        )
            .prop_map(|(address, subject, tracker, timeout, content)| {
                Message::ServiceSend {
                    address,
                    subject,
                    tracker,
                    timeout,
                    content,
                }
            }),
        (mlm_string(), mlm_string())
            .prop_map(|(address, pattern)| Message::ServiceOffer { address, pattern }),
        (
            mlm_string(),
            mlm_string(),
            mlm_string(),
            mlm_string(),
            frames()
        )
            .prop_map(|(sender, address, subject, tracker, content)| {
                Message::ServiceDeliver {
                    sender,
                    address,
                    subject,
                    tracker,
                    content,
                }
            }),
        status().prop_map(|status| Message::Ok { status }),
        status().prop_map(|status| Message::Error { status }),
        any::<u16>().prop_map(|amount| Message::Credit { amount }),
        (mlm_string(), status()).prop_map(|(tracker, status)| Message::Confirm { tracker, status }),
        mlm_string().prop_map(|stream| Message::StreamCancel { stream }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any message encodes and decodes back to itself.
    #[test]
    fn codec_round_trips(m in message()) {
        let frames = m.encode().expect("encodes");
        prop_assert_eq!(Message::decode(&frames).expect("decodes"), m);
    }

    /// Any bytes decode to a message or a typed error, never a panic, and
    /// in time linear in their size (well under a millisecond a kilobyte).
    #[test]
    fn codec_decodes_any_bytes_or_says_why(frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..512), 0..6)) {
        let started = Instant::now();
        let _ = Message::decode(&frames);
        let bytes: usize = frames.iter().map(Vec::len).sum();
        prop_assert!(started.elapsed() < Duration::from_millis(50 + bytes as u64));
    }

    /// A damaged valid message (a byte changed, or cut short) is a message
    /// or an error, never a panic.
    #[test]
    fn codec_survives_damage(m in message(), at in any::<usize>(), byte in any::<u8>(), cut in any::<bool>()) {
        let mut frames = m.encode().expect("encodes");
        let header = &mut frames[0];
        if !header.is_empty() {
            let i = at % header.len();
            if cut { header.truncate(i) } else { header[i] = byte }
        }
        let _ = Message::decode(&frames);
    }

    /// Generated ZPL files parse back to the keys and values written.
    #[test]
    fn zpl_round_trips(tree in prop::collection::btree_map("[a-z][a-z0-9_]{0,8}", prop::collection::btree_map("[a-z][a-z0-9_-]{0,8}", "[ -~&&[^\"#]]{0,20}", 1..5), 1..5)) {
        let mut text = String::new();
        let mut want = Vec::new();
        for (section, keys) in &tree {
            text.push_str(&format!("{section}\n"));
            for (k, v) in keys {
                text.push_str(&format!("    {k} = \"{v}\"    # a comment\n"));
                want.push((format!("{section}/{k}"), v.clone()));
            }
        }
        let got: Vec<(String, String)> = alaska::config::zpl::parse(&text)
            .expect("parses")
            .into_iter()
            .map(|e| (e.path, e.value))
            .collect();
        prop_assert_eq!(got, want);
    }

    /// Any text is ZPL or an error that names a line; never a panic.
    #[test]
    fn zpl_garbage_is_an_error_naming_the_line(text in "(\\PC|\n| |=|\"|#){0,200}") {
        if let Err(e) = alaska::config::zpl::parse(&text) {
            prop_assert!(e.to_string().contains("line"), "{}", e);
        }
    }

    /// Any text is an ACL or an error naming the file and a line.
    #[test]
    fn acl_garbage_is_an_error_naming_the_line(text in "(user|default|open|send|mail|offer|read|write|\\PC|\n| {4}|=|\"){0,60}") {
        if let Err(e) = alaska::broker::acl::Acl::parse(&text, Path::new("acl.cfg")) {
            prop_assert!(e.to_string().contains("acl.cfg"), "{}", e);
        }
    }

    /// No subject, however hostile, selects a file outside the scripts
    /// folder.
    #[test]
    fn subjects_never_leave_the_scripts_folder(subject in "(\\.|/|\\.\\.|[a-z]|%|\\\\|\0){0,30}") {
        let dir = std::env::temp_dir().join("alaska-prop-scripts");
        std::fs::create_dir_all(&dir).unwrap();
        if let Ok(p) = alaska::worker::subject::script_path(&dir, &subject) {
            prop_assert!(p.starts_with(&dir), "{} escapes", p.display());
        }
    }

    /// Durations from configuration: any text is refused or at most a
    /// year; from scripts and children, any float is refused (NaN,
    /// negative) or clamped to a year.
    #[test]
    fn durations_are_bounded_or_refused(text in "[0-9.eE+-]{0,12}(ms|s|m)?", f in any::<f64>()) {
        let text = format!("worker\n    lua\n        timeout = \"{text}\"\n");
        if let Ok(s) = alaska::config::Settings::from_sources(&text, Vec::new()) {
            prop_assert!(s.lua_timeout <= alaska::time::MAX_DURATION && !s.lua_timeout.is_zero());
        }
        match alaska::time::from_ms_f64(f) {
            Some(d) => prop_assert!(d <= alaska::time::MAX_DURATION && f >= 0.0),
            None => prop_assert!(f.is_nan() || f < 0.0),
        }
    }

    /// Any line from a runner child is an outcome or a protocol error,
    /// never a panic.
    #[test]
    fn runner_lines_decode_or_fail(line in prop::collection::vec(any::<u8>(), 0..300), json in "\\{(\"(outcome|reply|after_ms|reason|frames|address|subject)\":(\"[a-z]{0,5}\"|[0-9e.-]{1,8}|null|\\[\\]),?){0,4}\\}") {
        let _ = alaska::worker::runners::protocol::decode_response(&line);
        let _ = alaska::worker::runners::protocol::decode_response(json.as_bytes());
    }
}
