//! Logs failed security handshakes on the broker's ROUTER socket, with the
//! cause and the peer, from a ZeroMQ socket monitor read on its own thread
//! (`alaska-broker-monitor`, which owns the monitor's PAIR socket).
//!
//! A refused key or password is logged by the ZAP handler; what only the
//! transport sees is logged here: a client whose CURVE messages do not
//! decrypt (it uses the wrong broker public key) and a client that speaks
//! another security mechanism (NULL or PLAIN against CURVE, say).
//!
//! The failure event carries the protocol error, not the connection; the
//! DISCONNECTED event that follows it carries the connection's descriptor,
//! whose peer address was read when it was accepted. So a failure is
//! logged when that disconnect comes (with one I/O thread, as the broker
//! has, they come in this order).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::BrokerError;

const EVENT_ACCEPTED: u16 = 0x0020;
const EVENT_DISCONNECTED: u16 = 0x0200;
const EVENT_HANDSHAKE_FAILED_NO_DETAIL: u16 = 0x0800;
const EVENT_HANDSHAKE_FAILED_PROTOCOL: u16 = 0x2000;
const EVENT_HANDSHAKE_FAILED_AUTH: u16 = 0x4000;
/// `ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC`.
pub const PROTOCOL_ERROR_CRYPTOGRAPHIC: u32 = 0x1100_0001;
/// `ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH`.
pub const PROTOCOL_ERROR_MECHANISM_MISMATCH: u32 = 0x1100_0002;

/// What a handshake failure on the broker's side means, in words for the
/// log. `mechanism` is the broker's ("CURVE" or "PLAIN").
pub fn explain(event: u16, value: u32, mechanism: &str) -> Option<String> {
    match (event, value) {
        (EVENT_HANDSHAKE_FAILED_PROTOCOL, PROTOCOL_ERROR_CRYPTOGRAPHIC) => Some(format!(
            "{mechanism} handshake failed: the client's messages do not decrypt \
             (it uses the wrong broker public key)"
        )),
        (EVENT_HANDSHAKE_FAILED_PROTOCOL, PROTOCOL_ERROR_MECHANISM_MISMATCH) => Some(format!(
            "handshake failed: the client uses another security mechanism \
             (it does not use {mechanism}, which this broker requires)"
        )),
        (EVENT_HANDSHAKE_FAILED_PROTOCOL, code) => Some(format!(
            "{mechanism} handshake failed: protocol error {code:#x}"
        )),
        // Both sides check the other's mechanism; when the client finds
        // the mismatch first, it hangs up and all we see is the hang-up.
        (EVENT_HANDSHAKE_FAILED_NO_DETAIL, errno) => Some(format!(
            "{mechanism} handshake failed: the client hung up during it ({}), as a client \
             that does not use {mechanism} does",
            std::io::Error::from_raw_os_error(errno as i32)
        )),
        _ => None,
    }
}

/// The running monitor thread.
pub struct MonitorHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MonitorHandle {
    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts monitoring `socket` (before it binds) and logging its failed
/// handshakes.
pub fn start(
    ctx: &zmq::Context,
    socket: &zmq::Socket,
    mechanism: &'static str,
) -> Result<MonitorHandle, BrokerError> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let endpoint = format!(
        "inproc://alaska-broker-monitor-{}",
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let events = EVENT_ACCEPTED
        | EVENT_DISCONNECTED
        | EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | EVENT_HANDSHAKE_FAILED_PROTOCOL
        | EVENT_HANDSHAKE_FAILED_AUTH;
    socket.monitor(&endpoint, i32::from(events))?;
    let pair = ctx.socket(zmq::PAIR)?;
    pair.set_linger(0)?;
    pair.connect(&endpoint)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("alaska-broker-monitor".into())
        .spawn(move || serve(pair, mechanism, &flag))?;
    Ok(MonitorHandle {
        stop,
        thread: Some(thread),
    })
}

fn serve(pair: zmq::Socket, mechanism: &str, stop: &AtomicBool) {
    let mut peers: HashMap<u32, String> = HashMap::new();
    let mut pending: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        match pair.poll(zmq::POLLIN, 100) {
            Ok(n) if n > 0 => {}
            _ => continue,
        }
        let Ok(frames) = pair.recv_multipart(0) else {
            continue;
        };
        let Some(f) = frames.first().filter(|f| f.len() >= 6) else {
            continue;
        };
        let event = u16::from_le_bytes([f[0], f[1]]);
        let value = u32::from_le_bytes([f[2], f[3], f[4], f[5]]);
        match event {
            EVENT_ACCEPTED => {
                if let Some(p) = peer_of(value as i32) {
                    peers.insert(value, p);
                }
            }
            EVENT_DISCONNECTED => {
                let peer = peers.remove(&value);
                if let Some(what) = pending.take() {
                    let from = peer.unwrap_or_else(|| "an unknown peer".into());
                    tracing::warn!("{what} (client at {from})");
                }
            }
            EVENT_HANDSHAKE_FAILED_AUTH => {
                // The ZAP handler has said which key or user it refused.
                tracing::debug!("handshake refused by ZAP (status {value})");
            }
            _ => {
                if let Some(old) = pending.take() {
                    tracing::warn!("{old}");
                }
                pending = explain(event, value, mechanism);
            }
        }
    }
    if let Some(old) = pending {
        tracing::warn!("{old}");
    }
}

/// The remote address of an accepted TCP connection.
fn peer_of(fd: i32) -> Option<String> {
    // SAFETY: getpeername writes at most `len` bytes into storage we own;
    // a descriptor already closed (or reused) gives an error or another
    // address, which only makes the log line vaguer.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) != 0
        {
            return None;
        }
        match storage.ss_family as i32 {
            libc::AF_INET => {
                let a = &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(format!("{ip}:{}", u16::from_be(a.sin_port)))
            }
            libc::AF_INET6 => {
                let a = &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(format!("[{ip}]:{}", u16::from_be(a.sin6_port)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_explained_by_cause() {
        let m = explain(
            EVENT_HANDSHAKE_FAILED_PROTOCOL,
            PROTOCOL_ERROR_CRYPTOGRAPHIC,
            "CURVE",
        )
        .unwrap();
        assert!(m.contains("wrong broker public key"), "{m}");
        let m = explain(
            EVENT_HANDSHAKE_FAILED_PROTOCOL,
            PROTOCOL_ERROR_MECHANISM_MISMATCH,
            "CURVE",
        )
        .unwrap();
        assert!(m.contains("does not use CURVE"), "{m}");
        let m = explain(EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32, "CURVE").unwrap();
        assert!(m.contains("does not use CURVE"), "{m}");
        assert!(explain(EVENT_ACCEPTED, 3, "CURVE").is_none());
    }
}
