//! The bytes of one stored record: a held message (request or mail) with
//! where it waits and its absolute expiry, or a mailbox's reclaim clock.
//!
//! A held message, after a leading record version byte (1):
//!
//! | field | encoding |
//! |---|---|
//! | expires | u64 big-endian, ms since the Unix epoch, 0 for none |
//! | holder (service or mailbox), sender, subject, tracker | u16 big-endian length, then UTF-8 bytes |
//! | content | u32 big-endian frame count, then per frame a u32 length and the bytes |
//! | deliveries (version 2) | u32 big-endian: times given to an acknowledging worker |
//!
//! Version 1 records (no deliveries field) are read as never delivered.
//!
//! A delayed request (delay/1), in the `delayed` keyspace: a leading
//! version byte (1), its due time (u64 big-endian, ms since the Unix
//! epoch), its timeout (u32 big-endian ms, 0 for none, counted from when
//! it is queued), then the held message as above (holder: the service).
//!
//! A schedule's last fire, in the `schedules` keyspace (key: the schedule's
//! name): the due time of the last fire, u64 big-endian ms since the epoch.
//!
//! Keys are the held message's number as u64 big-endian, so the store
//! iterates in arrival order. Times are wall-clock: the monotonic clock of
//! one run means nothing to the next.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::mlm::Content;

/// The record layout written by this version.
const RECORD_VERSION: u8 = 2;

/// A held message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRecord {
    /// The service or mailbox it waits in.
    pub holder: String,
    /// Sender's address.
    pub sender: String,
    /// Subject.
    pub subject: String,
    /// Tracker.
    pub tracker: String,
    /// Content frames.
    pub content: Content,
    /// Absolute expiry, if any.
    pub expires: Option<SystemTime>,
    /// Times it was given to an acknowledging worker.
    pub deliveries: u32,
}

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than its fields say.
    #[error("record cut short")]
    Truncated,
    /// Written by a newer broker.
    #[error("record version {0}, this broker reads version {RECORD_VERSION}")]
    Version(u8),
    /// A string field that is not UTF-8.
    #[error("a text field is not UTF-8")]
    Utf8,
    /// Bytes after the last field.
    #[error("{0} unexpected byte(s) after the last field")]
    Trailing(usize),
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn wall_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` after the Unix epoch.
pub fn from_wall_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH)
}

/// Encodes a held message.
pub fn encode_held(
    holder: &str,
    sender: &str,
    subject: &str,
    tracker: &str,
    content: &Content,
    expires: Option<SystemTime>,
    deliveries: u32,
) -> Vec<u8> {
    let size = 1 + 8 + 8 + 4 + holder.len() + sender.len() + subject.len() + tracker.len();
    let mut b = Vec::with_capacity(size + content.iter().map(|f| 4 + f.len()).sum::<usize>());
    b.push(RECORD_VERSION);
    b.extend_from_slice(&expires.map_or(0, |t| wall_ms(t).max(1)).to_be_bytes());
    for s in [holder, sender, subject, tracker] {
        // Strings come from the wire (at most 255 bytes) or from a
        // service or address name of the same origin.
        let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
    }
    b.extend_from_slice(&(content.len() as u32).to_be_bytes());
    for f in content {
        b.extend_from_slice(&(f.len() as u32).to_be_bytes());
        b.extend_from_slice(f);
    }
    b.extend_from_slice(&deliveries.to_be_bytes());
    b
}

/// Decodes a held message.
pub fn decode_held(bytes: &[u8]) -> Result<HeldRecord, RecordError> {
    let mut r = Reader { b: bytes };
    let version = r.take(1)?[0];
    if version == 0 || version > RECORD_VERSION {
        return Err(RecordError::Version(version));
    }
    let expires = r.u64()?;
    let holder = r.string()?;
    let sender = r.string()?;
    let subject = r.string()?;
    let tracker = r.string()?;
    let frames = r.u32()? as usize;
    // Each frame takes at least its length field: bound the allocation by
    // what the bytes can hold, whatever the count says.
    let mut content = Vec::with_capacity(frames.min(r.b.len() / 4));
    for _ in 0..frames {
        let len = r.u32()? as usize;
        content.push(r.take(len)?.to_vec());
    }
    let deliveries = if version >= 2 { r.u32()? } else { 0 };
    if !r.b.is_empty() {
        return Err(RecordError::Trailing(r.b.len()));
    }
    Ok(HeldRecord {
        holder,
        sender,
        subject,
        tracker,
        content,
        expires: (expires > 0).then(|| from_wall_ms(expires)),
        deliveries,
    })
}

/// The layout of a delayed-request record written by this version.
const DELAYED_VERSION: u8 = 1;

/// A delayed request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayedRecord {
    /// When it is queued.
    pub due: SystemTime,
    /// Its timeout in ms (0: none), from when it is queued.
    pub timeout_ms: u32,
    /// The request (holder: the service); `expires` is unused.
    pub held: HeldRecord,
}

/// Encodes a delayed request.
pub fn encode_delayed(due: SystemTime, timeout_ms: u32, held: Vec<u8>) -> Vec<u8> {
    let mut b = Vec::with_capacity(13 + held.len());
    b.push(DELAYED_VERSION);
    b.extend_from_slice(&wall_ms(due).to_be_bytes());
    b.extend_from_slice(&timeout_ms.to_be_bytes());
    b.extend_from_slice(&held);
    b
}

/// Decodes a delayed request.
pub fn decode_delayed(bytes: &[u8]) -> Result<DelayedRecord, RecordError> {
    let mut r = Reader { b: bytes };
    let version = r.take(1)?[0];
    if version != DELAYED_VERSION {
        return Err(RecordError::Version(version));
    }
    let due = from_wall_ms(r.u64()?);
    let timeout_ms = r.u32()?;
    Ok(DelayedRecord {
        due,
        timeout_ms,
        held: decode_held(r.b)?,
    })
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.b.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }

    fn string(&mut self) -> Result<String, RecordError> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        let len = usize::from(u16::from_be_bytes(a));
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| RecordError::Utf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_damage_is_an_error() {
        let expires = Some(from_wall_ms(1_700_000_000_123));
        let content = vec![b"one".to_vec(), Vec::new(), vec![0, 255]];
        let b = encode_held("svc", "p", "s", "t", &content, expires, 3);
        let r = decode_held(&b).unwrap();
        assert_eq!(
            r,
            HeldRecord {
                holder: "svc".into(),
                sender: "p".into(),
                subject: "s".into(),
                tracker: "t".into(),
                content: content.clone(),
                expires,
                deliveries: 3,
            }
        );
        for cut in 0..b.len() {
            assert_eq!(decode_held(&b[..cut]), Err(RecordError::Truncated), "{cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(decode_held(&longer), Err(RecordError::Trailing(1)));
        // A version 1 record (no deliveries field) reads as never delivered.
        let mut v1 = b.clone();
        v1.truncate(b.len() - 4);
        v1[0] = 1;
        let old = decode_held(&v1).unwrap();
        assert_eq!((old.deliveries, old.content), (0, content));
        let mut newer = b;
        newer[0] = 3;
        assert_eq!(decode_held(&newer), Err(RecordError::Version(3)));
        let none = encode_held("", "", "", "", &Vec::new(), None, 0);
        assert_eq!(decode_held(&none).unwrap().expires, None);
        let due = from_wall_ms(1_800_000_000_000);
        let d = encode_delayed(due, 500, none.clone());
        let back = decode_delayed(&d).unwrap();
        assert_eq!((back.due, back.timeout_ms), (due, 500));
        for cut in 0..d.len() {
            assert!(decode_delayed(&d[..cut]).is_err(), "{cut}");
        }
    }
}
