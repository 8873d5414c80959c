//! Wake-ups from the VM threads to the dispatcher.
//!
//! The dispatcher sleeps in one `zmq::poll` on the broker socket; a VM
//! thread that finished a request writes a byte into a socket pair whose
//! other end is in that poll. No ZeroMQ socket is shared between threads.
//!
//! Under load the dispatcher is awake anyway and picks completions up
//! between messages, so the byte (two system calls, and a spurious return
//! from poll) is only written while the dispatcher is armed: it arms before
//! it sleeps, then looks at its completions once more, then polls.

use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The writing end, cloned into every VM thread.
#[derive(Clone, Debug)]
pub struct Waker {
    tx: Arc<UnixStream>,
    armed: Arc<AtomicBool>,
}

impl Waker {
    /// Wakes the dispatcher. Never blocks: if the pipe is full, a wake-up
    /// is already pending, which is all that is needed.
    pub fn wake(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            let _ = (&*self.tx).write(&[1]);
        }
    }
}

/// The reading end, owned by the dispatcher.
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

    /// Asks for a wake-up byte on the next [`Waker::wake`]. Call before
    /// the last look at the work queue that precedes a sleep, so a wake
    /// between that look and the sleep is not lost.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// No wake-up byte needed (the dispatcher is busy anyway).
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

/// A connected, non-blocking waker pair.
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
