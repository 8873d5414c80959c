//! ZAP handler for PLAIN security: checks user names and passwords on its
//! own thread (`alaska-broker-zap`), as ZeroMQ asks of a server that uses
//! PLAIN (RFC 27: the handler binds `inproc://zeromq.zap.01` in the same
//! context as the server socket).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::BrokerError;

/// The running ZAP thread.
pub struct ZapHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ZapHandle {
    /// Stops the handler and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds the ZAP endpoint in `ctx` and answers requests from `users`.
pub fn start(ctx: &zmq::Context, users: HashMap<String, String>) -> Result<ZapHandle, BrokerError> {
    let socket = ctx.socket(zmq::REP)?;
    socket.set_linger(0)?;
    socket.bind("inproc://zeromq.zap.01")?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("alaska-broker-zap".into())
        .spawn(move || serve(socket, users, &flag))?;
    Ok(ZapHandle {
        stop,
        thread: Some(thread),
    })
}

fn serve(socket: zmq::Socket, users: HashMap<String, String>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match socket.poll(zmq::POLLIN, 100) {
            Ok(n) if n > 0 => {}
            _ => continue,
        }
        let Ok(req) = socket.recv_multipart(0) else {
            continue;
        };
        // version, request id, domain, address, identity, mechanism, creds...
        let field = |i: usize| req.get(i).map(|f| String::from_utf8_lossy(f).into_owned());
        let request_id = req.get(1).cloned().unwrap_or_default();
        let mechanism = field(5).unwrap_or_default();
        let (code, text, user) = if field(0).as_deref() != Some("1.0") {
            ("500", "bad ZAP version", String::new())
        } else if mechanism != "PLAIN" {
            ("400", "PLAIN required", String::new())
        } else {
            let name = field(6).unwrap_or_default();
            let password = field(7).unwrap_or_default();
            if users.get(&name).is_some_and(|p| *p == password) {
                ("200", "OK", name)
            } else {
                tracing::warn!("authentication refused for user {name:?}");
                ("400", "invalid user name or password", String::new())
            }
        };
        let reply: Vec<Vec<u8>> = vec![
            b"1.0".to_vec(),
            request_id,
            code.as_bytes().to_vec(),
            text.as_bytes().to_vec(),
            user.into_bytes(),
            Vec::new(),
        ];
        if let Err(e) = socket.send_multipart(reply, 0) {
            tracing::error!("ZAP reply failed: {e}");
        }
    }
}
