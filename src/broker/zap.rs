//! ZAP handler (ZeroMQ RFC 27): decides who may connect, on its own
//! thread (`alaska-broker-zap`), as ZeroMQ asks of a server that uses PLAIN
//! or CURVE: the handler binds `inproc://zeromq.zap.01` in the same context
//! as the server socket, and libzmq asks it about every handshake.
//!
//! - PLAIN: the user name and password must match the passwords file.
//! - CURVE: the client's public key must be one of the allowed keys (the
//!   handshake has already proved the client holds its secret key).
//!
//! The User-Id of an accepted connection is the PLAIN user name or the
//! CURVE key's name; ZeroMQ attaches it to every message of the connection,
//! and the router authorizes commands by it (`acl`). A refused handshake is
//! logged here with what was refused and where it came from; the client
//! sees `ZMQ_EVENT_HANDSHAKE_FAILED_AUTH` with our status code.
//!
//! The allowed keys can be replaced while running ([`ZapHandle::replace`]),
//! which later handshakes use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::BrokerError;
use crate::curve::{AllowedKeys, PublicKey, KEY_LEN};

/// Whom the handler lets in.
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// PLAIN: user name -> password.
    Plain(HashMap<String, String>),
    /// CURVE: allowed client keys and their names.
    Curve(AllowedKeys),
}

/// A ZAP decision: status code, status text, User-Id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// "200" accepts; "400" refuses; "500" is a malformed request.
    pub code: &'static str,
    /// Said to the client in the refusal (libzmq sends it in ERROR).
    pub text: String,
    /// The user the connection is, when accepted.
    pub user: String,
}

impl Authenticator {
    /// Decides one ZAP request (its frames as RFC 27 orders them: version,
    /// request id, domain, address, identity, mechanism, credentials...).
    /// Socket-free so that it is unit-tested.
    pub fn decide(&self, req: &[Vec<u8>]) -> Decision {
        let field = |i: usize| req.get(i).map(|f| String::from_utf8_lossy(f).into_owned());
        let refuse = |code, text: String| Decision {
            code,
            text,
            user: String::new(),
        };
        if field(0).as_deref() != Some("1.0") {
            return refuse("500", "bad ZAP version".into());
        }
        let mechanism = field(5).unwrap_or_default();
        let peer = field(3).unwrap_or_default();
        match (self, mechanism.as_str()) {
            (Authenticator::Plain(users), "PLAIN") => {
                let name = field(6).unwrap_or_default();
                let password = field(7).unwrap_or_default();
                if users.get(&name).is_some_and(|p| *p == password) {
                    Decision {
                        code: "200",
                        text: "OK".into(),
                        user: name,
                    }
                } else {
                    tracing::warn!(
                        "authentication refused for user {name:?} from {peer}: \
                         invalid user name or password"
                    );
                    refuse("400", "invalid user name or password".into())
                }
            }
            (Authenticator::Curve(keys), "CURVE") => {
                let key = req
                    .get(6)
                    .and_then(|k| <[u8; KEY_LEN]>::try_from(k.as_slice()).ok())
                    .map(PublicKey);
                match key {
                    Some(k) => match keys.name_of(&k) {
                        Some(name) => Decision {
                            code: "200",
                            text: "OK".into(),
                            user: name.to_string(),
                        },
                        None => {
                            tracing::warn!(
                                "authentication refused for CURVE key {k} from {peer}: \
                                 not an allowed client key"
                            );
                            refuse("400", "unknown client key".into())
                        }
                    },
                    None => refuse("500", "malformed CURVE credentials".into()),
                }
            }
            // libzmq only asks about the mechanism the socket uses, so this
            // is a confused request rather than a client's choice.
            (Authenticator::Plain(_), m) => refuse("400", format!("PLAIN required, not {m}")),
            (Authenticator::Curve(_), m) => refuse("400", format!("CURVE required, not {m}")),
        }
    }
}

/// The running ZAP thread.
pub struct ZapHandle {
    stop: Arc<AtomicBool>,
    keys: crossbeam_channel::Sender<AllowedKeys>,
    thread: Option<JoinHandle<()>>,
}

impl ZapHandle {
    /// Replaces the allowed CURVE keys for later handshakes (no effect on
    /// PLAIN).
    pub fn replace(&self, keys: AllowedKeys) {
        let _ = self.keys.send(keys);
    }

    /// Stops the handler and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds the ZAP endpoint in `ctx` and answers requests with `auth`.
pub fn start(ctx: &zmq::Context, auth: Authenticator) -> Result<ZapHandle, BrokerError> {
    let socket = ctx.socket(zmq::REP)?;
    socket.set_linger(0)?;
    socket.bind("inproc://zeromq.zap.01")?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (keys_tx, keys_rx) = crossbeam_channel::unbounded();
    let thread = std::thread::Builder::new()
        .name("alaska-broker-zap".into())
        .spawn(move || serve(socket, auth, &keys_rx, &flag))?;
    Ok(ZapHandle {
        stop,
        keys: keys_tx,
        thread: Some(thread),
    })
}

fn serve(
    socket: zmq::Socket,
    mut auth: Authenticator,
    keys: &crossbeam_channel::Receiver<AllowedKeys>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        match socket.poll(zmq::POLLIN, 100) {
            Ok(n) if n > 0 => {}
            _ => continue,
        }
        let Ok(req) = socket.recv_multipart(0) else {
            continue;
        };
        // Keys sent while we waited apply to the handshake that woke us.
        while let Ok(new) = keys.try_recv() {
            if let Authenticator::Curve(current) = &mut auth {
                *current = new;
            }
        }
        let d = auth.decide(&req);
        let reply: Vec<Vec<u8>> = vec![
            b"1.0".to_vec(),
            req.get(1).cloned().unwrap_or_default(),
            d.code.as_bytes().to_vec(),
            d.text.into_bytes(),
            d.user.into_bytes(),
            Vec::new(),
        ];
        if let Err(e) = socket.send_multipart(reply, 0) {
            tracing::error!("ZAP reply failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::KeyPair;

    fn request(mechanism: &str, creds: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut r: Vec<Vec<u8>> = vec![
            b"1.0".to_vec(),
            b"7".to_vec(),
            b"alaska".to_vec(),
            b"127.0.0.1".to_vec(),
            Vec::new(),
            mechanism.as_bytes().to_vec(),
        ];
        r.extend(creds.iter().map(|c| c.to_vec()));
        r
    }

    #[test]
    fn curve_lets_in_allowed_keys_under_their_names_only() {
        let alice = KeyPair::generate().unwrap();
        let mallory = KeyPair::generate().unwrap();
        let mut keys = AllowedKeys::default();
        keys.insert("alice", alice.public);
        let auth = Authenticator::Curve(keys);
        let d = auth.decide(&request("CURVE", &[&alice.public.0]));
        assert_eq!((d.code, d.user.as_str()), ("200", "alice"));
        let d = auth.decide(&request("CURVE", &[&mallory.public.0]));
        assert_eq!(d.code, "400");
        assert_eq!(d.text, "unknown client key");
        assert!(d.user.is_empty());
        let d = auth.decide(&request("CURVE", &[b"short"]));
        assert_eq!(d.code, "500");
        let d = auth.decide(&request("PLAIN", &[b"alice", b"pw"]));
        assert_eq!(d.code, "400");
    }

    #[test]
    fn plain_checks_name_and_password() {
        let auth = Authenticator::Plain(HashMap::from([("app".into(), "pw".into())]));
        let d = auth.decide(&request("PLAIN", &[b"app", b"pw"]));
        assert_eq!((d.code, d.user.as_str()), ("200", "app"));
        assert_eq!(auth.decide(&request("PLAIN", &[b"app", b"no"])).code, "400");
        assert_eq!(auth.decide(&request("PLAIN", &[b"bob", b"pw"])).code, "400");
        let mut bad = request("PLAIN", &[b"app", b"pw"]);
        bad[0] = b"2.0".to_vec();
        assert_eq!(auth.decide(&bad).code, "500");
    }
}
