//! The MLM wire codec: [`Message`] to ZeroMQ frames and back, with no socket
//! in sight.
//!
//! One ZeroMQ message is one MLM command. Frame 1 is the header:
//! the signature `0xAAA8` (big-endian), one byte of command id, then the
//! command's fields in order. Strings are one length byte and that many bytes;
//! numbers are unsigned big-endian; a status is a number2 code and a string
//! reason. Frames after the header are the command's content, passed through
//! untouched.
//!
//! The codec is strict where libmlm is lax: a frame that is too short for what
//! it claims, carries bytes after its last field, has another signature or an
//! unknown id, or (CONNECTION OPEN) a protocol other than `MALAMUTE` or a
//! version other than 1 is a [`DecodeError`], never a half-parsed message.
//! Commands that carry no content must not be followed by content frames
//! (the reference broker stalls on those). The byte-level truth is in
//! `tests/data/codec-vectors.json`, recorded from the real libmlm codec.

use std::fmt;

/// First two bytes of every header frame.
pub const SIGNATURE: u16 = 0xAAA8;
/// The only protocol name CONNECTION OPEN may carry.
pub const PROTOCOL: &str = "MALAMUTE";
/// The only protocol version CONNECTION OPEN may carry.
pub const VERSION: u16 = 1;
/// Longest string field the wire can carry (one length byte).
pub const MAX_STRING: usize = 255;

/// Status codes carried by OK, ERROR and CONFIRM.
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 200;
    /// Temporary failure.
    pub const FAILED: u16 = 300;
    /// The command was invalid (also: "I do not know you").
    pub const COMMAND_INVALID: u16 = 500;
    /// Not implemented.
    pub const NOT_IMPLEMENTED: u16 = 501;
    /// Internal error.
    pub const INTERNAL_ERROR: u16 = 502;
}

/// A status: code and human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// 2xx success, 3xx temporary failure, 5xx error.
    pub code: u16,
    /// Free text, at most 255 bytes.
    pub reason: String,
}

impl Status {
    /// A status with the given code and reason.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Status {
            code,
            reason: reason.into(),
        }
    }
}

/// Content frames of a command, sent and received as they are.
pub type Content = Vec<Vec<u8>>;

/// One MLM command with its fields. Field lists follow the protocol:
///
/// | id | command | fields |
/// |---|---|---|
/// | 1 | CONNECTION OPEN | protocol, version, address |
/// | 2–4 | CONNECTION PING / PONG / CLOSE | – |
/// | 5 | STREAM WRITE | stream |
/// | 6 | STREAM READ | stream, pattern |
/// | 7 | STREAM SEND | subject, content |
/// | 8 | STREAM DELIVER | address, sender, subject, content |
/// | 9 | MAILBOX SEND | address, subject, tracker, timeout, content |
/// | 10 | MAILBOX DELIVER | sender, address, subject, tracker, content |
/// | 11 | SERVICE SEND | address, subject, tracker, timeout, content |
/// | 12 | SERVICE OFFER | address, pattern |
/// | 13 | SERVICE DELIVER | sender, address, subject, tracker, content |
/// | 14 / 15 | OK / ERROR | status |
/// | 16 | CREDIT | amount |
/// | 17 | CONFIRM | tracker, status |
/// | 18 | STREAM CANCEL | stream |
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Client opens a connection under `address` (empty: anonymous).
    /// Protocol `MALAMUTE` and version 1 are implied.
    ConnectionOpen {
        /// Client address; its mailbox name.
        address: String,
    },
    /// Client heartbeat.
    ConnectionPing,
    /// Broker's answer to a ping.
    ConnectionPong,
    /// Client says goodbye.
    ConnectionClose,
    /// Client will publish on `stream`.
    StreamWrite {
        /// Stream name.
        stream: String,
    },
    /// Client reads `stream` for subjects matching `pattern`.
    StreamRead {
        /// Stream name.
        stream: String,
        /// Regular expression on the subject.
        pattern: String,
    },
    /// Client publishes on its current stream.
    StreamSend {
        /// Message subject.
        subject: String,
        /// Content frames.
        content: Content,
    },
    /// Broker delivers a stream message.
    StreamDeliver {
        /// The stream.
        address: String,
        /// Publisher's address.
        sender: String,
        /// Message subject.
        subject: String,
        /// Content frames.
        content: Content,
    },
    /// Client mails `address`.
    MailboxSend {
        /// Addressee.
        address: String,
        /// Message subject.
        subject: String,
        /// Opaque tracker.
        tracker: String,
        /// Time to live in milliseconds, 0 for none.
        timeout: u32,
        /// Content frames.
        content: Content,
    },
    /// Broker delivers mail.
    MailboxDeliver {
        /// Who sent it.
        sender: String,
        /// The mailbox.
        address: String,
        /// Message subject.
        subject: String,
        /// Opaque tracker.
        tracker: String,
        /// Content frames.
        content: Content,
    },
    /// Client sends a request to a service.
    ServiceSend {
        /// Service name.
        address: String,
        /// Request subject.
        subject: String,
        /// Opaque tracker.
        tracker: String,
        /// Time to live in milliseconds, 0 for none.
        timeout: u32,
        /// Content frames.
        content: Content,
    },
    /// Client offers to serve `address` for subjects matching `pattern`.
    ServiceOffer {
        /// Service name.
        address: String,
        /// Regular expression on the subject.
        pattern: String,
    },
    /// Broker delivers a service request to a worker.
    ServiceDeliver {
        /// Requester's address.
        sender: String,
        /// Service name.
        address: String,
        /// Request subject.
        subject: String,
        /// Opaque tracker.
        tracker: String,
        /// Content frames.
        content: Content,
    },
    /// Broker: command succeeded.
    Ok {
        /// 2xx status.
        status: Status,
    },
    /// Broker: command failed.
    Error {
        /// 3xx/5xx status.
        status: Status,
    },
    /// Client grants the broker credit (flow control).
    Credit {
        /// Number of messages.
        amount: u16,
    },
    /// Confirmation of a tracked message.
    Confirm {
        /// Tracker being confirmed.
        tracker: String,
        /// Outcome.
        status: Status,
    },
    /// Client stops reading `stream`.
    StreamCancel {
        /// Stream name.
        stream: String,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string field is longer than the 255 bytes the wire can carry.
    #[error("{command}: field `{field}` is {len} bytes, the protocol allows at most 255")]
    StringTooLong {
        /// Command name.
        command: &'static str,
        /// Field name.
        field: &'static str,
        /// Actual length.
        len: usize,
    },
}

/// Why frames could not be decoded into a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No frames at all.
    #[error("empty message: no header frame")]
    NoFrames,
    /// The header frame is shorter than signature and id.
    #[error("header frame of {0} bytes is too short for signature and command id")]
    TooShort(usize),
    /// Another signature than 0xAAA8.
    #[error("wrong signature {0:#06x}, expected 0xaaa8")]
    Signature(u16),
    /// A command id outside 1..=18.
    #[error("unknown command id {0}")]
    UnknownId(u8),
    /// The header ends before a field does.
    #[error("{command}: header truncated in field `{field}`")]
    Truncated {
        /// Command name.
        command: &'static str,
        /// Field being read.
        field: &'static str,
    },
    /// Bytes left after the last field.
    #[error("{command}: {extra} unexpected bytes after the last field")]
    TrailingBytes {
        /// Command name.
        command: &'static str,
        /// How many bytes.
        extra: usize,
    },
    /// Content frames after a command that carries none.
    #[error("{command}: {frames} unexpected content frame(s)")]
    UnexpectedFrames {
        /// Command name.
        command: &'static str,
        /// How many frames.
        frames: usize,
    },
    /// A string field is not UTF-8.
    #[error("{command}: field `{field}` is not valid UTF-8")]
    Utf8 {
        /// Command name.
        command: &'static str,
        /// Field name.
        field: &'static str,
    },
    /// CONNECTION OPEN with a protocol other than MALAMUTE.
    #[error("CONNECTION OPEN: protocol {0:?}, expected \"MALAMUTE\"")]
    Protocol(String),
    /// CONNECTION OPEN with a version other than 1.
    #[error("CONNECTION OPEN: protocol version {0}, expected 1")]
    Version(u16),
}

impl Message {
    /// The command id on the wire.
    pub fn id(&self) -> u8 {
        match self {
            Message::ConnectionOpen { .. } => 1,
            Message::ConnectionPing => 2,
            Message::ConnectionPong => 3,
            Message::ConnectionClose => 4,
            Message::StreamWrite { .. } => 5,
            Message::StreamRead { .. } => 6,
            Message::StreamSend { .. } => 7,
            Message::StreamDeliver { .. } => 8,
            Message::MailboxSend { .. } => 9,
            Message::MailboxDeliver { .. } => 10,
            Message::ServiceSend { .. } => 11,
            Message::ServiceOffer { .. } => 12,
            Message::ServiceDeliver { .. } => 13,
            Message::Ok { .. } => 14,
            Message::Error { .. } => 15,
            Message::Credit { .. } => 16,
            Message::Confirm { .. } => 17,
            Message::StreamCancel { .. } => 18,
        }
    }

    /// The command's name as the protocol spells it (`SERVICE_SEND`).
    pub fn name(&self) -> &'static str {
        command_name(self.id())
    }

    /// Content frames, empty for commands that carry none.
    pub fn content(&self) -> &[Vec<u8>] {
        match self {
            Message::StreamSend { content, .. }
            | Message::StreamDeliver { content, .. }
            | Message::MailboxSend { content, .. }
            | Message::MailboxDeliver { content, .. }
            | Message::ServiceSend { content, .. }
            | Message::ServiceDeliver { content, .. } => content,
            _ => &[],
        }
    }

    /// Encodes the header frame only; content frames go after it as they
    /// are (see [`Message::content`]). Lets a sender avoid copying content.
    pub fn encode_header(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer {
            buf: Vec::with_capacity(64),
            command: self.name(),
        };
        w.buf.extend_from_slice(&SIGNATURE.to_be_bytes());
        w.buf.push(self.id());
        match self {
            Message::ConnectionOpen { address } => {
                w.string("protocol", PROTOCOL)?;
                w.number2(VERSION);
                w.string("address", address)?;
            }
            Message::ConnectionPing | Message::ConnectionPong | Message::ConnectionClose => {}
            Message::StreamWrite { stream } | Message::StreamCancel { stream } => {
                w.string("stream", stream)?;
            }
            Message::StreamRead { stream, pattern } => {
                w.string("stream", stream)?;
                w.string("pattern", pattern)?;
            }
            Message::StreamSend { subject, .. } => w.string("subject", subject)?,
            Message::StreamDeliver {
                address,
                sender,
                subject,
                ..
            } => {
                w.string("address", address)?;
                w.string("sender", sender)?;
                w.string("subject", subject)?;
            }
            Message::MailboxSend {
                address,
                subject,
                tracker,
                timeout,
                ..
            }
            | Message::ServiceSend {
                address,
                subject,
                tracker,
                timeout,
                ..
            } => {
                w.string("address", address)?;
                w.string("subject", subject)?;
                w.string("tracker", tracker)?;
                w.buf.extend_from_slice(&timeout.to_be_bytes());
            }
            Message::MailboxDeliver {
                sender,
                address,
                subject,
                tracker,
                ..
            }
            | Message::ServiceDeliver {
                sender,
                address,
                subject,
                tracker,
                ..
            } => {
                w.string("sender", sender)?;
                w.string("address", address)?;
                w.string("subject", subject)?;
                w.string("tracker", tracker)?;
            }
            Message::ServiceOffer { address, pattern } => {
                w.string("address", address)?;
                w.string("pattern", pattern)?;
            }
            Message::Ok { status } | Message::Error { status } => w.status(status)?,
            Message::Credit { amount } => w.number2(*amount),
            Message::Confirm { tracker, status } => {
                w.string("tracker", tracker)?;
                w.status(status)?;
            }
        }
        Ok(w.buf)
    }

    /// Encodes the whole command: header frame then content frames.
    pub fn encode(&self) -> Result<Vec<Vec<u8>>, EncodeError> {
        let mut frames = Vec::with_capacity(1 + self.content().len());
        frames.push(self.encode_header()?);
        frames.extend(self.content().iter().cloned());
        Ok(frames)
    }

    /// Decodes one command from its frames (header first). Content frames
    /// are copied; use [`Message::decode_owned`] to move them instead.
    pub fn decode<F: AsRef<[u8]>>(frames: &[F]) -> Result<Message, DecodeError> {
        let (header, rest) = frames.split_first().ok_or(DecodeError::NoFrames)?;
        let content = || rest.iter().map(|f| f.as_ref().to_vec()).collect();
        decode_with(header.as_ref(), rest.len(), content)
    }

    /// Decodes one command, taking ownership of the frames so content is
    /// moved rather than copied.
    pub fn decode_owned(mut frames: Vec<Vec<u8>>) -> Result<Message, DecodeError> {
        if frames.is_empty() {
            return Err(DecodeError::NoFrames);
        }
        let header = frames.remove(0);
        let n = frames.len();
        decode_with(&header, n, move || frames)
    }
}

/// The protocol's name for a command id (`"?"` for an unknown id).
pub fn command_name(id: u8) -> &'static str {
    match id {
        1 => "CONNECTION_OPEN",
        2 => "CONNECTION_PING",
        3 => "CONNECTION_PONG",
        4 => "CONNECTION_CLOSE",
        5 => "STREAM_WRITE",
        6 => "STREAM_READ",
        7 => "STREAM_SEND",
        8 => "STREAM_DELIVER",
        9 => "MAILBOX_SEND",
        10 => "MAILBOX_DELIVER",
        11 => "SERVICE_SEND",
        12 => "SERVICE_OFFER",
        13 => "SERVICE_DELIVER",
        14 => "OK",
        15 => "ERROR",
        16 => "CREDIT",
        17 => "CONFIRM",
        18 => "STREAM_CANCEL",
        _ => "?",
    }
}

fn decode_with(
    header: &[u8],
    content_frames: usize,
    content: impl FnOnce() -> Content,
) -> Result<Message, DecodeError> {
    if header.len() < 3 {
        return Err(DecodeError::TooShort(header.len()));
    }
    let signature = u16::from_be_bytes([header[0], header[1]]);
    if signature != SIGNATURE {
        return Err(DecodeError::Signature(signature));
    }
    let id = header[2];
    let command = command_name(id);
    if command == "?" {
        return Err(DecodeError::UnknownId(id));
    }
    let mut r = Reader {
        buf: &header[3..],
        command,
    };
    let carries_content = matches!(id, 7..=11 | 13);
    if !carries_content && content_frames > 0 {
        return Err(DecodeError::UnexpectedFrames {
            command,
            frames: content_frames,
        });
    }
    let msg = match id {
        1 => {
            let protocol = r.string("protocol")?;
            let version = r.number2("version")?;
            let address = r.string("address")?;
            if protocol != PROTOCOL {
                return Err(DecodeError::Protocol(protocol));
            }
            if version != VERSION {
                return Err(DecodeError::Version(version));
            }
            Message::ConnectionOpen { address }
        }
        2 => Message::ConnectionPing,
        3 => Message::ConnectionPong,
        4 => Message::ConnectionClose,
        5 => Message::StreamWrite {
            stream: r.string("stream")?,
        },
        6 => Message::StreamRead {
            stream: r.string("stream")?,
            pattern: r.string("pattern")?,
        },
        7 => Message::StreamSend {
            subject: r.string("subject")?,
            content: Vec::new(),
        },
        8 => Message::StreamDeliver {
            address: r.string("address")?,
            sender: r.string("sender")?,
            subject: r.string("subject")?,
            content: Vec::new(),
        },
        9 => Message::MailboxSend {
            address: r.string("address")?,
            subject: r.string("subject")?,
            tracker: r.string("tracker")?,
            timeout: r.number4("timeout")?,
            content: Vec::new(),
        },
        10 => Message::MailboxDeliver {
            sender: r.string("sender")?,
            address: r.string("address")?,
            subject: r.string("subject")?,
            tracker: r.string("tracker")?,
            content: Vec::new(),
        },
        11 => Message::ServiceSend {
            address: r.string("address")?,
            subject: r.string("subject")?,
            tracker: r.string("tracker")?,
            timeout: r.number4("timeout")?,
            content: Vec::new(),
        },
        12 => Message::ServiceOffer {
            address: r.string("address")?,
            pattern: r.string("pattern")?,
        },
        13 => Message::ServiceDeliver {
            sender: r.string("sender")?,
            address: r.string("address")?,
            subject: r.string("subject")?,
            tracker: r.string("tracker")?,
            content: Vec::new(),
        },
        14 => Message::Ok {
            status: r.status()?,
        },
        15 => Message::Error {
            status: r.status()?,
        },
        16 => Message::Credit {
            amount: r.number2("amount")?,
        },
        17 => Message::Confirm {
            tracker: r.string("tracker")?,
            status: r.status()?,
        },
        18 => Message::StreamCancel {
            stream: r.string("stream")?,
        },
        _ => return Err(DecodeError::UnknownId(id)),
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::TrailingBytes {
            command,
            extra: r.buf.len(),
        });
    }
    let mut msg = msg;
    if carries_content {
        let frames = content();
        match &mut msg {
            Message::StreamSend { content, .. }
            | Message::StreamDeliver { content, .. }
            | Message::MailboxSend { content, .. }
            | Message::MailboxDeliver { content, .. }
            | Message::ServiceSend { content, .. }
            | Message::ServiceDeliver { content, .. } => *content = frames,
            _ => {}
        }
    }
    Ok(msg)
}

struct Writer {
    buf: Vec<u8>,
    command: &'static str,
}

impl Writer {
    fn string(&mut self, field: &'static str, s: &str) -> Result<(), EncodeError> {
        if s.len() > MAX_STRING {
            return Err(EncodeError::StringTooLong {
                command: self.command,
                field,
                len: s.len(),
            });
        }
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn number2(&mut self, n: u16) {
        self.buf.extend_from_slice(&n.to_be_bytes());
    }

    fn status(&mut self, status: &Status) -> Result<(), EncodeError> {
        self.number2(status.code);
        self.string("status_reason", &status.reason)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    command: &'static str,
}

impl Reader<'_> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&[u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                command: self.command,
                field,
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.take(field, 1)?[0] as usize;
        let command = self.command;
        let bytes = self.take(field, len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Utf8 { command, field })
    }

    fn number2(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(field, 2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn number4(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(field, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn status(&mut self) -> Result<Status, DecodeError> {
        let code = self.number2("status_code")?;
        let reason = self.string("status_reason")?;
        Ok(Status { code, reason })
    }
}

impl fmt::Display for Message {
    /// A one-line summary for logs: command, addressing fields, frame sizes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        match self {
            Message::ConnectionOpen { address } => write!(f, " address={address:?}")?,
            Message::StreamWrite { stream } | Message::StreamCancel { stream } => {
                write!(f, " stream={stream:?}")?
            }
            Message::StreamRead { stream, pattern } => {
                write!(f, " stream={stream:?} pattern={pattern:?}")?
            }
            Message::StreamSend { subject, .. } => write!(f, " subject={subject:?}")?,
            Message::StreamDeliver {
                address,
                sender,
                subject,
                ..
            } => write!(
                f,
                " stream={address:?} sender={sender:?} subject={subject:?}"
            )?,
            Message::MailboxSend {
                address, subject, ..
            }
            | Message::ServiceSend {
                address, subject, ..
            } => write!(f, " address={address:?} subject={subject:?}")?,
            Message::MailboxDeliver {
                sender,
                address,
                subject,
                ..
            }
            | Message::ServiceDeliver {
                sender,
                address,
                subject,
                ..
            } => write!(
                f,
                " sender={sender:?} address={address:?} subject={subject:?}"
            )?,
            Message::ServiceOffer { address, pattern } => {
                write!(f, " address={address:?} pattern={pattern:?}")?
            }
            Message::Ok { status } | Message::Error { status } => {
                write!(f, " {} {:?}", status.code, status.reason)?
            }
            Message::Credit { amount } => write!(f, " amount={amount}")?,
            Message::Confirm { tracker, status } => write!(
                f,
                " tracker={tracker:?} {} {:?}",
                status.code, status.reason
            )?,
            Message::ConnectionPing | Message::ConnectionPong | Message::ConnectionClose => {}
        }
        let content = self.content();
        if !content.is_empty() {
            let sizes: Vec<usize> = content.iter().map(Vec::len).collect();
            write!(f, " frames={sizes:?}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_of_256_bytes_is_an_encode_error() {
        let m = Message::StreamWrite {
            stream: "x".repeat(256),
        };
        assert_eq!(
            m.encode_header(),
            Err(EncodeError::StringTooLong {
                command: "STREAM_WRITE",
                field: "stream",
                len: 256
            })
        );
    }

    #[test]
    fn trailing_content_on_ping_is_rejected() {
        let frames: Vec<Vec<u8>> = vec![vec![0xaa, 0xa8, 2], b"junk".to_vec()];
        assert!(matches!(
            Message::decode(&frames),
            Err(DecodeError::UnexpectedFrames { frames: 1, .. })
        ));
    }

    #[test]
    fn trailing_header_bytes_are_rejected() {
        let frames = [vec![0xaa, 0xa8, 2, 0]];
        assert!(matches!(
            Message::decode(&frames),
            Err(DecodeError::TrailingBytes { extra: 1, .. })
        ));
    }

    #[test]
    fn decode_owned_moves_content() {
        let m = Message::ServiceSend {
            address: "a".into(),
            subject: "s".into(),
            tracker: String::new(),
            timeout: 7,
            content: vec![b"x".to_vec(), Vec::new()],
        };
        let frames = m.encode().unwrap();
        assert_eq!(Message::decode_owned(frames).unwrap(), m);
    }
}
