//! The gateway's settings: `alaska-gateway.cfg` (ZPL, keys under
//! `gateway/`), layered like the worker's: the shipped file's defaults,
//! then the file given, then `ALASKA_GATEWAY__…` environment variables.
//! A bad value is an error naming its key.

use std::path::Path;
use std::time::Duration;

use super::GatewayOptions;
use crate::config::{
    boolean, bytes, layered, nonzero_duration as duration, positive, required, ConfigError,
};
use crate::mlm::{Credentials, CurveClientKeys};

/// The shipped configuration, which is also the defaults.
pub const DEFAULT_CONFIG: &str = include_str!("../../alaska-gateway.cfg");

/// The gateway's settings, every one with its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// `gateway/verbose`.
    pub verbose: bool,
    /// `gateway/http/listen`.
    pub listen: String,
    /// `gateway/http/max_body`, bytes.
    pub max_body: usize,
    /// `gateway/http/token` (or `token_file`): the bearer token callers need.
    pub token: Option<String>,
    /// `gateway/broker/endpoint`: one broker, or several comma-separated in
    /// priority order.
    pub endpoint: String,
    /// `gateway/broker/balance`: `priority` or `rr`.
    pub balance: crate::failover::Balance,
    /// `gateway/broker/address`; `None` for the default.
    pub address: Option<String>,
    /// `gateway/broker/timeout`.
    pub broker_timeout: Duration,
    /// `gateway/broker/jetstream`: NATS requests go through JetStream.
    pub jetstream: bool,
    /// `gateway/request/timeout`.
    pub request_timeout: Duration,
    /// `gateway/request/max_timeout`.
    pub max_timeout: Duration,
    /// `gateway/request/max_waiting`.
    pub max_waiting: usize,
    /// `gateway/auth/plain/username` and `password`.
    pub plain: Option<(String, String)>,
    /// The keys in the files `gateway/auth/curve/certificate` (our secret
    /// certificate) and `gateway/auth/curve/server` (the broker's public
    /// certificate), read when the settings are.
    pub curve: Option<CurveClientKeys>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            verbose: false,
            listen: "127.0.0.1:8080".into(),
            max_body: 1 << 20,
            token: None,
            endpoint: crate::mlm::DEFAULT_ENDPOINT.into(),
            balance: crate::failover::Balance::Priority,
            address: None,
            broker_timeout: Duration::from_millis(1000),
            jetstream: false,
            request_timeout: Duration::from_secs(5),
            max_timeout: Duration::from_secs(60),
            max_waiting: 1024,
            plain: None,
            curve: None,
        }
    }
}

impl GatewaySettings {
    /// Reads `path` (which must exist), then the process environment.
    pub fn load(path: &Path) -> Result<GatewaySettings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        GatewaySettings::from_sources(&text, std::env::vars())
            .map_err(|e| ConfigError::Syntax(format!("{}: {e}", path.display())))
    }

    /// Parses ZPL text with overrides from `env` (only `ALASKA_…` names
    /// count).
    pub fn from_sources(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<GatewaySettings, ConfigError> {
        let c = layered(
            crate::config::defaults::GATEWAY_DEFAULTS,
            "gateway",
            &[],
            text,
            env,
        )?;
        let get = |key: &'static str| -> String {
            c.get_string(&key.replace('/', ".")).unwrap_or_default()
        };
        let opt = |key: &'static str| -> Option<String> {
            let v = get(key);
            (!v.trim().is_empty()).then(|| v.trim().to_string())
        };
        let s = GatewaySettings {
            verbose: boolean("gateway/verbose", &get("gateway/verbose"))?,
            listen: required("gateway/http/listen", get("gateway/http/listen"))?,
            max_body: bytes("gateway/http/max_body", &get("gateway/http/max_body"))?,
            token: crate::config::http_token(
                "gateway/http/token",
                &get("gateway/http/token"),
                "gateway/http/token_file",
                &get("gateway/http/token_file"),
            )?,
            endpoint: crate::config::endpoint_list(
                "gateway/broker/endpoint",
                &get("gateway/broker/endpoint"),
            )?
            .join(","),
            balance: get("gateway/broker/balance").parse().map_err(|_| {
                bad(
                    "gateway/broker/balance",
                    &get("gateway/broker/balance"),
                    "priority or rr",
                )
            })?,
            address: opt("gateway/broker/address"),
            broker_timeout: duration("gateway/broker/timeout", &get("gateway/broker/timeout"))?,
            jetstream: boolean("gateway/broker/jetstream", &get("gateway/broker/jetstream"))?,
            request_timeout: duration("gateway/request/timeout", &get("gateway/request/timeout"))?,
            max_timeout: duration(
                "gateway/request/max_timeout",
                &get("gateway/request/max_timeout"),
            )?,
            max_waiting: positive(
                "gateway/request/max_waiting",
                &get("gateway/request/max_waiting"),
            )?,
            plain: opt("gateway/auth/plain/username")
                .map(|u| (u, get("gateway/auth/plain/password"))),
            curve: match (
                opt("gateway/auth/curve/certificate"),
                opt("gateway/auth/curve/server"),
            ) {
                (None, None) => None,
                (Some(cert), Some(server)) => Some(
                    CurveClientKeys::load(Path::new(&cert), Path::new(&server))
                        .map_err(|e| ConfigError::Syntax(format!("gateway/auth/curve: {e}")))?,
                ),
                (cert, _) => {
                    return Err(bad(
                        if cert.is_none() {
                            "gateway/auth/curve/certificate"
                        } else {
                            "gateway/auth/curve/server"
                        },
                        "",
                        "set: CURVE needs both our secret certificate and the broker's public one",
                    ))
                }
            },
        };
        if s.curve.is_some() && s.plain.is_some() {
            return Err(bad(
                "gateway/auth/plain/username",
                &get("gateway/auth/plain/username"),
                "empty when CURVE is set (one security mechanism per connection)",
            ));
        }
        if s.address.as_ref().is_some_and(|a| a.len() > 255) {
            return Err(ConfigError::Value {
                key: "gateway/broker/address",
                value: get("gateway/broker/address"),
                expected: "at most 255 bytes",
            });
        }
        Ok(s)
    }

    /// The options to start a gateway with.
    pub fn options(&self) -> GatewayOptions {
        let mut o = GatewayOptions::new(self.endpoint.clone(), self.listen.clone());
        o.balance = self.balance;
        if let Some(a) = &self.address {
            o.address = a.clone();
        }
        o.broker_timeout = self.broker_timeout;
        o.plain = self.plain.as_ref().map(|(u, p)| Credentials {
            username: u.clone(),
            password: p.clone(),
        });
        o.curve = self.curve.clone();
        o.max_body = self.max_body;
        o.token = self.token.clone();
        o.default_timeout = self.request_timeout.min(self.max_timeout);
        o.max_timeout = self.max_timeout;
        o.max_waiting = self.max_waiting;
        o.verbose = self.verbose;
        o.jetstream = self.jetstream;
        o
    }
}

/// A value that is not what `key` must be.
fn bad(key: &'static str, v: &str, expected: &'static str) -> ConfigError {
    ConfigError::Value {
        key,
        value: v.into(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn the_shipped_file_is_the_defaults() {
        assert_eq!(
            GatewaySettings::from_sources(DEFAULT_CONFIG, none()).unwrap(),
            GatewaySettings::default()
        );
        assert_eq!(
            GatewaySettings::from_sources("", none()).unwrap(),
            GatewaySettings::default()
        );
        let o = GatewaySettings::default().options();
        let d = GatewayOptions::new("tcp://127.0.0.1:9999", "127.0.0.1:8080");
        assert_eq!(
            (
                o.default_timeout,
                o.max_timeout,
                o.max_waiting,
                o.max_body,
                o.broker_timeout
            ),
            (
                d.default_timeout,
                d.max_timeout,
                d.max_waiting,
                d.max_body,
                d.broker_timeout
            )
        );
    }

    #[test]
    fn file_then_environment() {
        let text = "gateway\n    http\n        listen = \"0.0.0.0:9000\"\n    request\n        timeout = \"250ms\"\n        max_waiting = \"8\"\n    auth\n        plain\n            username = \"gw\"\n            password = \"pw\"\n";
        let env = vec![
            (
                "ALASKA_GATEWAY__REQUEST__MAX_WAITING".to_string(),
                "16".to_string(),
            ),
            (
                "ALASKA_GATEWAY__BROKER__ADDRESS".to_string(),
                "gw-1".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let s = GatewaySettings::from_sources(text, env).unwrap();
        assert_eq!(s.listen, "0.0.0.0:9000");
        assert_eq!(s.request_timeout, Duration::from_millis(250));
        assert_eq!(s.max_waiting, 16);
        assert_eq!(s.address.as_deref(), Some("gw-1"));
        assert_eq!(s.plain, Some(("gw".into(), "pw".into())));
        let o = s.options();
        assert_eq!(o.address, "gw-1");
        assert_eq!(o.plain.unwrap().username, "gw");
    }

    #[test]
    fn an_endpoint_list_and_its_balance() {
        let text = "gateway\n    broker\n        endpoint = \" tcp://10.0.0.1:9999 , tcp://10.0.0.2:9999\"\n        balance = \"rr\"\n";
        let s = GatewaySettings::from_sources(text, none()).unwrap();
        assert_eq!(s.endpoint, "tcp://10.0.0.1:9999,tcp://10.0.0.2:9999");
        assert_eq!(s.balance, crate::failover::Balance::RoundRobin);
        let o = s.options();
        assert_eq!(o.balance, crate::failover::Balance::RoundRobin);
        assert_eq!(o.endpoint, "tcp://10.0.0.1:9999,tcp://10.0.0.2:9999");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("gateway\n    verbose = \"maybe\"\n", "gateway/verbose"),
            (
                "gateway\n    http\n        listen = \"\"\n",
                "gateway/http/listen",
            ),
            (
                "gateway\n    http\n        max_body = \"0\"\n",
                "gateway/http/max_body",
            ),
            (
                "gateway\n    request\n        timeout = \"0\"\n",
                "gateway/request/timeout",
            ),
            (
                "gateway\n    request\n        max_timeout = \"soon\"\n",
                "gateway/request/max_timeout",
            ),
            (
                "gateway\n    request\n        max_waiting = \"0\"\n",
                "gateway/request/max_waiting",
            ),
            (
                "gateway\n    broker\n        timeout = \"-1\"\n",
                "gateway/broker/timeout",
            ),
            (
                "gateway\n    broker\n        endpoint = \"tcp://a:1,,tcp://b:1\"\n",
                "gateway/broker/endpoint",
            ),
            (
                "gateway\n    broker\n        balance = \"random\"\n",
                "gateway/broker/balance",
            ),
        ] {
            let e = GatewaySettings::from_sources(text, none()).unwrap_err();
            assert!(e.to_string().starts_with(key), "{e}");
        }
        let long = format!(
            "gateway\n    broker\n        address = \"{}\"\n",
            "a".repeat(256)
        );
        assert!(GatewaySettings::from_sources(&long, none()).is_err());
    }
}
