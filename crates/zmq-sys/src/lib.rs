//! The part of libzmq 4.3's C API (`zmq.h`) that the `zmq` crate 0.10
//! calls, declared by hand from the header's facts, for a libzmq built
//! with CURVE (see `build.rs`).
//!
//! Names, numbers and signatures are those of `zmq.h`. Option, socket-type
//! and event numbers are `u32` because the `zmq` crate matches raw values
//! cast to `u32` against them; error numbers are `c_int` because it matches
//! `zmq_errno()` against them. Nothing here is called by Alaska directly.

#![allow(non_camel_case_types)]
#![no_std]

use libc::{c_char, c_int, c_long, c_short, c_uchar, c_void, size_t};

/// The socket descriptor type of `zmq_pollitem_t` (`zmq_fd_t`): an `int`
/// everywhere but Windows.
#[cfg(not(windows))]
pub type RawFd = c_int;
/// The socket descriptor type of `zmq_pollitem_t` (`zmq_fd_t`): a `SOCKET`
/// on Windows.
#[cfg(windows)]
pub type RawFd = usize;

/// An opaque message: 64 bytes, aligned like a pointer (as `zmq.h` asks of
/// every compiler it knows), initialised only by `zmq_msg_init*`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct zmq_msg_t {
    _opaque: [c_uchar; 64],
}

impl Default for zmq_msg_t {
    fn default() -> Self {
        zmq_msg_t { _opaque: [0; 64] }
    }
}

/// What `zmq_poll` polls: a socket (or, when `socket` is null, a file
/// descriptor) and the events asked for and seen.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct zmq_pollitem_t {
    /// The ZeroMQ socket, or null to poll `fd`.
    pub socket: *mut c_void,
    /// A plain file descriptor, used when `socket` is null.
    pub fd: RawFd,
    /// `ZMQ_POLLIN`, `ZMQ_POLLOUT`, `ZMQ_POLLERR` asked for.
    pub events: c_short,
    /// What happened.
    pub revents: c_short,
}

/// Frees the buffer given to `zmq_msg_init_data` when libzmq is done.
pub type zmq_free_fn = unsafe extern "C" fn(data: *mut c_void, hint: *mut c_void);

/// Error numbers as libzmq reports them: the platform's where it has one,
/// libzmq's own (`ZMQ_HAUSNUMERO` + n) otherwise.
pub mod errno {
    use libc::c_int;

    /// Base of libzmq's own error numbers.
    const HAUSNUMERO: c_int = 156_384_712;

    pub use libc::{
        EACCES, EADDRINUSE, EADDRNOTAVAIL, EAGAIN, EBUSY, ECONNREFUSED, EFAULT, EHOSTUNREACH,
        EINPROGRESS, EINTR, EINVAL, EMFILE, EMSGSIZE, ENAMETOOLONG, ENETDOWN, ENOBUFS, ENODEV,
        ENOENT, ENOMEM, ENOTCONN, ENOTSOCK, ENOTSUP, EPROTO, EPROTONOSUPPORT,
    };

    // The numbers `zmq.h` gives these errors on platforms whose C library
    // lacks them; a portable caller accepts both forms.
    /// `ENOTSUP` as libzmq numbers it where the platform has none.
    pub const ENOTSUP_ALT: c_int = HAUSNUMERO + 1;
    /// `EPROTONOSUPPORT` as libzmq numbers it where the platform has none.
    pub const EPROTONOSUPPORT_ALT: c_int = HAUSNUMERO + 2;
    /// `ENOBUFS` as libzmq numbers it where the platform has none.
    pub const ENOBUFS_ALT: c_int = HAUSNUMERO + 3;
    /// `ENETDOWN` as libzmq numbers it where the platform has none.
    pub const ENETDOWN_ALT: c_int = HAUSNUMERO + 4;
    /// `EADDRINUSE` as libzmq numbers it where the platform has none.
    pub const EADDRINUSE_ALT: c_int = HAUSNUMERO + 5;
    /// `EADDRNOTAVAIL` as libzmq numbers it where the platform has none.
    pub const EADDRNOTAVAIL_ALT: c_int = HAUSNUMERO + 6;
    /// `ECONNREFUSED` as libzmq numbers it where the platform has none.
    pub const ECONNREFUSED_ALT: c_int = HAUSNUMERO + 7;
    /// `EINPROGRESS` as libzmq numbers it where the platform has none.
    pub const EINPROGRESS_ALT: c_int = HAUSNUMERO + 8;
    /// `ENOTSOCK` as libzmq numbers it where the platform has none.
    pub const ENOTSOCK_ALT: c_int = HAUSNUMERO + 9;
    /// `EMSGSIZE` as libzmq numbers it where the platform has none.
    pub const EMSGSIZE_ALT: c_int = HAUSNUMERO + 10;

    /// The operation is not valid in the socket's current state.
    pub const EFSM: c_int = HAUSNUMERO + 51;
    /// The protocol is not compatible with the socket type.
    pub const ENOCOMPATPROTO: c_int = HAUSNUMERO + 52;
    /// The context was terminated.
    pub const ETERM: c_int = HAUSNUMERO + 53;
    /// No I/O thread is available.
    pub const EMTHREAD: c_int = HAUSNUMERO + 54;
}

// Context options.
/// Context option: number of I/O threads.
pub const ZMQ_IO_THREADS: u32 = 1;

// Socket types.
/// Socket type PAIR.
pub const ZMQ_PAIR: u32 = 0;
/// Socket type PUB.
pub const ZMQ_PUB: u32 = 1;
/// Socket type SUB.
pub const ZMQ_SUB: u32 = 2;
/// Socket type REQ.
pub const ZMQ_REQ: u32 = 3;
/// Socket type REP.
pub const ZMQ_REP: u32 = 4;
/// Socket type DEALER.
pub const ZMQ_DEALER: u32 = 5;
/// Socket type ROUTER.
pub const ZMQ_ROUTER: u32 = 6;
/// Socket type PULL.
pub const ZMQ_PULL: u32 = 7;
/// Socket type PUSH.
pub const ZMQ_PUSH: u32 = 8;
/// Socket type XPUB.
pub const ZMQ_XPUB: u32 = 9;
/// Socket type XSUB.
pub const ZMQ_XSUB: u32 = 10;
/// Socket type STREAM.
pub const ZMQ_STREAM: u32 = 11;

// Socket options.
/// Socket option ZMQ_AFFINITY.
pub const ZMQ_AFFINITY: u32 = 4;
/// Socket option ZMQ_ROUTING_ID.
pub const ZMQ_ROUTING_ID: u32 = 5;
/// Socket option ZMQ_SUBSCRIBE.
pub const ZMQ_SUBSCRIBE: u32 = 6;
/// Socket option ZMQ_UNSUBSCRIBE.
pub const ZMQ_UNSUBSCRIBE: u32 = 7;
/// Socket option ZMQ_RATE.
pub const ZMQ_RATE: u32 = 8;
/// Socket option ZMQ_RECOVERY_IVL.
pub const ZMQ_RECOVERY_IVL: u32 = 9;
/// Socket option ZMQ_SNDBUF.
pub const ZMQ_SNDBUF: u32 = 11;
/// Socket option ZMQ_RCVBUF.
pub const ZMQ_RCVBUF: u32 = 12;
/// Socket option ZMQ_RCVMORE.
pub const ZMQ_RCVMORE: u32 = 13;
/// Socket option ZMQ_FD.
pub const ZMQ_FD: u32 = 14;
/// Socket option ZMQ_EVENTS.
pub const ZMQ_EVENTS: u32 = 15;
/// Socket option ZMQ_TYPE.
pub const ZMQ_TYPE: u32 = 16;
/// Socket option ZMQ_LINGER.
pub const ZMQ_LINGER: u32 = 17;
/// Socket option ZMQ_RECONNECT_IVL.
pub const ZMQ_RECONNECT_IVL: u32 = 18;
/// Socket option ZMQ_BACKLOG.
pub const ZMQ_BACKLOG: u32 = 19;
/// Socket option ZMQ_RECONNECT_IVL_MAX.
pub const ZMQ_RECONNECT_IVL_MAX: u32 = 21;
/// Socket option ZMQ_MAXMSGSIZE.
pub const ZMQ_MAXMSGSIZE: u32 = 22;
/// Socket option ZMQ_SNDHWM.
pub const ZMQ_SNDHWM: u32 = 23;
/// Socket option ZMQ_RCVHWM.
pub const ZMQ_RCVHWM: u32 = 24;
/// Socket option ZMQ_MULTICAST_HOPS.
pub const ZMQ_MULTICAST_HOPS: u32 = 25;
/// Socket option ZMQ_RCVTIMEO.
pub const ZMQ_RCVTIMEO: u32 = 27;
/// Socket option ZMQ_SNDTIMEO.
pub const ZMQ_SNDTIMEO: u32 = 28;
/// Socket option ZMQ_LAST_ENDPOINT.
pub const ZMQ_LAST_ENDPOINT: u32 = 32;
/// Socket option ZMQ_ROUTER_MANDATORY.
pub const ZMQ_ROUTER_MANDATORY: u32 = 33;
/// Socket option ZMQ_TCP_KEEPALIVE.
pub const ZMQ_TCP_KEEPALIVE: u32 = 34;
/// Socket option ZMQ_TCP_KEEPALIVE_CNT.
pub const ZMQ_TCP_KEEPALIVE_CNT: u32 = 35;
/// Socket option ZMQ_TCP_KEEPALIVE_IDLE.
pub const ZMQ_TCP_KEEPALIVE_IDLE: u32 = 36;
/// Socket option ZMQ_TCP_KEEPALIVE_INTVL.
pub const ZMQ_TCP_KEEPALIVE_INTVL: u32 = 37;
/// Socket option ZMQ_IMMEDIATE.
pub const ZMQ_IMMEDIATE: u32 = 39;
/// Socket option ZMQ_XPUB_VERBOSE.
pub const ZMQ_XPUB_VERBOSE: u32 = 40;
/// Socket option ZMQ_IPV6.
pub const ZMQ_IPV6: u32 = 42;
/// Socket option ZMQ_MECHANISM.
pub const ZMQ_MECHANISM: u32 = 43;
/// Socket option ZMQ_PLAIN_SERVER.
pub const ZMQ_PLAIN_SERVER: u32 = 44;
/// Socket option ZMQ_PLAIN_USERNAME.
pub const ZMQ_PLAIN_USERNAME: u32 = 45;
/// Socket option ZMQ_PLAIN_PASSWORD.
pub const ZMQ_PLAIN_PASSWORD: u32 = 46;
/// Socket option ZMQ_CURVE_SERVER.
pub const ZMQ_CURVE_SERVER: u32 = 47;
/// Socket option ZMQ_CURVE_PUBLICKEY.
pub const ZMQ_CURVE_PUBLICKEY: u32 = 48;
/// Socket option ZMQ_CURVE_SECRETKEY.
pub const ZMQ_CURVE_SECRETKEY: u32 = 49;
/// Socket option ZMQ_CURVE_SERVERKEY.
pub const ZMQ_CURVE_SERVERKEY: u32 = 50;
/// Socket option ZMQ_PROBE_ROUTER.
pub const ZMQ_PROBE_ROUTER: u32 = 51;
/// Socket option ZMQ_REQ_CORRELATE.
pub const ZMQ_REQ_CORRELATE: u32 = 52;
/// Socket option ZMQ_REQ_RELAXED.
pub const ZMQ_REQ_RELAXED: u32 = 53;
/// Socket option ZMQ_CONFLATE.
pub const ZMQ_CONFLATE: u32 = 54;
/// Socket option ZMQ_ZAP_DOMAIN.
pub const ZMQ_ZAP_DOMAIN: u32 = 55;
/// Socket option ZMQ_ROUTER_HANDOVER.
pub const ZMQ_ROUTER_HANDOVER: u32 = 56;
/// Socket option ZMQ_TOS.
pub const ZMQ_TOS: u32 = 57;
/// Socket option ZMQ_GSSAPI_SERVER.
pub const ZMQ_GSSAPI_SERVER: u32 = 62;
/// Socket option ZMQ_GSSAPI_PRINCIPAL.
pub const ZMQ_GSSAPI_PRINCIPAL: u32 = 63;
/// Socket option ZMQ_GSSAPI_SERVICE_PRINCIPAL.
pub const ZMQ_GSSAPI_SERVICE_PRINCIPAL: u32 = 64;
/// Socket option ZMQ_GSSAPI_PLAINTEXT.
pub const ZMQ_GSSAPI_PLAINTEXT: u32 = 65;
/// Socket option ZMQ_HANDSHAKE_IVL.
pub const ZMQ_HANDSHAKE_IVL: u32 = 66;
/// Socket option ZMQ_SOCKS_PROXY.
pub const ZMQ_SOCKS_PROXY: u32 = 68;
/// Socket option ZMQ_XPUB_WELCOME_MSG.
pub const ZMQ_XPUB_WELCOME_MSG: u32 = 72;
/// Socket option ZMQ_HEARTBEAT_IVL.
pub const ZMQ_HEARTBEAT_IVL: u32 = 75;
/// Socket option ZMQ_HEARTBEAT_TTL.
pub const ZMQ_HEARTBEAT_TTL: u32 = 76;
/// Socket option ZMQ_HEARTBEAT_TIMEOUT.
pub const ZMQ_HEARTBEAT_TIMEOUT: u32 = 77;
/// Socket option ZMQ_CONNECT_TIMEOUT.
pub const ZMQ_CONNECT_TIMEOUT: u32 = 79;

// Message and send/receive flags.
/// `zmq_msg_get` property: more frames follow.
pub const ZMQ_MORE: u32 = 1;
/// Send/receive flag: do not block.
pub const ZMQ_DONTWAIT: u32 = 1;
/// Send flag: more frames of this message follow.
pub const ZMQ_SNDMORE: u32 = 2;

// Security mechanisms (ZMQ_MECHANISM values).
/// No security.
pub const ZMQ_NULL: u32 = 0;
/// PLAIN user name and password.
pub const ZMQ_PLAIN: u32 = 1;
/// CURVE encryption and authentication.
pub const ZMQ_CURVE: u32 = 2;
/// GSSAPI (Kerberos).
pub const ZMQ_GSSAPI: u32 = 3;

// Socket monitor events.
/// The connection is up.
pub const ZMQ_EVENT_CONNECTED: u32 = 0x0001;
/// A connect did not complete at once.
pub const ZMQ_EVENT_CONNECT_DELAYED: u32 = 0x0002;
/// A connect is being retried.
pub const ZMQ_EVENT_CONNECT_RETRIED: u32 = 0x0004;
/// The socket listens.
pub const ZMQ_EVENT_LISTENING: u32 = 0x0008;
/// A bind failed.
pub const ZMQ_EVENT_BIND_FAILED: u32 = 0x0010;
/// A connection was accepted.
pub const ZMQ_EVENT_ACCEPTED: u32 = 0x0020;
/// Accepting a connection failed.
pub const ZMQ_EVENT_ACCEPT_FAILED: u32 = 0x0040;
/// A connection was closed.
pub const ZMQ_EVENT_CLOSED: u32 = 0x0080;
/// Closing a connection failed.
pub const ZMQ_EVENT_CLOSE_FAILED: u32 = 0x0100;
/// The session ended.
pub const ZMQ_EVENT_DISCONNECTED: u32 = 0x0200;
/// The monitor stopped.
pub const ZMQ_EVENT_MONITOR_STOPPED: u32 = 0x0400;
/// Every event above.
pub const ZMQ_EVENT_ALL: u32 = 0xFFFF;
/// The handshake failed, no reason given.
pub const ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL: u32 = 0x0800;
/// The handshake (security included) succeeded.
pub const ZMQ_EVENT_HANDSHAKE_SUCCEEDED: u32 = 0x1000;
/// The handshake failed on a protocol error; the value says which.
pub const ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL: u32 = 0x2000;
/// The handshake failed on authentication; the value is the ZAP status.
pub const ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: u32 = 0x4000;

// Polling.
/// Readable.
pub const ZMQ_POLLIN: u32 = 1;
/// Writable.
pub const ZMQ_POLLOUT: u32 = 2;
/// Error condition (plain file descriptors only).
pub const ZMQ_POLLERR: u32 = 4;

extern "C" {
    /// The error number of the calling thread's last failed call.
    pub fn zmq_errno() -> c_int;
    /// A message describing an error number.
    pub fn zmq_strerror(errnum: c_int) -> *const c_char;
    /// The library's version.
    pub fn zmq_version(major: *mut c_int, minor: *mut c_int, patch: *mut c_int);

    /// A new context.
    pub fn zmq_ctx_new() -> *mut c_void;
    /// Ends a context (blocks until its sockets are closed).
    pub fn zmq_ctx_term(context: *mut c_void) -> c_int;
    /// Sets a context option.
    pub fn zmq_ctx_set(context: *mut c_void, option: c_int, optval: c_int) -> c_int;
    /// Reads a context option.
    pub fn zmq_ctx_get(context: *mut c_void, option: c_int) -> c_int;

    /// An empty message.
    pub fn zmq_msg_init(msg: *mut zmq_msg_t) -> c_int;
    /// A message of `size` bytes owned by libzmq.
    pub fn zmq_msg_init_size(msg: *mut zmq_msg_t, size: size_t) -> c_int;
    /// A message over the caller's buffer, freed with `ffn` when done.
    pub fn zmq_msg_init_data(
        msg: *mut zmq_msg_t,
        data: *mut c_void,
        size: size_t,
        ffn: Option<zmq_free_fn>,
        hint: *mut c_void,
    ) -> c_int;
    /// Sends one frame.
    pub fn zmq_msg_send(msg: *mut zmq_msg_t, s: *mut c_void, flags: c_int) -> c_int;
    /// Receives one frame.
    pub fn zmq_msg_recv(msg: *mut zmq_msg_t, s: *mut c_void, flags: c_int) -> c_int;
    /// Releases a message.
    pub fn zmq_msg_close(msg: *mut zmq_msg_t) -> c_int;
    /// The message's bytes.
    pub fn zmq_msg_data(msg: *mut zmq_msg_t) -> *mut c_void;
    /// The message's length.
    pub fn zmq_msg_size(msg: *const zmq_msg_t) -> size_t;
    /// Whether more frames follow.
    pub fn zmq_msg_more(msg: *const zmq_msg_t) -> c_int;
    /// A metadata property of the connection the message came over (e.g.
    /// "User-Id", "Peer-Address"); null when there is none.
    pub fn zmq_msg_gets(msg: *const zmq_msg_t, property: *const c_char) -> *const c_char;

    /// A new socket of a type.
    pub fn zmq_socket(context: *mut c_void, type_: c_int) -> *mut c_void;
    /// Closes a socket.
    pub fn zmq_close(s: *mut c_void) -> c_int;
    /// Sets a socket option.
    pub fn zmq_setsockopt(
        s: *mut c_void,
        option: c_int,
        optval: *const c_void,
        optvallen: size_t,
    ) -> c_int;
    /// Reads a socket option.
    pub fn zmq_getsockopt(
        s: *mut c_void,
        option: c_int,
        optval: *mut c_void,
        optvallen: *mut size_t,
    ) -> c_int;
    /// Binds to an endpoint.
    pub fn zmq_bind(s: *mut c_void, addr: *const c_char) -> c_int;
    /// Connects to an endpoint.
    pub fn zmq_connect(s: *mut c_void, addr: *const c_char) -> c_int;
    /// Stops listening on an endpoint.
    pub fn zmq_unbind(s: *mut c_void, addr: *const c_char) -> c_int;
    /// Disconnects from an endpoint.
    pub fn zmq_disconnect(s: *mut c_void, addr: *const c_char) -> c_int;
    /// Receives into a buffer (the frame is truncated to `len`).
    pub fn zmq_recv(s: *mut c_void, buf: *mut c_void, len: size_t, flags: c_int) -> c_int;
    /// Publishes the socket's events on a PAIR endpoint.
    pub fn zmq_socket_monitor(s: *mut c_void, addr: *const c_char, events: c_int) -> c_int;

    /// Waits for events on sockets and file descriptors.
    pub fn zmq_poll(items: *mut zmq_pollitem_t, nitems: c_int, timeout: c_long) -> c_int;

    /// Forwards between two sockets until the context ends.
    pub fn zmq_proxy(frontend: *mut c_void, backend: *mut c_void, capture: *mut c_void) -> c_int;
    /// Like `zmq_proxy`, controlled through a socket.
    pub fn zmq_proxy_steerable(
        frontend: *mut c_void,
        backend: *mut c_void,
        capture: *mut c_void,
        control: *mut c_void,
    ) -> c_int;

    /// 1 if the library has a capability ("curve", "ipc", ...).
    pub fn zmq_has(capability: *const c_char) -> c_int;

    /// Z85-encodes `size` bytes (a multiple of 4) into `dest` (size * 5 / 4
    /// + 1 bytes).
    pub fn zmq_z85_encode(dest: *mut c_char, data: *const u8, size: size_t) -> *mut c_char;
    /// Decodes a Z85 string into `dest`; null if it is not valid Z85.
    pub fn zmq_z85_decode(dest: *mut u8, string: *const c_char) -> *mut u8;
    /// A new CURVE key pair, both Z85 (40 characters and a NUL).
    pub fn zmq_curve_keypair(z85_public_key: *mut c_char, z85_secret_key: *mut c_char) -> c_int;
    /// The Z85 public key of a Z85 secret key.
    pub fn zmq_curve_public(z85_public_key: *mut c_char, z85_secret_key: *const c_char) -> c_int;
}
