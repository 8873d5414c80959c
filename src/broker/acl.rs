//! Authorization: what each authenticated user may do on the broker
//! (`mlm_server/security/acl`). Socket-free: the router asks
//! [`Acl::check`] before it applies a command, and refuses it with ERROR
//! when the answer is a [`Refusal`].
//!
//! The user is what authentication established for the connection: the
//! PLAIN user name, or the name of the client's CURVE key (the ZAP
//! handler's User-Id, which ZeroMQ attaches to each message). A client that
//! did not authenticate (NULL security) is the user `""`.
//!
//! The ACL file is ZPL:
//!
//! ```text
//! user
//!     app                       # a PLAIN user name or CURVE key name
//!         open = "app-*"        # addresses it may open (CONNECTION OPEN)
//!         send = "default echo" # services it may send requests to
//!         mail = "*"            # mailboxes it may mail (MAILBOX SEND)
//!     worker
//!         open = "AW::*"
//!         offer = "default"     # services it may offer (SERVICE OFFER)
//!         write = "aw.res"      # streams it may write (STREAM WRITE / SEND)
//!         read = ""             # streams it may read (STREAM READ): none
//!         mail = "*"
//! default                       # anyone not listed under user
//!     send = "default"
//! ```
//!
//! Each right is a list of patterns separated by spaces or commas, matched
//! against the whole name: `*` matches any run of characters, `?` one
//! character, anything else itself. A right not given is refused; `"*"`
//! allows everything. A user not listed gets the `default` rights, and
//! none when there is no `default` section. Opening anonymously (empty
//! address: no mailbox to protect) is always allowed; what the anonymous
//! client then does is checked like anything else.
//!
//! Without an ACL file the broker allows everything, as Malamute does.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::zpl;

/// Something a client asks the broker to do, with the name it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// CONNECTION OPEN under an address.
    Open(&'a str),
    /// SERVICE OFFER of a service.
    Offer(&'a str),
    /// SERVICE SEND to a service.
    Send(&'a str),
    /// MAILBOX SEND to a mailbox.
    Mail(&'a str),
    /// STREAM WRITE (and each STREAM SEND) on a stream.
    Write(&'a str),
    /// STREAM READ of a stream.
    Read(&'a str),
}

impl Action<'_> {
    /// The name the action concerns.
    pub fn name(&self) -> &str {
        match *self {
            Action::Open(n)
            | Action::Offer(n)
            | Action::Send(n)
            | Action::Mail(n)
            | Action::Write(n)
            | Action::Read(n) => n,
        }
    }

    /// The right the action needs.
    pub fn right(&self) -> Right {
        match self {
            Action::Open(_) => Right::Open,
            Action::Offer(_) => Right::Offer,
            Action::Send(_) => Right::Send,
            Action::Mail(_) => Right::Mail,
            Action::Write(_) => Right::Write,
            Action::Read(_) => Right::Read,
        }
    }

    /// "open address x", as the refusal says it. Sends say "send to",
    /// "mail" and "publish on" so that a client can tell the refusal of a
    /// send (which has no answer otherwise) from the answer to a
    /// registration (`docs/PROTOCOL-NOTES.md`).
    fn phrase(&self) -> String {
        match self {
            Action::Open(n) => format!("open address {n}"),
            Action::Offer(n) => format!("offer service {n}"),
            Action::Send(n) => format!("send to service {n}"),
            Action::Mail(n) => format!("mail mailbox {n}"),
            Action::Write(n) => format!("write stream {n}"),
            Action::Read(n) => format!("read stream {n}"),
        }
    }
}

/// One of the rights an ACL grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// `open`: addresses.
    Open,
    /// `offer`: services offered.
    Offer,
    /// `send`: services sent to.
    Send,
    /// `mail`: mailboxes mailed.
    Mail,
    /// `write`: streams written.
    Write,
    /// `read`: streams read.
    Read,
}

impl Right {
    const ALL: [Right; 6] = [
        Right::Open,
        Right::Offer,
        Right::Send,
        Right::Mail,
        Right::Write,
        Right::Read,
    ];

    /// The key in the ACL file.
    pub fn key(self) -> &'static str {
        match self {
            Right::Open => "open",
            Right::Offer => "offer",
            Right::Send => "send",
            Right::Mail => "mail",
            Right::Write => "write",
            Right::Read => "read",
        }
    }

    fn from_key(key: &str) -> Option<Right> {
        Right::ALL.into_iter().find(|r| r.key() == key)
    }
}

/// A refused action: what the ERROR's reason and the log line say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The user refused (`""` for a client that did not authenticate).
    pub user: String,
    /// Why, without the user: "may not open address awerr".
    pub reason: String,
}

impl Refusal {
    /// The refusal of `action` for `user`.
    pub fn of(user: &str, action: &Action<'_>) -> Refusal {
        Refusal {
            user: user.to_string(),
            reason: format!("may not {}", action.phrase()),
        }
    }

    /// An address held by a connection of another user.
    pub fn takeover(user: &str, address: &str) -> Refusal {
        Refusal {
            user: user.to_string(),
            reason: format!("may not take over address {address}: it is held by another user"),
        }
    }

    /// The text of the broker's `ERROR 300` (`access denied: …`).
    pub fn error_reason(&self) -> String {
        format!("access denied: {}", self.reason)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user {:?} {}", self.user, self.reason)
    }
}

/// An ACL file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A syntax or meaning error, with its line.
    #[error("{path}: line {line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// A name pattern: `*` any run, `?` one character, the rest literal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob(Vec<char>);

impl Glob {
    fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        let p = &self.0;
        // Iterative wildcard match: on a mismatch, let the last `*` take
        // one more character, so the cost stays O(pattern × name).
        let (mut pi, mut ni) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ni < name.len() {
            if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ni));
                pi += 1;
            } else if pi < p.len() && (p[pi] == '?' || p[pi] == name[ni]) {
                pi += 1;
                ni += 1;
            } else if let Some((sp, sn)) = star {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

/// What one user may do: patterns per right.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rights {
    patterns: HashMap<Right, Vec<Glob>>,
}

impl Rights {
    fn allows(&self, right: Right, name: &str) -> bool {
        self.patterns
            .get(&right)
            .is_some_and(|globs| globs.iter().any(|g| g.matches(name)))
    }
}

/// The rules of an ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    users: HashMap<String, Rights>,
    default: Rights,
}

impl Acl {
    /// Reads and parses an ACL file.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Acl::parse(&text, path)
    }

    /// Parses ACL text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Acl, AclError> {
        let syntax = |line: usize, message: String| AclError::Syntax {
            path: path.to_path_buf(),
            line,
            message,
        };
        let entries = zpl::parse(text).map_err(|e| syntax(e.line, e.message))?;
        let mut acl = Acl::default();
        // (user or None for default, right) -> line first given.
        let mut seen: HashMap<(Option<String>, Right), usize> = HashMap::new();
        for e in entries {
            let parts: Vec<&str> = e.path.split('/').collect();
            let (user, key) = match parts.as_slice() {
                ["user", user, key] => (Some(user.to_string()), *key),
                ["default", key] => (None, *key),
                _ => {
                    return Err(syntax(
                        e.line,
                        format!(
                            "unknown key {}: expected user/NAME/RIGHT or default/RIGHT, \
                             RIGHT one of open, offer, send, mail, write, read",
                            e.path
                        ),
                    ))
                }
            };
            let Some(right) = Right::from_key(key) else {
                return Err(syntax(
                    e.line,
                    format!("unknown right {key:?}: one of open, offer, send, mail, write, read"),
                ));
            };
            if let Some(first) = seen.insert((user.clone(), right), e.line) {
                return Err(syntax(
                    e.line,
                    format!("{key} given twice (first on line {first})"),
                ));
            }
            let globs = parse_patterns(&e.value).map_err(|m| syntax(e.line, m))?;
            let rights = match user {
                Some(u) => acl.users.entry(u).or_default(),
                None => &mut acl.default,
            };
            rights.patterns.insert(right, globs);
        }
        Ok(acl)
    }

    /// Whether `user` may do `action`.
    pub fn check(&self, user: &str, action: &Action<'_>) -> Result<(), Refusal> {
        if let Action::Open("") = action {
            return Ok(());
        }
        let rights = self.users.get(user).unwrap_or(&self.default);
        if rights.allows(action.right(), action.name()) {
            Ok(())
        } else {
            Err(Refusal::of(user, action))
        }
    }

    /// How many users are named.
    pub fn users(&self) -> usize {
        self.users.len()
    }
}

/// Checks `action` against an optional ACL: no ACL allows everything.
pub fn check(acl: Option<&Acl>, user: &str, action: &Action<'_>) -> Result<(), Refusal> {
    match acl {
        Some(a) => a.check(user, action),
        None => Ok(()),
    }
}

fn parse_patterns(value: &str) -> Result<Vec<Glob>, String> {
    value
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.len() > 255 {
                Err(format!("pattern {p:?} is longer than a name can be (255)"))
            } else {
                Ok(Glob(p.chars().collect()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# sample
user
    app
        open = \"app-*\"
        send = \"default echo\"
        mail = \"*\"
    worker
        open = \"AW::*, worker-?\"
        offer = \"default\"
        write = \"aw.res\"
        read = \"\"
        mail = \"*\"
default
    send = \"default\"
";

    fn acl() -> Acl {
        Acl::parse(SAMPLE, Path::new("acl.cfg")).unwrap()
    }

    #[test]
    fn globs_match_the_whole_name() {
        let g = |p: &str| Glob(p.chars().collect());
        assert!(g("app-*").matches("app-1"));
        assert!(g("app-*").matches("app-"));
        assert!(!g("app-*").matches("xapp-1"), "anchored at the start");
        assert!(!g("aw").matches("awerr"), "anchored at the end");
        assert!(g("*").matches(""));
        assert!(g("a*b*c").matches("aXbYbZc"));
        assert!(!g("a*b*c").matches("aXbYbZ"));
        assert!(g("worker-?").matches("worker-7"));
        assert!(!g("worker-?").matches("worker-17"));
        assert!(g("*.res").matches("aw.res"));
        assert!(!g("").matches("x"));
    }

    #[test]
    fn each_right_is_checked_for_its_own_names() {
        let a = acl();
        assert!(a.check("app", &Action::Open("app-3")).is_ok());
        assert!(a.check("app", &Action::Open("awerr")).is_err());
        assert!(a.check("app", &Action::Send("echo")).is_ok());
        assert!(a.check("app", &Action::Send("admin")).is_err());
        assert!(
            a.check("app", &Action::Offer("default")).is_err(),
            "not given"
        );
        assert!(a.check("app", &Action::Mail("anyone")).is_ok());
        assert!(a.check("app", &Action::Read("aw.res")).is_err());
        assert!(a.check("worker", &Action::Open("AW::host::1-ABCD")).is_ok());
        assert!(a.check("worker", &Action::Open("worker-1")).is_ok());
        assert!(a.check("worker", &Action::Offer("default")).is_ok());
        assert!(a.check("worker", &Action::Offer("admin")).is_err());
        assert!(a.check("worker", &Action::Write("aw.res")).is_ok());
        assert!(a.check("worker", &Action::Write("other")).is_err());
        assert!(
            a.check("worker", &Action::Read("aw.res")).is_err(),
            "read = \"\""
        );
    }

    #[test]
    fn unlisted_users_get_the_default_and_anonymous_open_is_allowed() {
        let a = acl();
        assert!(a.check("stranger", &Action::Send("default")).is_ok());
        assert!(a.check("stranger", &Action::Send("echo")).is_err());
        assert!(
            a.check("", &Action::Send("default")).is_ok(),
            "NULL clients too"
        );
        assert!(a.check("stranger", &Action::Open("")).is_ok());
        assert!(a.check("stranger", &Action::Open("app-1")).is_err());
        let none = Acl::parse("user\n    a\n        open = \"*\"\n", Path::new("x")).unwrap();
        assert!(
            none.check("b", &Action::Send("x")).is_err(),
            "no default: nothing"
        );
        assert!(
            check(None, "b", &Action::Send("x")).is_ok(),
            "no ACL: everything"
        );
    }

    #[test]
    fn refusals_name_user_and_action_and_sends_read_as_sends() {
        let a = acl();
        let r = a.check("app", &Action::Open("awerr")).unwrap_err();
        assert_eq!(r.to_string(), "user \"app\" may not open address awerr");
        assert_eq!(
            r.error_reason(),
            "access denied: may not open address awerr"
        );
        let r = a.check("app", &Action::Send("admin")).unwrap_err();
        assert_eq!(
            r.error_reason(),
            "access denied: may not send to service admin"
        );
        let r = a.check("app", &Action::Write("s")).unwrap_err();
        assert_eq!(r.error_reason(), "access denied: may not write stream s");
        let r = Refusal::takeover("app", "w1");
        assert!(r.error_reason().contains("held by another user"), "{r}");
    }

    #[test]
    fn the_documented_example_means_what_the_security_page_says() {
        let readme = include_str!("../../docs/security.md");
        let start = readme
            .find("# acl.cfg")
            .expect("docs/security.md has an ACL example");
        let block = &readme[start..];
        let block = &block[..block.find("```").unwrap()];
        let a = Acl::parse(block, Path::new("docs/security.md")).unwrap();
        // What the example promises besides: alas may connect, the
        // shipped pi.lua may write its stream.
        assert!(a.check("", &Action::Open("alas-host-1-ab")).is_ok());
        assert!(a.check("worker-1", &Action::Write("numbers")).is_ok());
        assert!(a.check("app", &Action::Open("awerr")).is_err());
        assert!(a.check("ops", &Action::Open("awerr")).is_ok());
        assert!(a.check("app", &Action::Send("echo")).is_ok());
        assert!(a.check("worker-1", &Action::Offer("default")).is_ok());
        assert!(a.check("app", &Action::Offer("default")).is_err());
        assert!(a
            .check("worker-1", &Action::Open("AW::host::1-00AF"))
            .is_ok());
        assert!(a.check("ops", &Action::Read("aw.res")).is_ok());
        assert!(a.check("app", &Action::Read("aw.res")).is_err());
        assert!(a.check("", &Action::Send("default")).is_ok());
    }

    #[test]
    fn mistakes_are_errors_naming_the_line() {
        let cases = [
            ("user\n    app\n        opne = \"*\"\n", 3, "unknown right"),
            ("users\n    app\n        open = \"*\"\n", 3, "unknown key"),
            ("default\n    open = \"*\"\n    open = \"x\"\n", 3, "twice"),
            ("user\n    app\n\topen = \"*\"\n", 3, "tabs"),
            (
                "user\n    app\n        open = \"unterminated\n",
                3,
                "unterminated",
            ),
        ];
        for (text, line, what) in cases {
            let e = Acl::parse(text, Path::new("acl.cfg")).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&format!("acl.cfg: line {line}:")), "{msg}");
            assert!(msg.contains(what), "{msg}");
        }
    }
}
