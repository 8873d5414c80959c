//! The router: the one thread that owns the ROUTER socket. It polls,
//! decodes, hands each command to the [`Core`] with the current time, runs
//! the core's timers when due, and sends what the core produced; a send
//! that fails goes back to the core, which requeues or stores what it
//! carried.
//!
//! One loop turn: beat the liveness counter, read up to [`TURN`]
//! commands, run the timers if due, answer the admin requests waiting,
//! flush the core (each touched service dispatched once), commit what
//! changed to storage (if any), send, then publish the counters. Sends come
//! after the commit, so whatever a client hears from the broker, what it
//! sent before is stored.
//!
//! With HTTP on, the router also polls a wake-up descriptor beside the
//! ROUTER socket, so an admin request is answered at once even when no
//! client talks; it never waits for the HTTP side (see [`super::ops`]).

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use super::core::{ClientId, Core, Outgoing};
use super::ops::RouterOps;
use super::storage::{Pending, Recovered, Storage};
use super::{Acl, BrokerConfig, BrokerError};
use crate::mlm::Message;

/// Most commands handled in one loop turn before sending: large enough to
/// batch storage writes under load, small enough that replies are not held
/// back long (256 commands are well under a millisecond of work). 128 and
/// 1024 measured the same within this machine's noise.
const TURN: usize = 256;

/// Longest sleep in `poll`, so a stop request is noticed.
const IDLE: Duration = Duration::from_millis(100);

/// The ROUTER socket, the broker state and its storage.
pub struct Router {
    socket: zmq::Socket,
    /// The journal is `Some` when storing.
    core: Core<Option<Pending>>,
    storage: Option<Storage>,
    out: Vec<Outgoing>,
    /// Whether to read the ZAP user name (PLAIN, CURVE) of each command.
    with_user: bool,
    /// Liveness, metrics and admin requests.
    ops: RouterOps,
}

impl Router {
    /// A router over a bound ROUTER socket; with storage, the state is
    /// rebuilt from what was recovered.
    pub fn new(
        socket: zmq::Socket,
        cfg: &BrokerConfig,
        storage: Option<(Storage, Recovered)>,
        ops: RouterOps,
    ) -> Self {
        let now = Instant::now();
        let wall = SystemTime::now();
        let journal = storage.as_ref().map(|_| Pending::new(now, wall));
        let mut core = Core::with_journal(cfg.into(), now, journal);
        core.set_acl(cfg.acl.clone());
        let storage = storage.map(|(store, recovered)| {
            recovered.restore_into(&mut core, now, wall);
            store
        });
        // After the restore: schedules continue after their last fire.
        core.set_wall_clock(now, wall);
        Router {
            socket,
            core,
            storage,
            out: Vec::new(),
            with_user: cfg.plain.is_some() || cfg.curve.is_some(),
            ops,
        }
    }

    /// Serves until `stop` receives (or its sender is dropped), then closes
    /// the store. Fails if storage fails: a broker that cannot store what
    /// it promised to keep stops. New ACL rules arriving on `acls` apply to
    /// the commands read after them.
    pub fn run(
        mut self,
        stop: &crossbeam_channel::Receiver<()>,
        acls: &crossbeam_channel::Receiver<Option<Acl>>,
    ) -> Result<(), BrokerError> {
        let result = self.serve(stop, acls);
        self.ops.stopped();
        result
    }

    fn serve(
        &mut self,
        stop: &crossbeam_channel::Receiver<()>,
        acls: &crossbeam_channel::Receiver<Option<Acl>>,
    ) -> Result<(), BrokerError> {
        // What expired while the broker was down goes before anyone asks.
        self.core.tick(Instant::now());
        self.send_all(Instant::now())?;
        loop {
            match stop.try_recv() {
                Ok(()) | Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            self.ops.turn(now);
            let wall = SystemTime::now();
            if let Some(p) = self.core.journal_mut() {
                p.set_clock(now, wall);
            }
            self.core.set_wall_clock(now, wall);
            while let Ok(acl) = acls.try_recv() {
                self.core.set_acl(acl);
            }
            let timeout = if self.ops.arm() {
                0
            } else {
                self.poll_timeout(now)
            };
            let (readable, woken) = self.poll(timeout);
            self.ops.awake(woken);
            if readable {
                // Rules sent while we waited apply to what woke us.
                while let Ok(acl) = acls.try_recv() {
                    self.core.set_acl(acl);
                }
                self.read_turn();
            }
            let now = Instant::now();
            if self.core.next_deadline().is_some_and(|t| t <= now) {
                self.core.tick(now);
            }
            self.ops.answer_admin(&mut self.core, now);
            self.send_all(now)?;
            self.ops.publish(&self.core, now);
            if let Some(s) = &self.storage {
                s.check()?;
            }
        }
        if let Some(s) = self.storage.take() {
            s.close()?;
        }
        tracing::info!("broker stopped");
        Ok(())
    }

    /// Sleeps at most `timeout` ms for a command or (with HTTP) a wake-up;
    /// says which came.
    fn poll(&self, timeout: i64) -> (bool, bool) {
        let result = match self.ops.wake_fd() {
            None => self
                .socket
                .poll(zmq::POLLIN, timeout)
                .map(|n| (n > 0, false)),
            Some(fd) => {
                let mut items = [
                    self.socket.as_poll_item(zmq::POLLIN),
                    zmq::PollItem::from_fd(fd, zmq::POLLIN),
                ];
                zmq::poll(&mut items, timeout)
                    .map(|_| (items[0].is_readable(), items[1].is_readable()))
            }
        };
        match result {
            Ok(r) => r,
            Err(zmq::Error::EINTR) => (false, false),
            Err(e) => {
                tracing::error!("broker poll failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                (false, false)
            }
        }
    }

    /// Milliseconds until the core's next timer (at most [`IDLE`]).
    fn poll_timeout(&self, now: Instant) -> i64 {
        let wait = match self.core.next_deadline() {
            Some(t) => t.saturating_duration_since(now).min(IDLE),
            None => IDLE,
        };
        // Round up, so a timer is not polled for in a busy loop.
        wait.as_micros().div_ceil(1000) as i64
    }

    /// Reads and handles the commands waiting, up to one turn's worth.
    fn read_turn(&mut self) {
        for _ in 0..TURN {
            match self.recv() {
                Ok(Some((id, user, frames))) => {
                    let now = Instant::now();
                    match Message::decode_owned(frames) {
                        Ok(msg) => self.core.handle(&id, user.as_deref(), msg, now),
                        Err(e) => self.core.malformed(&id, &e, now),
                    }
                }
                Ok(None) => {}
                Err(zmq::Error::EAGAIN) => break,
                Err(e) => {
                    tracing::error!("broker receive failed: {e}");
                    break;
                }
            }
        }
    }

    /// One message: routing id, the ZAP user (with PLAIN or CURVE), the
    /// frames.
    #[allow(clippy::type_complexity)]
    fn recv(&self) -> Result<Option<(Vec<u8>, Option<String>, Vec<Vec<u8>>)>, zmq::Error> {
        if !self.with_user {
            let mut frames = self.socket.recv_multipart(zmq::DONTWAIT)?;
            if frames.is_empty() {
                return Ok(None);
            }
            let id = frames.remove(0);
            return Ok(Some((id, None, frames)));
        }
        // The user name is a property of the data frames, not of the
        // routing id frame.
        let id = self.socket.recv_bytes(zmq::DONTWAIT)?;
        let mut frames = Vec::new();
        let mut user = None;
        while self.socket.get_rcvmore()? {
            let mut part = self.socket.recv_msg(0)?;
            if user.is_none() {
                user = part.gets("User-Id").map(str::to_string);
            }
            frames.push(part.to_vec());
        }
        Ok(Some((id, user, frames)))
    }

    /// Flushes the core, commits its changes, and sends everything; failed
    /// sends go back to the core, whose answer (requeued requests for other
    /// workers) is committed and sent in turn.
    fn send_all(&mut self, now: Instant) -> Result<(), BrokerError> {
        // Clients the core dropped after a failed send: whatever else was
        // queued for them in this flush is failed too, so that nothing
        // reaches a client the core no longer counts on.
        let mut dropped: HashSet<ClientId> = HashSet::new();
        loop {
            self.core.flush(now, &mut self.out);
            if let (Some(s), Some(p)) = (&mut self.storage, self.core.journal_mut()) {
                if !p.is_empty() {
                    let started = Instant::now();
                    let writes = s.commit(p)?;
                    self.ops.committed(writes, started.elapsed());
                }
            }
            if self.out.is_empty() {
                return Ok(());
            }
            let mut out = std::mem::take(&mut self.out);
            for o in out.drain(..) {
                if dropped.contains(&o.to) {
                    self.core.send_failed(o, true, "client dropped", now);
                    continue;
                }
                if let Err(e) = self.send(&o) {
                    let to = o.to.clone();
                    if self
                        .core
                        .send_failed(o, e == zmq::Error::EHOSTUNREACH, &e.to_string(), now)
                    {
                        dropped.insert(to);
                    }
                }
            }
            // Keep the allocation for the next turn.
            self.out = out;
        }
    }

    /// Sends identity, header and content; nothing is sent if the peer is
    /// not routable (ROUTER_MANDATORY) or not reading (high-water mark).
    fn send(&self, o: &Outgoing) -> Result<(), zmq::Error> {
        let Ok(header) = o.msg.encode_header() else {
            // Fields came from decoded frames, so they always fit.
            return Ok(());
        };
        self.socket.send(&o.to[..], zmq::SNDMORE | zmq::DONTWAIT)?;
        let content = o.msg.content();
        if content.is_empty() {
            self.socket.send(header, 0)?;
        } else {
            self.socket.send(header, zmq::SNDMORE)?;
            let last = content.len() - 1;
            for (i, f) in content.iter().enumerate() {
                self.socket
                    .send(&f[..], if i == last { 0 } else { zmq::SNDMORE })?;
            }
        }
        Ok(())
    }
}
