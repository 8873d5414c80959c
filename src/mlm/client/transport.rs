//! The client's sockets: the DEALER that talks to the broker and the PAIR
//! that receives its monitor events. Nothing here knows the protocol's
//! rules; it moves [`Message`]s and reports transport events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::error::ClientError;
use super::options::ClientOptions;
use super::wire::{Wire, WireError};
use crate::mlm::codec::{DecodeError, Message};

static MONITOR_SEQ: AtomicU64 = AtomicU64::new(0);

/// `ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC`: a CURVE message did not decrypt.
pub(super) const PROTOCOL_ERROR_CRYPTOGRAPHIC: u32 = 0x1100_0001;
/// `ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH`: the peers' security
/// mechanisms differ.
pub(super) const PROTOCOL_ERROR_MECHANISM_MISMATCH: u32 = 0x1100_0002;

/// A socket monitor event, from the numbers in `zmq.h`. The zmq crate's
/// own enum panics on numbers it does not know, so raw values are mapped
/// here and unknown ones kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorEvent {
    /// The TCP connection is up (the handshake follows).
    Connected,
    /// A connect did not complete at once.
    ConnectDelayed,
    /// A connect is being retried.
    ConnectRetried,
    /// The session with the broker ended.
    Disconnected,
    /// The ZMTP handshake failed without a reason.
    HandshakeFailedNoDetail,
    /// The ZMTP handshake (security included) succeeded: the broker can be
    /// written to.
    HandshakeSucceeded,
    /// The ZMTP handshake failed on a protocol error (e.g. a security
    /// mechanism mismatch).
    HandshakeFailedProtocol,
    /// The broker refused our credentials.
    HandshakeFailedAuth,
    /// Any other event number.
    Other(u16),
}

impl MonitorEvent {
    /// Maps a `ZMQ_EVENT_*` number.
    pub fn from_raw(n: u16) -> MonitorEvent {
        match n {
            1 => MonitorEvent::Connected,
            2 => MonitorEvent::ConnectDelayed,
            4 => MonitorEvent::ConnectRetried,
            512 => MonitorEvent::Disconnected,
            2048 => MonitorEvent::HandshakeFailedNoDetail,
            4096 => MonitorEvent::HandshakeSucceeded,
            8192 => MonitorEvent::HandshakeFailedProtocol,
            16384 => MonitorEvent::HandshakeFailedAuth,
            n => MonitorEvent::Other(n),
        }
    }
}

/// The DEALER socket, its monitor and the context that keeps both alive.
pub(super) struct Transport {
    _ctx: zmq::Context,
    socket: zmq::Socket,
    monitor: zmq::Socket,
    endpoint: String,
}

impl Transport {
    /// Creates the sockets and starts connecting (ZeroMQ connects in the
    /// background; the monitor tells when the handshake is done).
    pub(super) fn open(ctx: &zmq::Context, opts: &ClientOptions) -> Result<Transport, ClientError> {
        let socket = ctx.socket(zmq::DEALER)?;
        // Nothing is queued towards a broker that is not there: it would
        // reach a restarted broker before our CONNECTION OPEN.
        socket.set_immediate(true)?;
        socket.set_linger(1000)?;
        socket.set_reconnect_ivl(100)?;
        socket.set_reconnect_ivl_max(1000)?;
        // A connect that gets no answer at all (a link down, a host gone)
        // is abandoned after the timeout and tried afresh, instead of
        // waiting out the kernel's SYN retries (minutes, with gaps that
        // grow to tens of seconds): a broker whose link comes back is
        // reached within a reconnect interval of it.
        let connect_ms = opts.timeout.as_millis().clamp(100, 60_000) as i32;
        socket.set_connect_timeout(connect_ms)?;
        // Transport heartbeats make a dead TCP peer show up as a disconnect
        // even when no RST ever arrives.
        let hb = opts.heartbeat.as_millis().clamp(100, 10_000) as i32;
        socket.set_heartbeat_ivl(hb)?;
        socket.set_heartbeat_timeout(hb * 3)?;
        if opts.plain.is_some() && opts.curve.is_some() {
            return Err(ClientError::Security(
                "PLAIN and CURVE cannot both be used on one connection".into(),
            ));
        }
        if let Some(c) = &opts.plain {
            socket.set_plain_username(Some(&c.username))?;
            socket.set_plain_password(Some(&c.password))?;
        }
        if let Some(c) = &opts.curve {
            if !crate::curve::has_curve() {
                return Err(ClientError::Security(
                    "CURVE keys given, but this libzmq has no CURVE".into(),
                ));
            }
            socket.set_curve_serverkey(&c.server.0)?;
            socket.set_curve_publickey(&c.client.public.0)?;
            socket.set_curve_secretkey(&c.client.secret.0)?;
        }
        let mon_ep = format!(
            "inproc://alaska-client-monitor-{}-{}",
            std::process::id(),
            MONITOR_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        socket.monitor(&mon_ep, zmq::SocketEvent::ALL as i32)?;
        let monitor = ctx.socket(zmq::PAIR)?;
        monitor.connect(&mon_ep)?;
        socket
            .connect(&opts.endpoint)
            .map_err(|reason| ClientError::Endpoint {
                endpoint: opts.endpoint.clone(),
                reason,
            })?;
        Ok(Transport {
            _ctx: ctx.clone(),
            socket,
            monitor,
            endpoint: opts.endpoint.clone(),
        })
    }

    /// The DEALER and the monitor, for `zmq::poll`, readable first.
    pub(super) fn poll_items(&self) -> [zmq::PollItem<'_>; 2] {
        [
            self.socket.as_poll_item(zmq::POLLIN),
            self.monitor.as_poll_item(zmq::POLLIN),
        ]
    }

    /// Writes one message without blocking: the header frame is encoded
    /// here, content frames go as they are (ZeroMQ copies them).
    fn send(&self, msg: &Message) -> Result<(), WireError> {
        let header = msg.encode_header()?;
        let content = msg.content();
        if content.is_empty() {
            self.socket
                .send(header, zmq::DONTWAIT)
                .map_err(wire_error)?;
        } else {
            self.socket
                .send(header, zmq::DONTWAIT | zmq::SNDMORE)
                .map_err(wire_error)?;
            let last = content.len() - 1;
            for (i, frame) in content.iter().enumerate() {
                let flags = if i == last { 0 } else { zmq::SNDMORE };
                // Once the first frame is in, the rest go in atomically.
                self.socket
                    .send(&frame[..], flags)
                    .map_err(WireError::Zmq)?;
            }
        }
        Ok(())
    }

    /// Reads one message if one is waiting, decoded (or why it did not
    /// decode).
    pub(super) fn read(&self) -> Result<Option<Result<Message, DecodeError>>, ClientError> {
        match self.socket.recv_multipart(zmq::DONTWAIT) {
            Ok(frames) => Ok(Some(Message::decode_owned(frames))),
            Err(zmq::Error::EAGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The next monitor event, if one is waiting, with its value (for a
    /// failed handshake: the protocol error, the ZAP status or the errno).
    pub(super) fn next_event(&self) -> Result<Option<(MonitorEvent, u32)>, ClientError> {
        let frames = match self.monitor.recv_multipart(zmq::DONTWAIT) {
            Ok(f) => f,
            Err(zmq::Error::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(
            frames
                .first()
                .filter(|f| f.len() >= 6)
                .map(|f| {
                    (
                        MonitorEvent::from_raw(u16::from_le_bytes([f[0], f[1]])),
                        u32::from_le_bytes([f[2], f[3], f[4], f[5]]),
                    )
                })
                .unwrap_or((MonitorEvent::Other(0), 0)),
        ))
    }

    /// Waits at most `timeout` for room to write.
    pub(super) fn poll_writable(&self, timeout: Duration) -> Result<(), ClientError> {
        match self.socket.poll(zmq::POLLOUT, ms(timeout)) {
            Ok(_) | Err(zmq::Error::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Drops whatever is queued when the socket closes, as a crashed
    /// process would.
    pub(super) fn discard_on_close(&self) {
        let _ = self.socket.set_linger(0);
    }
}

impl Wire for Transport {
    fn write(&mut self, msg: &Message) -> Result<(), WireError> {
        self.send(msg)
    }
}

/// `EAGAIN` on the first frame: nothing was written, try later.
fn wire_error(e: zmq::Error) -> WireError {
    match e {
        zmq::Error::EAGAIN => WireError::WouldBlock,
        e => WireError::Zmq(e),
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        let _ = self.socket.disconnect(&self.endpoint);
    }
}

/// Asks the ZMTP 3 peer at a `tcp://` endpoint which security mechanism
/// it uses ("NULL", "PLAIN", "CURVE"), over a plain TCP connection of its
/// own. A ZMTP 3 greeting (RFC 23) is 64 bytes: signature (10), version
/// (2), mechanism (20, NUL-padded), as-server (1), filler (31). We send
/// only the signature and the major version, which makes a libzmq peer
/// send its whole greeting, and hang up before saying our mechanism (had
/// we, a peer that reads it before it writes finds the mismatch and hangs
/// up without a word; that is why this probe is needed). Used only to
/// explain a failed handshake: when the broker finds a mechanism mismatch
/// first, libzmq tells us no more than that it hung up. `None` when the
/// endpoint is not TCP or the peer does not answer with a greeting within
/// `timeout`.
pub(super) fn probe_mechanism(endpoint: &str, timeout: Duration) -> Option<String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let host_port = endpoint.strip_prefix("tcp://")?;
    // A connect endpoint may name a local interface first ("eth0;host:port").
    let host_port = host_port.rsplit(';').next()?;
    let addr = host_port.to_socket_addrs().ok()?.next()?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let mut opening = [0u8; 11];
    opening[0] = 0xFF;
    opening[9] = 0x7F;
    opening[10] = 3;
    stream.write_all(&opening).ok()?;
    let mut theirs = [0u8; 64];
    let mut got = 0;
    while got < theirs.len() {
        match stream.read(&mut theirs[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    if got < 32 || theirs[0] != 0xFF || theirs[9] & 1 != 1 || theirs[10] < 3 {
        return None;
    }
    let name: Vec<u8> = theirs[12..32]
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8(name).ok().filter(|n| !n.is_empty())
}

/// A duration as `zmq::poll` milliseconds.
pub(super) fn ms(d: Duration) -> i64 {
    // Round up so that a wait of 0.4 ms does not become a busy loop.
    let m = d.as_micros().div_ceil(1000);
    m.min(i64::MAX as u128) as i64
}
