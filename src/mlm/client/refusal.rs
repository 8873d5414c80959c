//! Broker refusals of messages that expect no answer (STREAM SEND, MAILBOX
//! SEND, SERVICE SEND, CONFIRM), typed so that a program can tell a full
//! queue from other refusals.
//!
//! The broker answers such a message only when it refuses it, with an
//! ERROR that names neither the command nor its tracker; only the reason
//! text says what happened. The kinds below are recognised from the texts
//! of the project's broker (`docs/PROTOCOL-NOTES.md`); the reference
//! Malamute never refuses a send, and any other text is
//! [`RefusalKind::Other`].

use std::fmt;

use crate::mlm::codec::{status, Status};

/// What the broker refused, as far as its reason text tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalKind {
    /// `ERROR 300 "service <name> queue full"`: a SERVICE SEND found the
    /// service's queue at its limit (messages or bytes); it was not stored.
    ServiceQueueFull {
        /// The service.
        service: String,
    },
    /// `ERROR 300 "mailbox <name> full"`: a MAILBOX SEND found the mailbox
    /// at its limit; the mail was not stored.
    MailboxFull {
        /// The mailbox.
        mailbox: String,
    },
    /// `ERROR 300 "no stream…"`: a STREAM SEND before any STREAM WRITE.
    NoStream,
    /// `ERROR 300 "access denied: may not send to service <name>"` (or
    /// `mail mailbox <name>`, `publish on stream <name>`): the broker's ACL
    /// does not let our user send there; the message was not stored.
    AccessDenied {
        /// `"service"`, `"mailbox"` or `"stream"`.
        target: &'static str,
        /// Its name.
        name: String,
    },
    /// Any other ERROR nobody was waiting for.
    Other,
}

/// An ERROR from the broker that refused a message of ours that no call
/// was waiting on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What was refused, as recognised from the reason.
    pub kind: RefusalKind,
    /// The broker's status, as it came.
    pub status: Status,
}

impl Refusal {
    /// Recognises the kind of refusal from the broker's status.
    pub fn from_status(status: Status) -> Refusal {
        let kind = if status.code == status::FAILED {
            classify(&status.reason)
        } else {
            RefusalKind::Other
        };
        Refusal { kind, status }
    }

    /// A service queue or a mailbox was full: the message was dropped by
    /// the broker and may be sent again later.
    pub fn is_full(&self) -> bool {
        matches!(
            self.kind,
            RefusalKind::ServiceQueueFull { .. } | RefusalKind::MailboxFull { .. }
        )
    }

    /// Whether the reason was recognised as the refusal of a send (and so
    /// cannot be the answer to a registration or a CONNECTION OPEN).
    pub(super) fn is_of_a_send(&self) -> bool {
        self.kind != RefusalKind::Other
    }
}

impl fmt::Display for Refusal {
    /// The broker's reason (`service default queue full`), or the code when
    /// it gave none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status.reason.is_empty() {
            write!(f, "ERROR {}", self.status.code)
        } else {
            f.write_str(&self.status.reason)
        }
    }
}

fn classify(reason: &str) -> RefusalKind {
    if let Some(service) = reason
        .strip_prefix("service ")
        .and_then(|r| r.strip_suffix(" queue full"))
    {
        return RefusalKind::ServiceQueueFull {
            service: service.to_string(),
        };
    }
    if let Some(mailbox) = reason
        .strip_prefix("mailbox ")
        .and_then(|r| r.strip_suffix(" full"))
    {
        return RefusalKind::MailboxFull {
            mailbox: mailbox.to_string(),
        };
    }
    if reason.starts_with("no stream") {
        return RefusalKind::NoStream;
    }
    // Only the phrases of sends: the refusal of a registration (open,
    // offer, read, write) is the answer it waits for.
    if let Some(rest) = reason.strip_prefix("access denied: may not ") {
        for (phrase, target) in [
            ("send to service ", "service"),
            ("mail mailbox ", "mailbox"),
            ("publish on stream ", "stream"),
        ] {
            if let Some(name) = rest.strip_prefix(phrase) {
                return RefusalKind::AccessDenied {
                    target,
                    name: name.to_string(),
                };
            }
        }
    }
    RefusalKind::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(code: u16, reason: &str) -> RefusalKind {
        Refusal::from_status(Status::new(code, reason)).kind
    }

    #[test]
    fn the_brokers_texts_are_recognised() {
        assert_eq!(
            kind(300, "service default queue full"),
            RefusalKind::ServiceQueueFull {
                service: "default".into()
            }
        );
        assert_eq!(
            kind(300, "mailbox alas-x-1 full"),
            RefusalKind::MailboxFull {
                mailbox: "alas-x-1".into()
            }
        );
        assert_eq!(
            kind(300, "no stream: send STREAM WRITE first"),
            RefusalKind::NoStream
        );
        assert_eq!(
            kind(300, "CONFIRM needs CREDIT first (ack/1)"),
            RefusalKind::Other
        );
        assert_eq!(kind(300, "invalid pattern"), RefusalKind::Other);
        assert_eq!(
            kind(300, "access denied: may not send to service admin"),
            RefusalKind::AccessDenied {
                target: "service",
                name: "admin".into()
            }
        );
        assert_eq!(
            kind(300, "access denied: may not mail mailbox awerr"),
            RefusalKind::AccessDenied {
                target: "mailbox",
                name: "awerr".into()
            }
        );
        assert_eq!(
            kind(300, "access denied: may not publish on stream s"),
            RefusalKind::AccessDenied {
                target: "stream",
                name: "s".into()
            }
        );
        // Registrations are answered, not refused sends.
        assert_eq!(
            kind(300, "access denied: may not offer service default"),
            RefusalKind::Other
        );
        assert_eq!(
            kind(300, "access denied: may not write stream s"),
            RefusalKind::Other
        );
    }

    #[test]
    fn only_code_300_is_a_full_queue() {
        assert_eq!(kind(502, "service default queue full"), RefusalKind::Other);
        assert!(Refusal::from_status(Status::new(300, "mailbox m full")).is_full());
        assert!(!Refusal::from_status(Status::new(300, "no stream")).is_full());
    }

    #[test]
    fn display_is_the_reason_or_the_code() {
        let r = Refusal::from_status(Status::new(300, "service default queue full"));
        assert_eq!(r.to_string(), "service default queue full");
        assert_eq!(
            Refusal::from_status(Status::new(300, "")).to_string(),
            "ERROR 300"
        );
    }
}
