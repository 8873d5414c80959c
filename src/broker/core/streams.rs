//! Streams: publish and subscribe, fire-and-forget as in Malamute. Nothing
//! here is held or stored: a reader that is away misses what is published
//! meanwhile, also across a broker restart.
//!
//! | command | fields | answer |
//! |---|---|---|
//! | STREAM WRITE | stream | OK: the client publishes there from now on |
//! | STREAM READ | stream, pattern | OK (ERROR 300 for an invalid pattern) |
//! | STREAM CANCEL | stream | OK |
//! | STREAM SEND | subject, content | none: STREAM DELIVER to each matching reader, once per client (ERROR 300 before any STREAM WRITE) |

use regex::Regex;

use std::collections::BTreeMap;

use super::{compile, ClientId, Core, Journal, ReaderInfo, StreamInfo};
use crate::mlm::codec::status;
use crate::mlm::{Content, Message};

/// One STREAM READ.
pub(super) struct Reader {
    client: ClientId,
    pattern: Regex,
}

impl<J: Journal> Core<J> {
    /// STREAM WRITE: the stream this client publishes on.
    pub(super) fn on_stream_write(&mut self, id: ClientId, stream: String) {
        if let Some(c) = self.clients.get_mut(&id) {
            c.writer = Some(stream);
        }
        self.reply_ok(&id);
    }

    /// STREAM READ: subscribes to subjects matching `pattern`.
    pub(super) fn on_stream_read(&mut self, id: ClientId, stream: String, pattern: &str) {
        let pattern = match compile(pattern) {
            Ok(re) => re,
            Err(e) => return self.reply_error(&id, status::FAILED, &e),
        };
        if let Some(c) = self.clients.get_mut(&id) {
            c.reads.push(stream.clone());
        }
        self.streams.entry(stream).or_default().push(Reader {
            client: id.clone(),
            pattern,
        });
        self.reply_ok(&id);
    }

    /// STREAM CANCEL: every subscription of this client to the stream ends.
    pub(super) fn on_stream_cancel(&mut self, id: ClientId, stream: &str) {
        if let Some(c) = self.clients.get_mut(&id) {
            c.reads.retain(|s| s != stream);
        }
        self.remove_reader(stream, &id);
        self.reply_ok(&id);
    }

    /// STREAM SEND: to every reader of the client's stream whose pattern
    /// matches, once per reading client.
    pub(super) fn on_stream_send(&mut self, id: ClientId, subject: String, content: Content) {
        self.counters.stream_messages += 1;
        let Some(c) = self.clients.get(&id) else {
            return;
        };
        let Some(stream) = c.writer.clone() else {
            tracing::warn!("{:?} sent STREAM SEND without STREAM WRITE", c.address);
            return self.reply_error(&id, status::FAILED, "no stream: send STREAM WRITE first");
        };
        let sender = c.address.clone();
        let mut targets: Vec<ClientId> = Vec::new();
        if let Some(readers) = self.streams.get(&stream) {
            for r in readers {
                if !targets.contains(&r.client) && r.pattern.is_match(&subject) {
                    targets.push(r.client.clone());
                }
            }
        }
        let Some(last) = targets.pop() else {
            return;
        };
        self.counters.stream_deliveries += targets.len() as u64 + 1;
        let deliver = |content: Content| Message::StreamDeliver {
            address: stream.clone(),
            sender: sender.clone(),
            subject: subject.clone(),
            content,
        };
        for t in &targets {
            self.send(t, deliver(content.clone()));
        }
        self.send(&last, deliver(content));
    }

    /// Removes every subscription of `client` to `stream`.
    pub(super) fn remove_reader(&mut self, stream: &str, client: &ClientId) {
        if let Some(readers) = self.streams.get_mut(stream) {
            readers.retain(|r| r.client != *client);
            if readers.is_empty() {
                self.streams.remove(stream);
            }
        }
    }

    /// Every stream that has readers or a writer, sorted by name.
    pub fn streams(&self) -> Vec<StreamInfo> {
        let mut all: BTreeMap<&str, StreamInfo> = BTreeMap::new();
        for (name, readers) in &self.streams {
            all.insert(
                name,
                StreamInfo {
                    name: name.clone(),
                    readers: readers
                        .iter()
                        .map(|r| ReaderInfo {
                            address: self.address_of(&r.client),
                            pattern: r.pattern.as_str().to_string(),
                        })
                        .collect(),
                    writers: Vec::new(),
                },
            );
        }
        for c in self.clients.values() {
            if let Some(w) = &c.writer {
                all.entry(w)
                    .or_insert_with(|| StreamInfo {
                        name: w.clone(),
                        readers: Vec::new(),
                        writers: Vec::new(),
                    })
                    .writers
                    .push(c.address.clone());
            }
        }
        all.into_values()
            .map(|mut s| {
                s.writers.sort();
                s
            })
            .collect()
    }

    /// (streams with readers, subscriptions): cheap enough for metrics.
    pub(super) fn stream_counts(&self) -> (usize, usize) {
        (
            self.streams.len(),
            self.streams.values().map(Vec::len).sum(),
        )
    }
}
