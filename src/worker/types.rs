//! The types the worker's parts pass to each other: a request as received,
//! what a handler sent while it ran, and how it ended ([`Outcome`] or
//! [`ScriptError`]). The VM, the pool, the runners and the dispatcher all
//! use these, so none of them needs to import another.

use std::time::Duration;

/// One request as received from the broker (SERVICE DELIVER), with what
/// travels with it across retries and forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Requester's address: where replies go. For a forwarded request this
    /// is the original requester, not the stage that forwarded it.
    pub sender: String,
    /// Service address.
    pub address: String,
    /// Subject: selects the script or runner.
    pub subject: String,
    /// Requester's tracker (for a forwarded request, the original one).
    /// Empty means the requester does not wait for a reply.
    pub tracker: String,
    /// All content frames.
    pub content: Vec<Vec<u8>>,
    /// Which run this is: 1 for the first.
    pub attempt: u32,
    /// How many stages forwarded this request before it reached us.
    pub hops: u32,
}

impl Request {
    /// What stands for a request a panic took away, in the report.
    pub fn lost() -> Request {
        Request {
            sender: String::new(),
            address: String::new(),
            subject: "(lost in a panic)".into(),
            tracker: String::new(),
            content: Vec::new(),
            attempt: 1,
            hops: 0,
        }
    }

    /// Whether the requester waits for an answer (it gave a tracker).
    pub fn wants_reply(&self) -> bool {
        !self.tracker.is_empty()
    }
}

/// Something a handler asked to send, in the order it asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// STREAM SEND on `stream`.
    Stream {
        /// Stream name.
        stream: String,
        /// Subject.
        subject: String,
        /// Content frames (content, then attachment if given).
        content: Vec<Vec<u8>>,
    },
    /// SERVICE SEND to `address` that the broker holds for `delay`
    /// before queuing it (`alaska.schedule`); nobody is answered.
    Delayed {
        /// Service address.
        address: String,
        /// Subject.
        subject: String,
        /// Content frames.
        content: Vec<Vec<u8>>,
        /// How long the broker holds it.
        delay: Duration,
    },
    /// MAILBOX SEND to `address`.
    Mail {
        /// Mailbox.
        address: String,
        /// Subject.
        subject: String,
        /// Content frames (content, then attachment if given).
        content: Vec<Vec<u8>>,
    },
}

/// How a handler that ran to its end wants the request treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Finished; the reply (if any) goes to the requester when it waits.
    Done {
        /// The reply's content.
        reply: Option<Vec<u8>>,
    },
    /// Run again later: after `after` when given, else after the backoff.
    Retry {
        /// The delay the handler asked for.
        after: Option<Duration>,
        /// Why, for the report if the attempts run out.
        reason: String,
    },
    /// Give up now: a dead letter with this reason.
    Fail {
        /// Why.
        reason: String,
    },
    /// Discard silently.
    Drop,
    /// Hand the request to another service; that stage answers instead.
    Forward {
        /// Service address.
        address: String,
        /// Subject there.
        subject: String,
        /// Frames to send; `None` forwards the request's own frames.
        content: Option<Vec<Vec<u8>>>,
        /// Held by the broker this long before it is queued (a script's
        /// `alaska.forward(..., {delay = ms})`; delay/1 brokers only).
        delay: Option<Duration>,
    },
}

impl Outcome {
    /// The outcome's name, as logs, reports and metrics say it.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Done { .. } => "done",
            Outcome::Retry { .. } => "retry",
            Outcome::Fail { .. } => "fail",
            Outcome::Drop => "drop",
            Outcome::Forward { .. } => "forward",
        }
    }
}

/// What kind of failure a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No script for the subject.
    MissingScript,
    /// The subject may not select a script (traversal, bad characters).
    BadSubject,
    /// The script does not compile.
    Syntax,
    /// The script raised an error.
    Runtime,
    /// The time budget ran out.
    Timeout,
    /// The memory limit was hit.
    Memory,
    /// The handler produced something the worker cannot use (a runner's
    /// garbage output, an outcome with bad arguments, too many sends).
    Protocol,
    /// The worker is stopping and the request ran out of the shutdown
    /// timeout: not the request's fault; handed back where possible.
    Stopped,
    /// The VM thread panicked (a bug of ours, reported, not fatal).
    Panic,
}

impl ErrorKind {
    /// The kind's name, as logs, reports and metrics say it.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::MissingScript => "missing script",
            ErrorKind::BadSubject => "bad subject",
            ErrorKind::Syntax => "syntax error",
            ErrorKind::Runtime => "runtime error",
            ErrorKind::Timeout => "time budget",
            ErrorKind::Memory => "memory limit",
            ErrorKind::Protocol => "bad handler output",
            ErrorKind::Stopped => "stopped by the worker's shutdown",
            ErrorKind::Panic => "internal error",
        }
    }
}

/// A failed request: kind and the text for the error mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Error text, with a traceback where there is one.
    pub message: String,
}

/// What one run of a handler produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    /// Sends, in the order the handler made them. They are written whatever
    /// the outcome, as the original did.
    pub outputs: Vec<Output>,
    /// How it ended: an outcome, or a failure.
    pub result: Result<Outcome, ScriptError>,
}

impl RunResult {
    /// A run that failed before producing anything.
    pub fn failed(kind: ErrorKind, message: impl Into<String>) -> RunResult {
        RunResult {
            outputs: Vec::new(),
            result: Err(ScriptError {
                kind,
                message: message.into(),
            }),
        }
    }

    /// The reply, when the run ended in `done` with one.
    pub fn reply(&self) -> Option<&[u8]> {
        match &self.result {
            Ok(Outcome::Done { reply: Some(r) }) => Some(r),
            _ => None,
        }
    }

    /// The failure, if the run failed.
    pub fn error(&self) -> Option<&ScriptError> {
        self.result.as_ref().err()
    }
}

/// A request with the dispatcher's token.
#[derive(Debug)]
pub struct Job {
    /// Token the dispatcher uses to match the completion.
    pub id: u64,
    /// The request.
    pub request: Request,
}

/// A finished job.
#[derive(Debug)]
pub struct Completion {
    /// The job's token.
    pub id: u64,
    /// The request, moved back so reports and retries can use it.
    pub request: Request,
    /// What the run produced.
    pub run: RunResult,
}

impl Completion {
    /// The reply, when the run ended in `done` with one (a copy).
    pub fn reply(&self) -> Option<Vec<u8>> {
        self.run.reply().map(<[u8]>::to_vec)
    }

    /// The failure, if the run failed (a copy).
    pub fn error(&self) -> Option<ScriptError> {
        self.run.error().cloned()
    }

    /// The outcome, if the run did not fail.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.run.result.as_ref().ok()
    }
}
