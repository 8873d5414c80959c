//! Durable storage: what the broker holds survives a crash.
//!
//! The core tells its changes to a [`Pending`] journal as it makes them;
//! once per loop turn the router commits them to an embedded store (fjall:
//! one atomic write batch, written to the operating system before anything
//! of that turn is sent, so a killed broker loses nothing it has answered
//! for). With `sync = always` the batch is also fsynced before the sends;
//! with `sync = batch` a thread of its own fsyncs what was written, grouped:
//! [`BATCH_WINDOW`] after a write, so a power failure or an operating
//! system crash can lose the last ~10 ms. On start the core is rebuilt from
//! the store ([`Recovered::restore_into`]).
//!
//! Kept: mail per mailbox, each mailbox's reclaim clock, queued requests,
//! and requests given to acknowledging workers and not yet confirmed (they
//! come back as queued). Times are stored as wall-clock time. Streams are
//! never stored (fire-and-forget, as in Malamute).
//!
//! Layout (fjall keyspaces): `requests` and `mail` (key: the message number,
//! u64 big-endian; value: [`record`]), `mailboxes` (key: address; value: the
//! reclaim clock, u64 big-endian ms since the epoch), `delayed` (key: the
//! held request's number; value: [`record::encode_delayed`]), `schedules`
//! (key: a schedule's name; value: the due time of its last fire, u64
//! big-endian ms since the epoch) and `meta` (`format`:
//! u32 big-endian [`FORMAT_VERSION`]; `state`: `running` or `stopped`).

pub mod record;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use self::record::{
    decode_delayed, decode_held, encode_delayed, encode_held, from_wall_ms, wall_ms, DelayedRecord,
    HeldRecord,
};
use super::core::{Core, DelayedRequest, Held, HeldId, Journal, Kind, Removal};
use crate::time::after;

/// The store layout written by this broker. A store with a higher number
/// was written by a newer broker and is refused.
pub const FORMAT_VERSION: u32 = 1;

/// With `sync = batch`, the longest time written data waits for an fsync.
pub const BATCH_WINDOW: Duration = Duration::from_millis(5);

const FORMAT_KEY: &str = "format";
const STATE_KEY: &str = "state";

/// When data is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync before anything of a loop turn is sent.
    Always,
    /// Written to the OS every turn, fsynced by a thread of its own
    /// [`BATCH_WINDOW`] after (grouping what comes meanwhile).
    Batch,
}

/// Where and how to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// The store's directory (created if missing).
    pub dir: PathBuf,
    /// When to fsync.
    pub sync: SyncMode,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process has the store open.
    #[error("storage {dir}: in use by another process (locked)")]
    Locked {
        /// The store.
        dir: PathBuf,
    },
    /// Written by a newer broker.
    #[error(
        "storage {dir}: format version {found} is newer than this broker's ({FORMAT_VERSION}); \
         refusing to start (use a newer alaska-broker, or move the directory away)"
    )]
    NewerFormat {
        /// The store.
        dir: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The directory holds something that is not a store this broker can
    /// read, or a store too damaged to open. Nothing was changed.
    #[error("storage {dir}: {what}; refusing to start over it (nothing was changed; move the directory away to start empty)")]
    Unusable {
        /// The store.
        dir: PathBuf,
        /// What was found.
        what: String,
    },
    /// The storage engine failed.
    #[error("storage {dir}: {source}")]
    Engine {
        /// The store.
        dir: PathBuf,
        /// What fjall said.
        source: fjall::Error,
    },
    /// A grouped fsync failed (`sync = batch`).
    #[error("storage {dir}: fsync failed: {reason}")]
    Sync {
        /// The store.
        dir: PathBuf,
        /// What the engine said.
        reason: String,
    },
    /// A file operation failed.
    #[error("storage {dir}: {source}")]
    Io {
        /// The store.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One pending write.
#[derive(Debug)]
enum Op {
    /// Write this record. `fresh`: the store certainly does not have the
    /// key yet, so a removal in the same batch cancels both.
    Put {
        value: Vec<u8>,
        fresh: bool,
    },
    Delete,
}

/// The core's journal when storing: changes gathered in memory, encoded,
/// and coalesced per key until the router commits them.
#[derive(Debug)]
pub struct Pending {
    held: HashMap<(Kind, HeldId), Op>,
    mailboxes: HashMap<String, Option<u64>>,
    /// Schedule -> the due time (ms since the epoch) of its last fire.
    schedules: HashMap<String, u64>,
    /// A monotonic instant and the wall-clock time at it, to store times as
    /// wall-clock (set by the router each turn).
    clock: (Instant, SystemTime),
}

impl Pending {
    /// Nothing pending; times converted around `now` and `wall`.
    pub fn new(now: Instant, wall: SystemTime) -> Self {
        Pending {
            held: HashMap::new(),
            mailboxes: HashMap::new(),
            schedules: HashMap::new(),
            clock: (now, wall),
        }
    }

    /// Pairs the monotonic clock with the wall clock again.
    pub fn set_clock(&mut self, now: Instant, wall: SystemTime) {
        self.clock = (now, wall);
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.mailboxes.is_empty() && self.schedules.is_empty()
    }

    fn wall(&self, t: Instant) -> SystemTime {
        let (now, wall) = self.clock;
        match t.checked_duration_since(now) {
            Some(ahead) => wall + ahead,
            None => wall - now.duration_since(t),
        }
    }
}

impl Journal for Pending {
    fn stored(&mut self, kind: Kind, holder: &str, held: &Held, new: bool) {
        let value = encode_held(
            holder,
            &held.sender,
            &held.subject,
            &held.tracker,
            &held.content,
            held.expires.map(|t| self.wall(t)),
            held.deliveries,
        );
        let fresh = match self.held.get(&(kind, held.id)) {
            None => new,
            Some(Op::Put { fresh, .. }) => *fresh,
            Some(Op::Delete) => false,
        };
        self.held.insert((kind, held.id), Op::Put { value, fresh });
    }

    fn delayed(&mut self, d: &DelayedRequest) {
        let held = encode_held(
            &d.service,
            &d.req.sender,
            &d.req.subject,
            &d.req.tracker,
            &d.req.content,
            None,
            0,
        );
        let value = encode_delayed(self.wall(d.due), d.timeout_ms, held);
        self.held
            .insert((Kind::Delayed, d.req.id), Op::Put { value, fresh: true });
    }

    fn schedule_fired(&mut self, name: &str, due_ms: u64) {
        self.schedules.insert(name.to_string(), due_ms);
    }

    fn removed(&mut self, kind: Kind, id: HeldId, _why: Removal) {
        match self.held.get(&(kind, id)) {
            Some(Op::Put { fresh: true, .. }) => {
                self.held.remove(&(kind, id));
            }
            _ => {
                self.held.insert((kind, id), Op::Delete);
            }
        }
    }

    fn mailbox_touched(&mut self, address: &str, at: Instant) {
        let ms = wall_ms(self.wall(at));
        self.mailboxes.insert(address.to_string(), Some(ms));
    }

    fn mailbox_gone(&mut self, address: &str) {
        self.mailboxes.insert(address.to_string(), None);
    }
}

/// The open store.
pub struct Storage {
    dir: PathBuf,
    db: Database,
    requests: Keyspace,
    mail: Keyspace,
    mailboxes: Keyspace,
    delayed: Keyspace,
    schedules: Keyspace,
    meta: Keyspace,
    sync: SyncMode,
    /// With `sync = batch`: the thread that fsyncs.
    syncer: Option<Syncer>,
}

/// The thread (`alaska-broker-sync`) that makes what the router wrote
/// durable with `sync = batch`: woken after a write, it waits
/// [`BATCH_WINDOW`] to gather more, then fsyncs once. The router never
/// waits for it (only for the engine's journal lock, if it commits while
/// an fsync holds it).
struct Syncer {
    wake: Option<crossbeam_channel::Sender<()>>,
    failed: Arc<OnceLock<String>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(db: Database) -> std::io::Result<Syncer> {
        // One wake-up waiting is enough: the fsync it leads to covers
        // every write made before it starts.
        let (wake, woken) = crossbeam_channel::bounded::<()>(1);
        let failed = Arc::new(OnceLock::new());
        let report = failed.clone();
        let thread = std::thread::Builder::new()
            .name("alaska-broker-sync".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    std::thread::sleep(BATCH_WINDOW);
                    if let Err(e) = db.persist(PersistMode::SyncData) {
                        let _ = report.set(e.to_string());
                        return;
                    }
                }
            })?;
        Ok(Syncer {
            wake: Some(wake),
            failed,
            thread: Some(thread),
        })
    }

    fn written(&self) {
        if let Some(w) = &self.wake {
            let _ = w.try_send(());
        }
    }

    fn stop(&mut self) {
        self.wake = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What was read back at start, and what was found on the way.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Queued (or unconfirmed) requests, oldest first.
    pub requests: Vec<(HeldId, HeldRecord)>,
    /// Stored mail, oldest first.
    pub mail: Vec<(HeldId, HeldRecord)>,
    /// Reclaim clocks of mailboxes.
    pub mailboxes: Vec<(String, SystemTime)>,
    /// Requests held for a delay, oldest first.
    pub delayed: Vec<(HeldId, DelayedRecord)>,
    /// Schedule -> the due time (ms since the epoch) of its last fire.
    pub schedules: Vec<(String, u64)>,
    /// The store was created now.
    pub created: bool,
    /// The previous run stopped cleanly (false after a crash or kill).
    pub clean: bool,
    /// Damage found and what was done about it, one line each.
    pub damage: Vec<String>,
}

impl Recovered {
    /// One line for the log: what is back.
    pub fn summary(&self) -> String {
        if self.created {
            return "new store".into();
        }
        let services: std::collections::HashSet<&str> = self
            .requests
            .iter()
            .map(|(_, r)| r.holder.as_str())
            .collect();
        let boxes: std::collections::HashSet<&str> =
            self.mail.iter().map(|(_, r)| r.holder.as_str()).collect();
        format!(
            "recovered {} request(s) for {} service(s) and {} mail(s) for {} address(es){}{}",
            self.requests.len(),
            services.len(),
            self.mail.len(),
            boxes.len(),
            if self.delayed.is_empty() {
                String::new()
            } else {
                format!(", and {} delayed request(s)", self.delayed.len())
            },
            if self.clean {
                ""
            } else {
                "; the previous run did not stop cleanly (crash or kill): state as of its last write"
            }
        )
    }

    /// Rebuilds the core's queues and mailboxes: wall-clock times become
    /// instants around (`now`, `wall`). What expired while the broker was
    /// down is dropped by the core's first tick.
    pub fn restore_into<J: Journal>(self, core: &mut Core<J>, now: Instant, wall: SystemTime) {
        let instant = |t: SystemTime| match t.duration_since(wall) {
            Ok(ahead) => after(now, ahead),
            Err(e) => now.checked_sub(e.duration()).unwrap_or(now),
        };
        let held = |id: HeldId, r: HeldRecord| {
            (
                r.holder,
                Held {
                    id,
                    sender: r.sender,
                    subject: r.subject,
                    tracker: r.tracker,
                    content: r.content,
                    expires: r.expires.map(instant),
                    deliveries: r.deliveries,
                },
            )
        };
        for (id, r) in self.requests {
            let (service, req) = held(id, r);
            core.restore_request(&service, req);
        }
        for (id, r) in self.mail {
            let (address, mail) = held(id, r);
            core.restore_mail(&address, mail, now);
        }
        for (address, touched) in self.mailboxes {
            core.restore_mailbox_clock(&address, instant(touched));
        }
        for (id, d) in self.delayed {
            let (service, req) = held(id, d.held);
            core.restore_delayed(DelayedRequest {
                service,
                req,
                due: instant(d.due),
                timeout_ms: d.timeout_ms,
            });
        }
        for (name, last) in self.schedules {
            core.restore_schedule(&name, last);
        }
    }
}

impl Storage {
    /// Opens (or creates) the store and reads back everything in it.
    /// Refuses a directory that holds something else, a store written by a
    /// newer broker, and a store the engine cannot open; a journal whose
    /// end is damaged is kept up to the damage, and that is reported.
    pub fn open(cfg: &StorageConfig) -> Result<(Storage, Recovered), StorageError> {
        let dir = cfg.dir.clone();
        let io = |source| StorageError::Io {
            dir: dir.clone(),
            source,
        };
        let unusable = |what: String| StorageError::Unusable {
            dir: dir.clone(),
            what,
        };
        // Look before touching: the engine would start a new, empty store
        // in any directory without its version marker.
        let existed = dir.exists();
        let mut journals = Vec::new();
        if existed {
            if !dir.is_dir() {
                return Err(unusable("is not a directory".into()));
            }
            let mut entries = std::fs::read_dir(&dir).map_err(io)?;
            if entries.next().is_some() && !dir.join("version").exists() {
                return Err(unusable(
                    "holds files but no store (no storage engine version marker): not a store, or a damaged one".into(),
                ));
            }
            journal_data_ends(&dir, &mut journals).map_err(io)?;
        } else {
            std::fs::create_dir_all(&dir).map_err(io)?;
        }
        let db = Database::builder(&dir)
            .worker_threads(1)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => StorageError::Locked { dir: dir.clone() },
                other if existed => unusable(format!("the storage engine cannot open it: {other}")),
                other => StorageError::Engine {
                    dir: dir.clone(),
                    source: other,
                },
            })?;
        let engine = |source| StorageError::Engine {
            dir: dir.clone(),
            source,
        };
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(engine)
        };
        let mut s = Storage {
            requests: keyspace("requests")?,
            mail: keyspace("mail")?,
            mailboxes: keyspace("mailboxes")?,
            delayed: keyspace("delayed")?,
            schedules: keyspace("schedules")?,
            meta: keyspace("meta")?,
            db: db.clone(),
            dir: dir.clone(),
            sync: cfg.sync,
            syncer: None,
        };
        let mut rec = Recovered::default();
        for (path, data_end) in journals {
            let after = std::fs::metadata(&path).map_or(data_end, |m| m.len());
            if after < data_end {
                rec.damage.push(format!(
                    "journal {} ends in {} byte(s) that could not be read (damage, or a write cut short by a crash); \
                     the storage engine kept everything before them and dropped them, with whatever they held",
                    path.display(),
                    data_end - after
                ));
            }
        }
        let format = s.meta.get(FORMAT_KEY).map_err(engine)?;
        match format.as_deref() {
            Some(b) => {
                let v = <[u8; 4]>::try_from(b)
                    .map(u32::from_be_bytes)
                    .map_err(|_| unusable("its format record is unreadable".into()))?;
                if v > FORMAT_VERSION {
                    return Err(StorageError::NewerFormat { dir, found: v });
                }
                if v == 0 {
                    return Err(unusable("its format record says version 0".into()));
                }
            }
            None => {
                let empty = [&s.requests, &s.mail, &s.mailboxes, &s.delayed]
                    .iter()
                    .all(|k| k.first_key_value().is_none());
                if !empty {
                    return Err(unusable(
                        "it holds records but no format record: damaged".into(),
                    ));
                }
                rec.created = true;
                s.meta
                    .insert(FORMAT_KEY, FORMAT_VERSION.to_be_bytes())
                    .map_err(engine)?;
            }
        }
        rec.clean = s
            .meta
            .get(STATE_KEY)
            .map_err(engine)?
            .is_none_or(|v| &*v == b"stopped");
        s.read_all(&mut rec)?;
        s.meta.insert(STATE_KEY, "running").map_err(engine)?;
        s.db.persist(PersistMode::SyncAll).map_err(engine)?;
        if s.sync == SyncMode::Batch {
            s.syncer = Some(Syncer::start(s.db.clone()).map_err(|e| StorageError::Io {
                dir: dir.clone(),
                source: e,
            })?);
        }
        Ok((s, rec))
    }

    fn read_all(&self, rec: &mut Recovered) -> Result<(), StorageError> {
        let read_error = |e: fjall::Error| StorageError::Unusable {
            dir: self.dir.clone(),
            what: format!("reading it failed: {e}"),
        };
        for (kind, ks, into) in [
            ("request", &self.requests, &mut rec.requests),
            ("mail", &self.mail, &mut rec.mail),
        ] {
            let mut bad = 0usize;
            let mut first = None;
            for kv in ks.iter() {
                let (k, v) = kv.into_inner().map_err(read_error)?;
                let id = <[u8; 8]>::try_from(&*k).map(u64::from_be_bytes);
                match (id, decode_held(&v)) {
                    (Ok(id), Ok(r)) => into.push((id, r)),
                    (id, r) => {
                        bad += 1;
                        if first.is_none() {
                            first = Some(match (id, r) {
                                (Err(_), _) => format!("a key of {} byte(s)", k.len()),
                                (Ok(id), Err(e)) => format!("{kind} {id}: {e}"),
                                (Ok(id), Ok(_)) => format!("{kind} {id}"),
                            });
                        }
                    }
                }
            }
            if let Some(first) = first {
                rec.damage.push(format!(
                    "{bad} {kind} record(s) unreadable and skipped (first: {first}); they stay in the store"
                ));
            }
        }
        let mut bad = 0usize;
        for kv in self.delayed.iter() {
            let (k, v) = kv.into_inner().map_err(read_error)?;
            match (<[u8; 8]>::try_from(&*k), decode_delayed(&v)) {
                (Ok(id), Ok(d)) => rec.delayed.push((u64::from_be_bytes(id), d)),
                _ => bad += 1,
            }
        }
        if bad > 0 {
            rec.damage.push(format!(
                "{bad} delayed request record(s) unreadable and skipped; they stay in the store"
            ));
        }
        for kv in self.schedules.iter() {
            let (k, v) = kv.into_inner().map_err(read_error)?;
            match (String::from_utf8(k.to_vec()), <[u8; 8]>::try_from(&*v)) {
                (Ok(name), Ok(ms)) => rec.schedules.push((name, u64::from_be_bytes(ms))),
                _ => rec.damage.push(
                    "a schedule's last-fire record is unreadable; that schedule starts afresh"
                        .into(),
                ),
            }
        }
        for kv in self.mailboxes.iter() {
            let (k, v) = kv.into_inner().map_err(read_error)?;
            match (String::from_utf8(k.to_vec()), <[u8; 8]>::try_from(&*v)) {
                (Ok(address), Ok(ms)) => rec
                    .mailboxes
                    .push((address, from_wall_ms(u64::from_be_bytes(ms)))),
                _ => rec.damage.push(
                    "a mailbox clock record is unreadable; that mailbox's clock starts now".into(),
                ),
            }
        }
        Ok(())
    }

    /// Writes what the core changed in one atomic batch (to the OS; also
    /// fsynced with `sync = always`, soon after with `batch`). Returns how
    /// many keys it wrote or deleted (0: nothing was pending, no commit).
    pub fn commit(&mut self, p: &mut Pending) -> Result<usize, StorageError> {
        if p.is_empty() {
            return Ok(0);
        }
        let writes = p.held.len() + p.mailboxes.len() + p.schedules.len();
        let mut batch = self.db.batch();
        for ((kind, id), op) in p.held.drain() {
            let ks = match kind {
                Kind::Request => &self.requests,
                Kind::Mail => &self.mail,
                Kind::Delayed => &self.delayed,
            };
            let key = id.to_be_bytes();
            match op {
                Op::Put { value, .. } => batch.insert(ks, &key[..], value),
                Op::Delete => batch.remove(ks, &key[..]),
            }
        }
        for (name, ms) in p.schedules.drain() {
            batch.insert(&self.schedules, name.as_bytes(), &ms.to_be_bytes()[..]);
        }
        for (address, clock) in p.mailboxes.drain() {
            match clock {
                Some(ms) => {
                    batch.insert(&self.mailboxes, address.as_bytes(), &ms.to_be_bytes()[..])
                }
                None => batch.remove(&self.mailboxes, address.as_bytes()),
            }
        }
        batch.commit().map_err(|e| self.engine(e))?;
        match &self.syncer {
            Some(s) => s.written(),
            None => self
                .db
                .persist(PersistMode::SyncData)
                .map_err(|e| self.engine(e))?,
        }
        Ok(writes)
    }

    /// Fails if the fsync thread failed: then nothing written since is
    /// known to be durable.
    pub fn check(&self) -> Result<(), StorageError> {
        match self.syncer.as_ref().and_then(|s| s.failed.get()) {
            Some(reason) => Err(StorageError::Sync {
                dir: self.dir.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Marks a clean stop and makes everything durable.
    pub fn close(mut self) -> Result<(), StorageError> {
        if let Some(mut s) = self.syncer.take() {
            s.stop();
        }
        self.meta
            .insert(STATE_KEY, "stopped")
            .map_err(|e| self.engine(e))?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.engine(e))
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn engine(&self, source: fjall::Error) -> StorageError {
        StorageError::Engine {
            dir: self.dir.clone(),
            source,
        }
    }
}

/// The journal files under `dir` and where their data ends, to see
/// afterwards whether the engine cut any of them back into data. (The
/// engine makes journals long in advance and fills them with zeros; when it
/// opens one it cuts it back to the end of its last readable write, which
/// drops that zero padding every time: only data dropped is damage.)
fn journal_data_ends(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            journal_data_ends(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "jnl") {
            let end = data_end(&path)?;
            out.push((path, end));
        }
    }
    Ok(())
}

/// The offset just past the last byte that is not zero.
fn data_end(path: &Path) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    // The padding is made by extending the file, so on most file systems
    // it is a hole: start looking where the first hole starts.
    // SAFETY: lseek on a descriptor we own; it only moves the file offset.
    let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
    let mut pos = u64::try_from(hole).map_or(len, |h| h.min(len));
    let mut buf = vec![0u8; 1 << 16];
    while pos > 0 {
        let n = pos.min(buf.len() as u64);
        pos -= n;
        let chunk = &mut buf[..n as usize];
        f.read_exact_at(chunk, pos)?;
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            return Ok(pos + i as u64 + 1);
        }
    }
    Ok(0)
}
