//! Wake-ups for a thread that sleeps in `zmq::poll` on the socket it owns.
//!
//! Other threads hand it work over a channel and then write a byte into a
//! socket pair whose reading end is in that poll. The byte costs two system
//! calls and a return from poll, so it is only written while the owner is
//! *armed*: it arms before it sleeps, looks at its channel once more, then
//! polls; a busy owner picks work up between messages without any byte.

use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The writing end, cloned into every thread that hands work over.
#[derive(Clone, Debug)]
pub struct Waker {
    tx: Arc<UnixStream>,
    armed: Arc<AtomicBool>,
}

impl Waker {
    /// Wakes the owner if it sleeps. Never blocks: a full pipe means a
    /// wake-up is already pending, which is all that is needed.
    pub fn wake(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            let _ = (&*self.tx).write(&[1]);
        }
    }
}

/// The reading end, owned by the sleeping thread.
#[derive(Debug)]
pub struct WakeReceiver {
    rx: UnixStream,
    armed: Arc<AtomicBool>,
}

impl WakeReceiver {
    /// The descriptor to poll for readability.
    pub fn as_raw_fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// Asks for a byte on the next [`Waker::wake`]. Call before the last
    /// look at the channel that precedes a sleep, so that work handed over
    /// between that look and the sleep still wakes it.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// No byte needed: the owner is awake anyway.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// Empties the pipe after a wake-up.
    pub fn drain(&self) {
        let mut buf = [0u8; 256];
        while let Ok(n) = (&self.rx).read(&mut buf) {
            if n < buf.len() {
                break;
            }
        }
    }
}

/// A connected, non-blocking pair, armed.
pub fn waker() -> std::io::Result<(Waker, WakeReceiver)> {
    let (tx, rx) = UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    let armed = Arc::new(AtomicBool::new(true));
    Ok((
        Waker {
            tx: Arc::new(tx),
            armed: armed.clone(),
        },
        WakeReceiver { rx, armed },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn a_byte_only_while_armed() {
        let (w, r) = waker().unwrap();
        r.disarm();
        w.wake();
        assert!(!readable(r.as_raw_fd()), "disarmed: no byte");
        r.arm();
        w.wake();
        w.wake();
        assert!(readable(r.as_raw_fd()), "armed: a byte");
        r.drain();
        assert!(!readable(r.as_raw_fd()), "drained");
        w.wake();
        assert!(!readable(r.as_raw_fd()), "one byte per arming");
    }
}
