//! Runs every vector recorded from the real libmlm codec
//! (`tests/data/codec-vectors.json`): each must encode byte for byte and
//! decode field for field; each `malformed` entry must be rejected.

use alaska::mlm::{Message, Status};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/codec-vectors.json");
    let text = std::fs::read_to_string(path).expect("read codec-vectors.json");
    serde_json::from_str(&text).expect("parse codec-vectors.json")
}

fn s(fields: &Value, name: &str) -> String {
    fields[name]
        .as_str()
        .unwrap_or_else(|| panic!("field {name} missing in {fields}"))
        .to_string()
}

fn n(fields: &Value, name: &str) -> u64 {
    fields[name]
        .as_u64()
        .unwrap_or_else(|| panic!("field {name} missing in {fields}"))
}

fn content(fields: &Value) -> Vec<Vec<u8>> {
    fields["content"]
        .as_array()
        .expect("content")
        .iter()
        .map(|f| f.as_str().expect("content frame").as_bytes().to_vec())
        .collect()
}

fn status(fields: &Value) -> Status {
    Status::new(n(fields, "status_code") as u16, s(fields, "status_reason"))
}

/// Builds the message a vector describes from its named fields.
fn message(command: &str, f: &Value) -> Message {
    match command {
        "CONNECTION_OPEN" => {
            assert_eq!(s(f, "protocol"), "MALAMUTE");
            assert_eq!(n(f, "version"), 1);
            Message::ConnectionOpen {
                address: s(f, "address"),
            }
        }
        "CONNECTION_PING" => Message::ConnectionPing,
        "CONNECTION_PONG" => Message::ConnectionPong,
        "CONNECTION_CLOSE" => Message::ConnectionClose,
        "STREAM_WRITE" => Message::StreamWrite {
            stream: s(f, "stream"),
        },
        "STREAM_READ" => Message::StreamRead {
            stream: s(f, "stream"),
            pattern: s(f, "pattern"),
        },
        "STREAM_SEND" => Message::StreamSend {
            subject: s(f, "subject"),
            content: content(f),
        },
        "STREAM_DELIVER" => Message::StreamDeliver {
            address: s(f, "address"),
            sender: s(f, "sender"),
            subject: s(f, "subject"),
            content: content(f),
        },
        "MAILBOX_SEND" => Message::MailboxSend {
            address: s(f, "address"),
            subject: s(f, "subject"),
            tracker: s(f, "tracker"),
            timeout: n(f, "timeout") as u32,
            content: content(f),
        },
        "MAILBOX_DELIVER" => Message::MailboxDeliver {
            sender: s(f, "sender"),
            address: s(f, "address"),
            subject: s(f, "subject"),
            tracker: s(f, "tracker"),
            content: content(f),
        },
        "SERVICE_SEND" => Message::ServiceSend {
            address: s(f, "address"),
            subject: s(f, "subject"),
            tracker: s(f, "tracker"),
            timeout: n(f, "timeout") as u32,
            content: content(f),
        },
        "SERVICE_OFFER" => Message::ServiceOffer {
            address: s(f, "address"),
            pattern: s(f, "pattern"),
        },
        "SERVICE_DELIVER" => Message::ServiceDeliver {
            sender: s(f, "sender"),
            address: s(f, "address"),
            subject: s(f, "subject"),
            tracker: s(f, "tracker"),
            content: content(f),
        },
        "OK" => Message::Ok { status: status(f) },
        "ERROR" => Message::Error { status: status(f) },
        "CREDIT" => Message::Credit {
            amount: n(f, "amount") as u16,
        },
        "CONFIRM" => Message::Confirm {
            tracker: s(f, "tracker"),
            status: status(f),
        },
        "STREAM_CANCEL" => Message::StreamCancel {
            stream: s(f, "stream"),
        },
        other => panic!("vector names unknown command {other}"),
    }
}

fn frames(v: &Value) -> Vec<Vec<u8>> {
    v["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| hex::decode(f.as_str().expect("hex frame")).expect("valid hex"))
        .collect()
}

#[test]
fn every_vector_encodes_and_decodes_exactly() {
    let doc = vectors();
    let list = doc["vectors"].as_array().expect("vectors list");
    assert!(list.len() >= 23, "vector file looks truncated");
    let mut seen_ids = std::collections::BTreeSet::new();
    for v in list {
        let name = v["name"].as_str().unwrap();
        let command = v["command"].as_str().unwrap();
        let want = frames(v);
        let msg = message(command, &v["fields"]);
        assert_eq!(msg.id() as u64, v["id"].as_u64().unwrap(), "{name}: id");
        assert_eq!(msg.name(), command, "{name}: name");
        let got = msg
            .encode()
            .unwrap_or_else(|e| panic!("{name}: encode: {e}"));
        assert_eq!(
            got.iter().map(hex::encode).collect::<Vec<_>>(),
            want.iter().map(hex::encode).collect::<Vec<_>>(),
            "{name}: encoded frames differ"
        );
        let back = Message::decode(&want).unwrap_or_else(|e| panic!("{name}: decode: {e}"));
        assert_eq!(back, msg, "{name}: decoded fields differ");
        let owned = Message::decode_owned(want.clone()).unwrap();
        assert_eq!(owned, msg, "{name}: decode_owned differs");
        seen_ids.insert(msg.id());
    }
    assert_eq!(seen_ids.len(), 18, "every command has a vector");
}

#[test]
fn every_malformed_entry_is_rejected() {
    let doc = vectors();
    let list = doc["malformed"].as_array().expect("malformed list");
    assert!(!list.is_empty());
    for v in list {
        let name = v["name"].as_str().unwrap();
        assert_eq!(v["expect"], "reject", "{name}");
        let f = frames(v);
        match Message::decode(&f) {
            Err(e) => assert!(!e.to_string().is_empty(), "{name}: error has text"),
            Ok(m) => panic!("{name}: malformed frames decoded as {m:?}"),
        }
        assert!(Message::decode_owned(f).is_err(), "{name}: decode_owned");
    }
}

#[test]
fn every_truncation_of_every_vector_is_rejected_not_panicking() {
    let doc = vectors();
    for v in doc["vectors"].as_array().unwrap() {
        let f = frames(v);
        for cut in 0..f[0].len() {
            let mut g = f.clone();
            g[0].truncate(cut);
            assert!(
                Message::decode(&g).is_err(),
                "{}: header cut at {cut} decoded",
                v["name"]
            );
        }
    }
}
