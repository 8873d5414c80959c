//! Configuration: the ZPL reader ([`zpl`]) and the worker's typed
//! [`Settings`].
//!
//! Settings are layered through the `config` crate: built-in defaults, then
//! the ZPL file (`alaska.cfg`, the original's keys), then environment
//! variables (`ALASKA_WORKER__POOL__SIZE=8` overrides `worker/pool/size`).
//! Values are strings in ZPL; each is converted here, and a bad one is an
//! error naming its key. The shipped `alaska.cfg` is the default file: it
//! is what a missing config file is replaced with, and a test checks that it
//! parses to the defaults.

pub mod defaults;
pub mod runners;
pub mod strict;
pub mod zpl;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default configuration file, as shipped.
pub const DEFAULT_CONFIG: &str = include_str!("../../alaska.cfg");

/// Environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "ALASKA";

/// When to run the embedded broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedded {
    /// Start one if nothing is bound on the endpoint yet.
    Auto,
    /// Always start one (fail if the endpoint is taken).
    Always,
    /// Never: connect to an external broker.
    Never,
}

/// The worker's settings, every one with its default.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `worker/background`: run as a daemon.
    pub background: bool,
    /// `worker/workdir`: directory of the daemon.
    pub workdir: PathBuf,
    /// `worker/verbose`: log each request.
    pub verbose: bool,
    /// `worker/syslog`: log to syslog.
    pub syslog: bool,
    /// `worker/lockfile`: pid file to lock.
    pub lockfile: Option<PathBuf>,
    /// `worker/user`: user to switch to.
    pub user: Option<String>,
    /// `worker/group`: group to switch to.
    pub group: Option<String>,
    /// `worker/scripts/dir`.
    pub scripts_dir: PathBuf,
    /// `worker/pool/size`.
    pub pool_size: usize,
    /// `worker/pool/backlog`.
    pub pool_backlog: usize,
    /// `worker/pool/hold`: requests held beyond the backlog from a broker
    /// that pushes.
    pub pool_hold: usize,
    /// `worker/pool/hold_bytes`: their content bytes, at most.
    pub pool_hold_bytes: usize,
    /// `worker/broker/endpoint`: one or more brokers, comma-separated, in
    /// order. The worker serves on every one.
    pub endpoints: Vec<String>,
    /// `worker/broker/timeout`.
    pub broker_timeout: Duration,
    /// `worker/broker/embedded`.
    pub embedded: Embedded,
    /// `worker/broker/http/listen`: where the embedded broker serves its
    /// health, metrics and admin API (`None`: nowhere).
    pub broker_http_listen: Option<String>,
    /// `worker/service/address`.
    pub service: String,
    /// `worker/service/filter`.
    pub filter: String,
    /// `worker/errors/notify`.
    pub errors_notify: bool,
    /// `worker/errors/mailbox`.
    pub errors_mailbox: String,
    /// `worker/errors/reply`.
    pub errors_reply: bool,
    /// `worker/auth/plain/username` and `password`.
    pub plain: Option<(String, String)>,
    /// `worker/auth/curve/certificate` (our secret certificate file) and
    /// `worker/auth/curve/server` (the broker's public certificate file).
    pub curve: Option<(PathBuf, PathBuf)>,
    /// `worker/lua/timeout`.
    pub lua_timeout: Duration,
    /// `worker/lua/memory`, bytes.
    pub lua_memory: usize,
    /// `worker/lua/path`.
    pub lua_path: Vec<PathBuf>,
    /// `worker/lua/cpath` (`None`: no C modules).
    pub lua_cpath: Option<String>,
    /// `worker/lua/processes`.
    pub lua_processes: bool,
    /// `worker/lua/shared`, bytes.
    pub lua_shared: usize,
    /// `worker/lua/call/...` and `worker/lua/http/...`.
    pub reach: crate::worker::reach::ReachConfig,
    /// `worker/retry/attempts`.
    pub retry_attempts: u32,
    /// `worker/retry/backoff`.
    pub retry_backoff: Duration,
    /// `worker/retry/backoff_max`.
    pub retry_backoff_max: Duration,
    /// `worker/retry/errors`.
    pub retry_errors: bool,
    /// `worker/retry/pending`.
    pub retry_pending: usize,
    /// `worker/forward/hops`.
    pub forward_hops: u32,
    /// `worker/shutdown/timeout`.
    pub shutdown_timeout: Duration,
    /// `worker/runners/<name>/...`, in file order (none by default).
    pub runners: Vec<crate::worker::runners::RunnerConfig>,
    /// `worker/http/listen`: where health, metrics, status and maintenance
    /// are served (`None`: nowhere).
    pub http_listen: Option<String>,
    /// `worker/http/token` (or `token_file`): the bearer token of the
    /// worker's HTTP listener.
    pub http_token: Option<String>,
    /// `worker/broker/http/token` (or `token_file`): the embedded broker's.
    pub broker_http_token: Option<String>,
    /// `worker/nats/...`: credentials and TLS for `nats://` endpoints.
    pub nats: crate::worker::nats::NatsOptions,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            background: false,
            workdir: PathBuf::from("."),
            verbose: false,
            syslog: false,
            lockfile: None,
            user: None,
            group: None,
            scripts_dir: PathBuf::from("services"),
            pool_size: 4,
            pool_backlog: 64,
            pool_hold: 10_000,
            pool_hold_bytes: 64 << 20,
            endpoints: vec![crate::mlm::DEFAULT_ENDPOINT.into()],
            broker_timeout: Duration::from_millis(1000),
            embedded: Embedded::Auto,
            broker_http_listen: None,
            service: "default".into(),
            filter: ".*".into(),
            errors_notify: true,
            errors_mailbox: "awerr".into(),
            errors_reply: false,
            plain: None,
            curve: None,
            lua_timeout: Duration::from_secs(5),
            lua_memory: 64 << 20,
            lua_path: Vec::new(),
            lua_cpath: None,
            lua_processes: false,
            lua_shared: 4 << 20,
            reach: Default::default(),
            retry_attempts: 3,
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(60),
            retry_errors: false,
            retry_pending: 1000,
            forward_hops: 8,
            shutdown_timeout: Duration::from_secs(10),
            runners: Vec::new(),
            http_listen: None,
            http_token: None,
            broker_http_token: None,
            nats: Default::default(),
        }
    }
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `-c` does not exist (nothing is created then:
    /// a typo must not turn into a new default configuration).
    #[error("{0}: no such file (only a plain start without -c creates alaska.cfg)")]
    Missing(String),
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// An endpoint list that cannot be used.
    #[error("{key}: {value:?}: {source}")]
    Endpoints {
        /// The key, slash-separated.
        key: &'static str,
        /// The value found.
        value: String,
        /// What is wrong with the list.
        source: crate::failover::EndpointListError,
    },
    /// A key nobody reads: a typo, or a section of another binary.
    #[error("unknown key {key} ({place}){}", suggestion.as_ref().map(|s| format!("; did you mean {s}?")).unwrap_or_default())]
    Unknown {
        /// The key, slash-separated.
        key: String,
        /// Where it was: a file line or an environment variable.
        place: String,
        /// The nearest known key (or variable), when one is near.
        suggestion: Option<String>,
    },
    /// The file is not valid ZPL, or a source failed.
    #[error("{0}")]
    Syntax(String),
    /// A key has a value that is not what it must be.
    #[error("{key}: {value:?} is not {expected}")]
    Value {
        /// The key, slash-separated.
        key: &'static str,
        /// The value found.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A key's value is wrong in a way its own reader explains.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, slash-separated.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A runner's key (`worker/runners/<name>/<key>`) is wrong.
    #[error("{key}{at}: {message}")]
    Runner {
        /// The key, slash-separated.
        key: String,
        /// " (line N)" when the line is known, else empty.
        at: String,
        /// What is wrong.
        message: String,
    },
}

/// What loading found, besides the settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The settings.
    pub settings: Settings,
    /// The file was missing and has been written with the defaults.
    pub created: bool,
}

impl Settings {
    /// Loads `path` (writing the defaults there first if it is missing),
    /// then applies the process environment.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        Settings::load_with(path, true)
    }

    /// Loads `path`; a missing file is written with the defaults first
    /// when `create` (a plain start without `-c`, as the original did),
    /// else it is an error ([`ConfigError::Missing`]).
    pub fn load_with(path: &Path, create: bool) -> Result<Loaded, ConfigError> {
        let created = if path.exists() {
            false
        } else if create {
            write_defaults(path)?;
            true
        } else {
            return Err(ConfigError::Missing(path.display().to_string()));
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let settings = Settings::from_sources(&text, std::env::vars())
            .map_err(|e| ConfigError::Syntax(format!("{}: {e}", path.display())))?;
        Ok(Loaded { settings, created })
    }

    /// Parses ZPL text with environment overrides taken from `env`
    /// (name, value pairs; only `ALASKA_…` names count).
    pub fn from_sources(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let c = layered(
            defaults::WORKER_DEFAULTS,
            "worker",
            &["worker/runners/"],
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
        // Runners: order, lines and case from the file itself (see
        // `runners`), values layered.
        let runner_names: Vec<String> = c
            .get_table("worker.runners")
            .map(|t| t.into_keys().collect())
            .unwrap_or_default();
        let runners = runners::parse(text, |k| c.get_string(k).ok(), &runner_names)?;
        let user = opt("worker/auth/plain/username");
        let password = get("worker/auth/plain/password");
        let curve = match (
            opt("worker/auth/curve/certificate"),
            opt("worker/auth/curve/server"),
        ) {
            (None, None) => None,
            (Some(c), Some(s)) => Some((PathBuf::from(c), PathBuf::from(s))),
            (None, Some(_)) => {
                return Err(ConfigError::Value {
                    key: "worker/auth/curve/certificate",
                    value: String::new(),
                    expected: "set (our secret certificate) when worker/auth/curve/server is",
                });
            }
            (Some(_), None) => {
                return Err(ConfigError::Value {
                    key: "worker/auth/curve/server",
                    value: String::new(),
                    expected: "set (the broker's public certificate) when \
                               worker/auth/curve/certificate is",
                });
            }
        };
        if curve.is_some() && user.is_some() {
            return Err(ConfigError::Value {
                key: "worker/auth/plain/username",
                value: user.unwrap_or_default(),
                expected: "empty when CURVE is set (one security mechanism per connection)",
            });
        }

        let endpoints = endpoint_list("worker/broker/endpoint", &get("worker/broker/endpoint"))?;
        let embedded = match get("worker/broker/embedded").trim().to_lowercase().as_str() {
            "auto" | "" => Embedded::Auto,
            "1" | "true" | "yes" | "on" => Embedded::Always,
            "0" | "false" | "no" | "off" => Embedded::Never,
            _ => {
                return Err(ConfigError::Value {
                    key: "worker/broker/embedded",
                    value: get("worker/broker/embedded"),
                    expected: "auto, 1 or 0",
                })
            }
        };
        // The embedded broker binds one endpoint; with several brokers it
        // would be one of them, which is not what a list asks for.
        if endpoints.len() > 1 && embedded == Embedded::Always {
            return Err(ConfigError::Value {
                key: "worker/broker/embedded",
                value: get("worker/broker/embedded"),
                expected: "0 or auto when worker/broker/endpoint lists several brokers (the embedded broker serves one endpoint)",
            });
        }
        Ok(Settings {
            background: boolean("worker/background", &get("worker/background"))?,
            workdir: PathBuf::from(get("worker/workdir")),
            verbose: boolean("worker/verbose", &get("worker/verbose"))?,
            syslog: boolean("worker/syslog", &get("worker/syslog"))?,
            lockfile: opt("worker/lockfile").map(PathBuf::from),
            user: opt("worker/user"),
            group: opt("worker/group"),
            scripts_dir: PathBuf::from(get("worker/scripts/dir")),
            pool_size: positive("worker/pool/size", &get("worker/pool/size"))?,
            pool_backlog: number("worker/pool/backlog", &get("worker/pool/backlog"))? as usize,
            pool_hold: number("worker/pool/hold", &get("worker/pool/hold"))? as usize,
            pool_hold_bytes: bytes("worker/pool/hold_bytes", &get("worker/pool/hold_bytes"))?,
            endpoints,
            broker_timeout: nonzero_duration(
                "worker/broker/timeout",
                &get("worker/broker/timeout"),
            )?,
            embedded,
            broker_http_listen: listen(
                "worker/broker/http/listen",
                &get("worker/broker/http/listen"),
            )?,
            service: required("worker/service/address", get("worker/service/address"))?,
            filter: pattern("worker/service/filter", get("worker/service/filter"))?,
            errors_notify: boolean("worker/errors/notify", &get("worker/errors/notify"))?,
            errors_mailbox: get("worker/errors/mailbox"),
            errors_reply: boolean("worker/errors/reply", &get("worker/errors/reply"))?,
            plain: user.map(|u| (u, password)),
            curve,
            lua_timeout: nonzero_duration("worker/lua/timeout", &get("worker/lua/timeout"))?,
            lua_memory: bytes("worker/lua/memory", &get("worker/lua/memory"))?,
            lua_path: get("worker/lua/path")
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect(),
            lua_cpath: opt("worker/lua/cpath"),
            lua_processes: boolean("worker/lua/processes", &get("worker/lua/processes"))?,
            lua_shared: bytes("worker/lua/shared", &get("worker/lua/shared"))?,
            reach: reach_config(&get)?,
            retry_attempts: positive("worker/retry/attempts", &get("worker/retry/attempts"))?
                .min(u32::MAX as usize) as u32,
            retry_backoff: duration("worker/retry/backoff", &get("worker/retry/backoff"))?,
            retry_backoff_max: duration(
                "worker/retry/backoff_max",
                &get("worker/retry/backoff_max"),
            )?,
            retry_errors: boolean("worker/retry/errors", &get("worker/retry/errors"))?,
            retry_pending: number("worker/retry/pending", &get("worker/retry/pending"))? as usize,
            forward_hops: number("worker/forward/hops", &get("worker/forward/hops"))?
                .min(u32::MAX as u64) as u32,
            shutdown_timeout: duration("worker/shutdown/timeout", &get("worker/shutdown/timeout"))?,
            runners,
            http_listen: listen("worker/http/listen", &get("worker/http/listen"))?,
            http_token: http_token(
                "worker/http/token",
                &get("worker/http/token"),
                "worker/http/token_file",
                &get("worker/http/token_file"),
            )?,
            broker_http_token: http_token(
                "worker/broker/http/token",
                &get("worker/broker/http/token"),
                "worker/broker/http/token_file",
                &get("worker/broker/http/token_file"),
            )?,
            nats: nats_options(
                &opt,
                &get,
                &required("worker/service/address", get("worker/service/address"))?,
            )?,
        })
    }
}

/// `worker/nats/...`. Certificate and key go together; so do user and
/// password.
fn nats_options(
    opt: &impl Fn(&'static str) -> Option<String>,
    get: &impl Fn(&'static str) -> String,
    service: &str,
) -> Result<crate::worker::nats::NatsOptions, ConfigError> {
    let jetstream = match opt("worker/nats/jetstream/stream") {
        None => None,
        Some(stream) => Some(crate::worker::nats::JetStreamOptions {
            stream,
            consumer: opt("worker/nats/jetstream/consumer")
                .unwrap_or_else(|| crate::worker::nats::micro_name(service)),
            ack_wait: nonzero_duration(
                "worker/nats/jetstream/ack_wait",
                &get("worker/nats/jetstream/ack_wait"),
            )?,
            max_deliver: positive(
                "worker/nats/jetstream/max_deliver",
                &get("worker/nats/jetstream/max_deliver"),
            )?
            .min(i64::MAX as usize) as i64,
            max_ack_pending: 0,
        }),
    };
    let path = |k| opt(k).map(PathBuf::from);
    let tls_cert = match (path("worker/nats/tls/cert"), path("worker/nats/tls/key")) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (c, _) => {
            return Err(ConfigError::Value {
                key: if c.is_some() {
                    "worker/nats/tls/key"
                } else {
                    "worker/nats/tls/cert"
                },
                value: String::new(),
                expected: "set together with worker/nats/tls/cert and worker/nats/tls/key",
            })
        }
    };
    Ok(crate::worker::nats::NatsOptions {
        user: opt("worker/nats/user").map(|u| (u, get("worker/nats/password"))),
        token: opt("worker/nats/token"),
        creds: path("worker/nats/creds"),
        nkey: path("worker/nats/nkey"),
        tls_ca: path("worker/nats/tls/ca"),
        tls_cert,
        tls_required: boolean("worker/nats/tls/required", &get("worker/nats/tls/required"))?,
        jetstream,
    })
}

/// `worker/lua/call/...` and `worker/lua/http/...`: the CA file is read
/// here, so a bad path stops the start with the key named.
fn reach_config(
    get: &dyn Fn(&'static str) -> String,
) -> Result<crate::worker::reach::ReachConfig, ConfigError> {
    use crate::worker::reach::{HostPattern, ReachConfig};
    let allow = get("worker/lua/http/allow");
    let http_allow = HostPattern::parse_list(&allow).map_err(|why| ConfigError::Invalid {
        key: "worker/lua/http/allow",
        message: format!(
            "{why} (host patterns are '*', 'host', '*.domain', each with an optional :port)"
        ),
    })?;
    let ca = get("worker/lua/http/ca");
    let http_ca = if ca.is_empty() {
        None
    } else {
        Some(std::fs::read(&ca).map_err(|e| ConfigError::Invalid {
            key: "worker/lua/http/ca",
            message: format!("cannot read {ca}: {e}"),
        })?)
    };
    Ok(ReachConfig {
        call_timeout: nonzero_duration("worker/lua/call/timeout", &get("worker/lua/call/timeout"))?,
        call_max_timeout: nonzero_duration(
            "worker/lua/call/max_timeout",
            &get("worker/lua/call/max_timeout"),
        )?,
        http_allow,
        http_max_body: bytes("worker/lua/http/max_body", &get("worker/lua/http/max_body"))?,
        http_timeout: nonzero_duration("worker/lua/http/timeout", &get("worker/lua/http/timeout"))?,
        http_ca,
        http_max_idle: number("worker/lua/http/max_idle", &get("worker/lua/http/max_idle"))?
            as usize,
    })
}

/// The defaults in code (`defaults`: every key this binary knows, its
/// section `root`), then `text` (ZPL), then the environment overrides from
/// `env` (only `ALASKA_…` names count): the layering the worker's and the
/// gateway's configuration use. Unknown keys in `text` or `env` are errors
/// ([`strict::check`]); keys under an `open` prefix are checked by their
/// own reader.
pub(crate) fn layered(
    defaults: &[(&str, &str)],
    root: &str,
    open: &[&str],
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<config::Config, ConfigError> {
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}_")))
        .collect();
    strict::check(defaults, open, root, text, &env)?;
    // Only this binary's variables go to its configuration.
    let vars: config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| strict::env_key(k).is_some_and(|key| key.starts_with(&format!("{root}/"))))
        .collect();
    let mut builder = config::Config::builder();
    for (k, v) in defaults {
        builder = builder
            .set_default(k.replace('/', "."), *v)
            .map_err(|e| ConfigError::Syntax(e.to_string()))?;
    }
    builder
        .add_source(config::File::from_str(text, zpl::Zpl))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .source(Some(vars)),
        )
        .build()
        .map_err(|e| ConfigError::Syntax(e.to_string()))
}

/// Writes the default configuration to `path`.
pub fn write_defaults(path: &Path) -> Result<(), ConfigError> {
    std::fs::write(path, DEFAULT_CONFIG).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })
}

pub(crate) fn boolean(key: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::Value {
            key,
            value: v.into(),
            expected: "1 or 0",
        }),
    }
}

pub(crate) fn number(key: &'static str, v: &str) -> Result<u64, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError::Value {
        key,
        value: v.into(),
        expected: "a whole number",
    })
}

pub(crate) fn positive(key: &'static str, v: &str) -> Result<usize, ConfigError> {
    match number(key, v)? {
        0 => Err(ConfigError::Value {
            key,
            value: v.into(),
            expected: "a number of at least 1",
        }),
        n => Ok(n as usize),
    }
}

/// `tcp://a:9999, tcp://b:9999`: see [`crate::failover::parse_endpoints`].
pub fn endpoint_list(key: &'static str, v: &str) -> Result<Vec<String>, ConfigError> {
    crate::failover::parse_endpoints(v).map_err(|source| ConfigError::Endpoints {
        key,
        value: v.into(),
        source,
    })
}

pub(crate) fn required(key: &'static str, v: String) -> Result<String, ConfigError> {
    if v.trim().is_empty() {
        return Err(ConfigError::Value {
            key,
            value: v,
            expected: "set (it may not be empty)",
        });
    }
    Ok(v.trim().to_string())
}

/// `host:port` (a name, an IPv4 address or a bracketed IPv6 one, and a
/// port number), or nothing.
fn listen(key: &'static str, v: &str) -> Result<Option<String>, ConfigError> {
    let t = v.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let ok = t
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !ok {
        return Err(ConfigError::Value {
            key,
            value: v.into(),
            expected: "host:port (e.g. 127.0.0.1:9191), or empty",
        });
    }
    Ok(Some(t.to_string()))
}

/// The bearer token of an HTTP listener: `token` as given, or read from
/// `token_file` (trimmed), or none; both set is an error, as is an empty or
/// unreadable file.
pub(crate) fn http_token(
    token_key: &'static str,
    token: &str,
    file_key: &'static str,
    file: &str,
) -> Result<Option<String>, ConfigError> {
    let (token, file) = (token.trim(), file.trim());
    match (token.is_empty(), file.is_empty()) {
        (true, true) => Ok(None),
        (false, true) => Ok(Some(token.to_string())),
        (false, false) => Err(ConfigError::Value {
            key: token_key,
            value: token.into(),
            expected: "empty when the token file is set (one or the other)",
        }),
        (true, false) => match std::fs::read_to_string(file) {
            Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
            _ => Err(ConfigError::Value {
                key: file_key,
                value: file.into(),
                expected: "a readable file holding the token",
            }),
        },
    }
}

/// A subject pattern the broker will accept: a regular expression that
/// compiles (the project's broker uses the same `regex` rules; the real
/// Malamute's zrex accepts less, never more). A worker whose offer the
/// broker refuses serves nothing, so this is an error at start.
pub(crate) fn pattern(key: &'static str, v: String) -> Result<String, ConfigError> {
    match regex::Regex::new(&v) {
        Ok(_) => Ok(v),
        Err(_) => Err(ConfigError::Value {
            key,
            value: v,
            expected: "a regular expression that compiles (e.g. \".*\" or \"^orders\\.\")",
        }),
    }
}

/// `1500` (ms), `1500ms`, `2s`, `1.5s`, `1m`, `1h`.
pub(crate) fn duration(key: &'static str, v: &str) -> Result<Duration, ConfigError> {
    let t = v.trim();
    let bad = || ConfigError::Value {
        key,
        value: v.into(),
        expected: "a duration up to one year (milliseconds, or a number with ms, s, m or h)",
    };
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 0.001)
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    // `try_` because `from_secs_f64` panics on values too large to hold;
    // beyond a year is refused too: every deadline computed from it must
    // fit (see `crate::time`), and no wait in this project is that long.
    match Duration::try_from_secs_f64(n * scale) {
        Ok(d) if d <= crate::time::MAX_DURATION => Ok(d),
        _ => Err(bad()),
    }
}

/// A duration as the configuration reads it (`1500` ms, `250ms`, `2s`,
/// `1.5s`, `5m`, `1h`; at most a year), for the tools' flags and URLs;
/// `None` for anything else.
pub fn parse_duration(v: &str) -> Option<Duration> {
    duration("duration", v).ok()
}

/// A duration above zero (see [`duration`]).
pub(crate) fn nonzero_duration(key: &'static str, v: &str) -> Result<Duration, ConfigError> {
    match duration(key, v)? {
        d if d.is_zero() => Err(ConfigError::Value {
            key,
            value: v.into(),
            expected: "a duration above 0 (milliseconds, or a number with ms, s or m)",
        }),
        d => Ok(d),
    }
}

/// `65536`, `64K`, `64M`, `1G`.
pub(crate) fn bytes(key: &'static str, v: &str) -> Result<usize, ConfigError> {
    let upper = v.trim().to_uppercase();
    let bad = || ConfigError::Value {
        key,
        value: v.into(),
        expected: "a size (bytes, or a number with K, M or G)",
    };
    // "64M", "64MB" and "100B" all read as people mean them.
    let t = upper.strip_suffix('B').unwrap_or(&upper);
    let (num, scale) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1usize << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: usize = num.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    n.checked_mul(scale).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample configuration the original shipped, retyped here.
    const SEED_SAMPLE: &str = "worker\n    background = \"0\"\n    workdir = \".\"\n    verbose = \"0\"\n    syslog = \"0\"\n    scripts\n        dir = \"../services\"\n    pool\n        size = \"4\"\n    broker\n        endpoint = \"tcp://127.0.0.1:9999\"\n        timeout = \"1000\"\n    service\n        address = \"default\"\n        filter = \".*\"\n    errors\n        notify = \"1\"\n        mailbox = \"awerr\"\n";

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn the_shipped_file_is_the_defaults() {
        assert_eq!(
            Settings::from_sources(DEFAULT_CONFIG, no_env()).unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn the_original_sample_works_as_it_is() {
        let s = Settings::from_sources(SEED_SAMPLE, no_env()).unwrap();
        assert_eq!(s.pool_size, 4);
        assert_eq!(s.endpoints, ["tcp://127.0.0.1:9999"]);
        assert_eq!(s.broker_timeout, Duration::from_millis(1000));
        assert_eq!((s.service.as_str(), s.filter.as_str()), ("default", ".*"));
        assert!(s.errors_notify);
        assert_eq!(s.errors_mailbox, "awerr");
        assert_eq!(s.scripts_dir, PathBuf::from("../services"));
        assert!(!s.background && !s.verbose && !s.syslog);
        // Keys the original did not have keep their defaults.
        assert_eq!(s.lua_timeout, Duration::from_secs(5));
        assert_eq!(s.lua_memory, 64 << 20);
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = vec![
            ("ALASKA_WORKER__POOL__SIZE".to_string(), "8".to_string()),
            (
                "ALASKA_WORKER__LUA__TIMEOUT".to_string(),
                "250ms".to_string(),
            ),
            ("OTHER".to_string(), "ignored".to_string()),
        ];
        let s = Settings::from_sources(SEED_SAMPLE, env).unwrap();
        assert_eq!(s.pool_size, 8);
        assert_eq!(s.lua_timeout, Duration::from_millis(250));
    }

    #[test]
    fn units_and_bad_values() {
        assert_eq!(duration("k", "1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("k", "2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("k", "750").unwrap(), Duration::from_millis(750));
        assert_eq!(bytes("k", "64K").unwrap(), 65536);
        assert_eq!(bytes("k", "1G").unwrap(), 1 << 30);
        assert_eq!(bytes("k", "12345").unwrap(), 12345);
        assert_eq!(bytes("k", "100B").unwrap(), 100);
        assert_eq!(bytes("k", "2mb").unwrap(), 2 << 20);
        assert!(bytes("k", "B").is_err());
        assert!(bytes("k", "0").is_err());
        assert!(
            duration("k", "1e300s").is_err(),
            "too large: an error, not a panic"
        );
        assert!(duration("k", "-1s").is_err());
        assert!(duration("k", "NaN").is_err());
        for (text, key) in [
            (
                "worker\n    pool\n        size = \"0\"\n",
                "worker/pool/size",
            ),
            ("worker\n    verbose = \"maybe\"\n", "worker/verbose"),
            (
                "worker\n    lua\n        timeout = \"soon\"\n",
                "worker/lua/timeout",
            ),
            (
                "worker\n    broker\n        embedded = \"sometimes\"\n",
                "worker/broker/embedded",
            ),
            (
                "worker\n    http\n        listen = \"9191\"\n",
                "worker/http/listen",
            ),
        ] {
            let e = Settings::from_sources(text, no_env()).unwrap_err();
            assert!(e.to_string().starts_with(key), "{e}");
        }
        assert!(Settings::from_sources("worker\n  bad indent = 1\n", no_env()).is_err());
    }

    #[test]
    fn http_listen_is_off_by_default_and_a_host_and_port_when_set() {
        assert_eq!(Settings::default().http_listen, None);
        for (v, want) in [
            ("127.0.0.1:9191", Some("127.0.0.1:9191")),
            ("localhost:0", Some("localhost:0")),
            ("[::1]:9191", Some("[::1]:9191")),
            ("", None),
        ] {
            let text = format!("worker\n    http\n        listen = \"{v}\"\n");
            let s = Settings::from_sources(&text, no_env()).unwrap();
            assert_eq!(s.http_listen.as_deref(), want, "{v:?}");
        }
        for bad in [":9191", "host:", "host:99999", "host"] {
            let text = format!("worker\n    http\n        listen = \"{bad}\"\n");
            assert!(Settings::from_sources(&text, no_env()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_embedded_brokers_http_listen_is_its_own_key() {
        assert_eq!(Settings::default().broker_http_listen, None);
        let text = "worker\n    broker\n        http\n            listen = \"127.0.0.1:9292\"\n";
        let s = Settings::from_sources(text, no_env()).unwrap();
        assert_eq!(s.broker_http_listen.as_deref(), Some("127.0.0.1:9292"));
        assert_eq!(s.http_listen, None, "not the worker's");
        let text = "worker\n    broker\n        http\n            listen = \"9292\"\n";
        let e = Settings::from_sources(text, no_env()).unwrap_err();
        assert!(
            e.to_string().starts_with("worker/broker/http/listen"),
            "{e}"
        );
    }

    #[test]
    fn nats_keys_are_read_and_checked() {
        let text = "worker\n    broker\n        endpoint = \"nats://a:4222,nats://b:4222\"\n    service\n        address = \"orders.eu\"\n    nats\n        user = \"u\"\n        password = \"p\"\n        jetstream\n            stream = \"ORDERS\"\n            ack_wait = \"2s\"\n";
        let s = Settings::from_sources(text, no_env()).unwrap();
        assert_eq!(s.endpoints, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(s.nats.user, Some(("u".into(), "p".into())));
        let j = s.nats.jetstream.expect("JetStream configured");
        assert_eq!(j.stream, "ORDERS");
        // The consumer defaults to the service address as a NATS name.
        assert_eq!(j.consumer, "orders_eu");
        assert_eq!(j.ack_wait, std::time::Duration::from_secs(2));
        assert_eq!(j.max_deliver, 5);
        let s = Settings::from_sources("worker\n", no_env()).unwrap();
        assert_eq!(s.nats, crate::worker::nats::NatsOptions::default());
        let text = "worker\n    nats\n        tls\n            cert = \"c.pem\"\n";
        let e = Settings::from_sources(text, no_env())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("worker/nats/tls/key"), "{e}");
        let text = "worker\n    nats\n        jetstream\n            stream = \"S\"\n            max_deliver = \"0\"\n";
        let e = Settings::from_sources(text, no_env())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("worker/nats/jetstream/max_deliver"), "{e}");
    }

    #[test]
    fn the_endpoint_key_takes_a_list_in_order() {
        let text = "worker\n    broker\n        endpoint = \"tcp://10.0.0.2:9999, tcp://10.0.0.1:9999\"\n        embedded = \"0\"\n";
        let s = Settings::from_sources(text, no_env()).unwrap();
        assert_eq!(s.endpoints, ["tcp://10.0.0.2:9999", "tcp://10.0.0.1:9999"]);
        let env = vec![(
            "ALASKA_WORKER__BROKER__ENDPOINT".to_string(),
            "tcp://a:1,tcp://b:1,tcp://c:1".to_string(),
        )];
        let s = Settings::from_sources(text, env).unwrap();
        assert_eq!(
            s.endpoints.len(),
            3,
            "the environment overrides, as a list too"
        );
        for (list, says) in [
            ("tcp://a:1,,tcp://b:1", "endpoint 2 of the list is empty"),
            ("tcp://a:1,tcp://a:1", "listed twice"),
            ("a:1", "is not an endpoint"),
            ("", "no endpoint given"),
        ] {
            let text = format!("worker\n    broker\n        endpoint = \"{list}\"\n");
            let e = Settings::from_sources(&text, no_env()).unwrap_err();
            let e = e.to_string();
            assert!(e.starts_with("worker/broker/endpoint: "), "{e}");
            assert!(e.contains(says), "{list:?}: {e}");
        }
        // The embedded broker serves one endpoint: asked for with a list,
        // it is a configuration error naming its key.
        let text = "worker\n    broker\n        endpoint = \"tcp://a:1,tcp://b:1\"\n        embedded = \"1\"\n";
        let e = Settings::from_sources(text, no_env()).unwrap_err();
        assert!(e.to_string().starts_with("worker/broker/embedded"), "{e}");
    }
}
