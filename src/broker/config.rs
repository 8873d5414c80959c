//! `alaska-broker` configuration: a `malamute.cfg`-style ZPL file with the
//! reference broker's keys for what matters, plus the project's own limits.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `mlm_server/bind/endpoint` | where to bind | `tcp://127.0.0.1:9999` |
//! | `server/timeout` | client expiry, ms | `10000` |
//! | `server/verbose` | log every command (`0`/`1`) | `0` |
//! | `mlm_server/security/mechanism` | `null`, `plain` or `curve` | `null` |
//! | `server/auth/plain` | passwords file, `user=password` lines (PLAIN) | – |
//! | `mlm_server/security/curve/certificate` | the broker's secret certificate file (`NAME_secret`, from `alaska-broker --keygen NAME`) (CURVE) | – |
//! | `mlm_server/security/curve/clients` | allowed client keys: a directory of public certificates, one certificate, or a file of `NAME = "KEY"` lines (CURVE) | – |
//! | `mlm_server/security/acl` | authorization rules (see [`super::acl`]); none: everything allowed | – |
//! | `mlm_server/service/queue/size-limit` | content bytes per service queue (as the reference), or `max` | `268435456` |
//! | `mlm_server/service/queue/count-limit` | requests per service queue | `100000` |
//! | `mlm_server/mailbox/size-limit` | content bytes per mailbox (as the reference), or `max` | `67108864` |
//! | `mlm_server/mailbox/count-limit` | mails per mailbox | `10000` |
//! | `mlm_server/mailbox/expiry` | reclaim a mailbox whose address is away this long, ms | `3600000` |
//! | `mlm_server/storage/dir` | keep mail and requests on disk there (relative: to the file's directory); empty: in memory | empty |
//! | `mlm_server/storage/sync` | `always` (fsync before answering) or `batch` (fsync at most every 5 ms) | `batch` |
//! | `mlm_server/http/listen` | `host:port` for `/health`, `/metrics`, the admin API and the console; empty: not served | empty |
//! | `mlm_server/http/token`, `…/token_file` | the bearer token every HTTP request but `/health` and the console page needs | none |
//! | `mlm_server/http/open_reads` | with a token, let reads (GET) through without it: a read-only console for everyone, changes for token holders (`0`/`1`) | `0` |
//! | `mlm_server/schedule/<name>/every` | fire every so long (`250ms`, `30s`, `5m`, `1h`), at the multiples of it since the epoch | – |
//! | `mlm_server/schedule/<name>/cron` | or fire on a cron expression (5 fields, or 6 with seconds first) | – |
//! | `mlm_server/schedule/<name>/timezone` | the cron expression's time zone (IANA name) | `UTC` |
//! | `mlm_server/schedule/<name>/address`, `…/subject`, `…/content` | the service request each fire sends | content empty |
//!
//! An unknown key is a warning; a bad value is an error naming the key.
//! Relative file names are taken from the configuration file's directory.
//! Neither Malamute nor its configuration has CURVE or an ACL: those keys
//! follow its `mlm_server/security/…` naming.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::core::ScheduleSpec;
use super::{Acl, BrokerConfig, BrokerError, CurveServer, StorageConfig, SyncMode};
use crate::config::zpl;
use crate::curve::{AllowedKeys, KeyPair};

/// Keys of the reference broker that this broker accepts and ignores.
const IGNORED: &[&str] = &[
    "server/background",
    "server/workdir",
    "server/animate",
    "mlm_server/echo",
    "mlm_server/bind",
    "server/auth/verbose",
    "mlm_server/service/queue/size-warn",
    "mlm_server/mailbox/size-warn",
];

/// Every key the broker reads (the reference's keys it ignores are in
/// `IGNORED`): anything else, in the file or the environment, is an error
/// naming it and the nearest of these.
pub const BROKER_KEYS: &[&str] = &[
    "mlm_server/bind/endpoint",
    "server/timeout",
    "server/verbose",
    "mlm_server/security/mechanism",
    "server/auth/plain",
    "mlm_server/security/curve/certificate",
    "mlm_server/security/curve/clients",
    "mlm_server/security/acl",
    "mlm_server/service/queue/size-limit",
    "mlm_server/service/queue/count-limit",
    "mlm_server/mailbox/size-limit",
    "mlm_server/mailbox/count-limit",
    "mlm_server/mailbox/expiry",
    "mlm_server/service/max_deliveries",
    "mlm_server/service/dead_letters",
    "mlm_server/storage/dir",
    "mlm_server/http/token",
    "mlm_server/http/token_file",
    "mlm_server/http/open_reads",
    "mlm_server/http/listen",
    "mlm_server/storage/sync",
];

/// Reads a config file, then the `ALASKA_SERVER__…` and
/// `ALASKA_MLM_SERVER__…` environment overrides. Returns the settings and
/// the warnings to log.
pub fn load_config(path: &Path) -> Result<(BrokerConfig, Vec<String>), BrokerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BrokerError::Config(format!("{}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_config_with_env(&text, base, std::env::vars()).map_err(|e| match e {
        BrokerError::Config(m) => BrokerError::Config(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Parses config text; `base` resolves a relative passwords file.
pub fn parse_config(text: &str, base: &Path) -> Result<(BrokerConfig, Vec<String>), BrokerError> {
    parse_config_with_env(text, base, std::iter::empty())
}

/// Parses config text, then the broker's variables among `env`, which
/// override the file: `ALASKA_` and the key in capitals with `__` for `/`,
/// e.g. `ALASKA_SERVER__TIMEOUT`.
pub fn parse_config_with_env(
    text: &str,
    base: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(BrokerConfig, Vec<String>), BrokerError> {
    let mut entries = zpl::parse(text).map_err(|e| BrokerError::Config(e.to_string()))?;
    let mut from_env = std::collections::HashMap::new();
    for (name, value) in env {
        let Some(key) = crate::config::strict::env_key(&name) else {
            continue;
        };
        let top = key.split('/').next().unwrap_or("");
        if top != "server" && top != "mlm_server" && crate::config::strict::ROOTS.contains(&top) {
            continue;
        }
        from_env.insert(key.clone(), name.clone());
        entries.push(zpl::Entry {
            path: key,
            value,
            line: 0,
        });
    }
    let mut cfg = BrokerConfig::default();
    let mut warnings = Vec::new();
    let mut mechanism = "null".to_string();
    let mut passwords: Option<String> = None;
    let mut certificate: Option<String> = None;
    let mut clients: Option<String> = None;
    let mut storage_dir = String::new();
    let (mut http_token, mut http_token_file) = (String::new(), String::new());
    let mut sync = SyncMode::Batch;
    // Schedule name -> its keys, in the order the names first appear.
    let mut schedules: Vec<(String, ScheduleKeys)> = Vec::new();
    for e in &entries {
        let v = e.value.trim();
        let bad = |what: &str| {
            BrokerError::Config(format!("line {}: {}: {v:?} is not {what}", e.line, e.path))
        };
        let num = || v.parse::<u64>().map_err(|_| bad("a whole number"));
        // Milliseconds, at most a year (every deadline made from it must
        // fit: see `crate::time`).
        let ms = || {
            num().and_then(|n| {
                let d = Duration::from_millis(n);
                if d <= crate::time::MAX_DURATION {
                    Ok(d)
                } else {
                    Err(bad("a number of milliseconds up to one year"))
                }
            })
        };
        // The reference accepts "max" for its size limits.
        let limit = || {
            if v.eq_ignore_ascii_case("max") {
                Ok(usize::MAX)
            } else {
                v.parse::<usize>().map_err(|_| bad("a whole number or max"))
            }
        };
        match e.path.as_str() {
            "mlm_server/bind/endpoint" => cfg.endpoint = v.to_string(),
            "server/timeout" => cfg.client_timeout = ms()?.max(Duration::from_millis(1)),
            "server/verbose" => cfg.verbose = parse_bool(v).ok_or_else(|| bad("0 or 1"))?,
            "mlm_server/security/mechanism" => {
                mechanism = v.to_lowercase();
                if !["null", "plain", "curve"].contains(&mechanism.as_str()) {
                    return Err(bad("null, plain or curve"));
                }
            }
            "server/auth/plain" => passwords = Some(v.to_string()),
            "mlm_server/security/curve/certificate" => certificate = Some(v.to_string()),
            "mlm_server/security/curve/clients" => clients = Some(v.to_string()),
            "mlm_server/security/acl" => {
                let path = base.join(v);
                cfg.acl = Some(Acl::load(&path)?);
                cfg.acl_file = Some(path);
            }
            "mlm_server/service/queue/size-limit" => cfg.service_queue_limit.bytes = limit()?,
            "mlm_server/service/queue/count-limit" => cfg.service_queue_limit.messages = limit()?,
            "mlm_server/mailbox/size-limit" => cfg.mailbox_limit.bytes = limit()?,
            "mlm_server/mailbox/count-limit" => cfg.mailbox_limit.messages = limit()?,
            "mlm_server/mailbox/expiry" => cfg.mailbox_expiry = ms()?,
            "mlm_server/service/max_deliveries" => {
                cfg.max_deliveries = v
                    .parse::<u32>()
                    .map_err(|_| bad("a whole number (0: no limit)"))?
            }
            "mlm_server/service/dead_letters" => cfg.dead_letters = v.to_string(),
            "mlm_server/storage/dir" => storage_dir = v.to_string(),
            "mlm_server/http/token" => http_token = v.to_string(),
            "mlm_server/http/open_reads" => {
                cfg.http_open_reads = parse_bool(v).ok_or_else(|| bad("0 or 1"))?
            }
            "mlm_server/http/token_file" => {
                http_token_file = if v.is_empty() {
                    String::new()
                } else {
                    base.join(v).display().to_string()
                }
            }
            "mlm_server/http/listen" => {
                cfg.http_listen = match v {
                    "" => None,
                    _ if valid_listen(v) => Some(v.to_string()),
                    _ => return Err(bad("host:port (e.g. 127.0.0.1:9292), or empty")),
                }
            }
            "mlm_server/storage/sync" => {
                sync = match v.to_lowercase().as_str() {
                    "always" => SyncMode::Always,
                    "batch" => SyncMode::Batch,
                    _ => return Err(bad("always or batch")),
                }
            }
            p if p.starts_with("mlm_server/schedule/") => {
                let rest = &p["mlm_server/schedule/".len()..];
                let Some((name, key)) = rest.split_once('/') else {
                    return Err(BrokerError::Config(format!(
                        "line {}: {p}: a schedule's keys are mlm_server/schedule/<name>/every, cron, timezone, address, subject, content",
                        e.line
                    )));
                };
                if !SCHEDULE_KEYS.contains(&key) || name.is_empty() {
                    return Err(BrokerError::Config(format!(
                        "line {}: unknown key {p} (a schedule has every, cron, timezone, address, subject, content)",
                        e.line
                    )));
                }
                let at = match schedules.iter().position(|(n, _)| n == name) {
                    Some(i) => i,
                    None => {
                        schedules.push((name.to_string(), HashMap::new()));
                        schedules.len() - 1
                    }
                };
                schedules[at]
                    .1
                    .insert(key.to_string(), (v.to_string(), e.line));
            }
            p if IGNORED.contains(&p) => warnings.push(format!(
                "line {}: {p} is not used by alaska-broker; ignored",
                e.line
            )),
            p => {
                let place = match from_env.get(p) {
                    Some(name) => format!("environment variable {name}"),
                    None => format!("line {}", e.line),
                };
                let hint = crate::config::strict::suggest(p, BROKER_KEYS.iter().copied())
                    .map(|k| format!("; did you mean {k}?"))
                    .unwrap_or_default();
                return Err(BrokerError::Config(format!(
                    "{place}: unknown key {p}{hint}"
                )));
            }
        }
    }
    for (name, keys) in &schedules {
        cfg.schedules.push(schedule(name, keys)?);
    }
    cfg.http_token = crate::config::http_token(
        "mlm_server/http/token",
        &http_token,
        "mlm_server/http/token_file",
        &http_token_file,
    )
    .map_err(|e| BrokerError::Config(e.to_string()))?;
    if !storage_dir.is_empty() {
        cfg.storage = Some(StorageConfig {
            dir: base.join(storage_dir),
            sync,
        });
    }
    if mechanism == "plain" {
        let Some(file) = passwords else {
            return Err(BrokerError::Config(
                "mlm_server/security/mechanism is plain but server/auth/plain (passwords file) is not set".into(),
            ));
        };
        let path = base.join(&file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            BrokerError::Config(format!("server/auth/plain: {}: {e}", path.display()))
        })?;
        cfg.plain = Some(parse_passwords(&text));
    }
    if mechanism == "curve" {
        let need = |what: Option<String>, key: &str| {
            what.ok_or_else(|| {
                BrokerError::Config(format!(
                    "mlm_server/security/mechanism is curve but {key} is not set"
                ))
            })
        };
        let certificate = base.join(need(certificate, "mlm_server/security/curve/certificate")?);
        let clients = base.join(need(clients, "mlm_server/security/curve/clients")?);
        cfg.curve = Some(CurveServer {
            keys: KeyPair::load(&certificate)?,
            clients: AllowedKeys::load(&clients)?,
            clients_path: Some(clients),
        });
    } else if certificate.is_some() || clients.is_some() {
        warnings.push(format!(
            "mlm_server/security/curve/* is set but the mechanism is {mechanism}; ignored"
        ));
    }
    Ok((cfg, warnings))
}

/// One schedule's keys as read: key -> (value, line).
type ScheduleKeys = HashMap<String, (String, usize)>;

/// The keys of one schedule (`mlm_server/schedule/<name>/<key>`).
const SCHEDULE_KEYS: &[&str] = &["every", "cron", "timezone", "address", "subject", "content"];

/// One schedule from its keys (value, line), or the error naming it.
fn schedule(name: &str, keys: &ScheduleKeys) -> Result<ScheduleSpec, BrokerError> {
    let get = |k: &str| keys.get(k).map(|(v, _)| v.as_str());
    let every = match keys.get("every") {
        None => None,
        Some((v, line)) => Some(crate::config::duration("every", v).map_err(|_| {
            BrokerError::Config(format!(
                "line {line}: mlm_server/schedule/{name}/every: {v:?} is not a duration up to one year (e.g. 250ms, 30s, 5m, 1h)"
            ))
        })?),
    };
    ScheduleSpec::new(
        name,
        every,
        get("cron"),
        get("timezone"),
        get("address"),
        get("subject"),
        get("content"),
    )
    .map_err(|e| BrokerError::Config(format!("mlm_server/schedule/{name}: {e}")))
}

/// `user=password` lines; blank lines and `#` comments skipped.
pub fn parse_passwords(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(u, p)| (u.trim().to_string(), p.trim().to_string()))
        .collect()
}

/// `host:port` with a port number (the host is checked when binding).
fn valid_listen(v: &str) -> bool {
    v.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_reference_keys_warns_on_ignored_ones_and_refuses_unknown_ones() {
        let text = "server\n    timeout = 5000\n    verbose = 1\n    background = 0\nmlm_server\n    bind\n        endpoint = tcp://127.0.0.1:7777\n    mailbox\n        count-limit = 7\n        size-limit = max\n";
        let (cfg, warnings) = parse_config(text, Path::new(".")).unwrap();
        assert_eq!(cfg.endpoint, "tcp://127.0.0.1:7777");
        assert_eq!(cfg.client_timeout, Duration::from_secs(5));
        assert!(cfg.verbose);
        assert_eq!(cfg.mailbox_limit.messages, 7);
        assert_eq!(cfg.mailbox_limit.bytes, usize::MAX);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("server/background"));
        let e = parse_config(
            &format!("{text}    mailbox\n        count-limt = 3\n"),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unknown key mlm_server/mailbox/count-limt"),
            "{e}"
        );
        assert!(
            e.contains("did you mean mlm_server/mailbox/count-limit"),
            "{e}"
        );
    }

    #[test]
    fn environment_overrides_the_file_and_is_checked_too() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let (cfg, _) = parse_config_with_env(
            "server\n    timeout = 5000\n",
            Path::new("."),
            env(&[
                ("ALASKA_SERVER__TIMEOUT", "7000"),
                ("ALASKA_WORKER__POOL__SIZE", "3"),
                ("ALASKA_QUICKSTART_TEST", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.client_timeout, Duration::from_secs(7));
        let e = parse_config_with_env(
            "",
            Path::new("."),
            env(&[("ALASKA_MLM_SERVER__HTTP__LISTN", "x")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ALASKA_MLM_SERVER__HTTP__LISTN") && e.contains("mlm_server/http/listen"),
            "{e}"
        );
    }

    #[test]
    fn the_shipped_sample_parses_without_warnings() {
        let (cfg, warnings) =
            parse_config(include_str!("../../alaska-broker.cfg"), Path::new(".")).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.endpoint, crate::mlm::DEFAULT_ENDPOINT);
        assert_eq!(cfg.service_queue_limit.messages, 100_000);
        assert!(cfg.plain.is_none());
        assert_eq!(cfg.storage, None, "in memory by default");
        assert_eq!(cfg.http_listen, None, "no HTTP by default");
    }

    #[test]
    fn http_listen_is_a_host_and_port() {
        let text = |v: &str| format!("mlm_server\n    http\n        listen = {v}\n");
        let (cfg, warnings) = parse_config(&text("127.0.0.1:9292"), Path::new(".")).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.http_listen.as_deref(), Some("127.0.0.1:9292"));
        let (cfg, _) = parse_config(&text("[::1]:0"), Path::new(".")).unwrap();
        assert_eq!(cfg.http_listen.as_deref(), Some("[::1]:0"));
        for bad in ["9292", "localhost", ":80", "host:port"] {
            let e = parse_config(&text(bad), Path::new(".")).unwrap_err();
            assert!(e.to_string().contains("mlm_server/http/listen"), "{e}");
        }
    }

    #[test]
    fn storage_keys() {
        let text = "mlm_server\n    storage\n        dir = store\n        sync = always\n";
        let (cfg, warnings) = parse_config(text, Path::new("/etc/alaska")).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            cfg.storage,
            Some(StorageConfig {
                dir: "/etc/alaska/store".into(),
                sync: SyncMode::Always
            })
        );
        let (cfg, _) = parse_config(
            "mlm_server\n    storage\n        dir = /var/lib/b\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            cfg.storage.map(|s| (s.dir, s.sync)),
            Some(("/var/lib/b".into(), SyncMode::Batch))
        );
        let (cfg, _) = parse_config(
            "mlm_server\n    storage\n        sync = always\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(cfg.storage, None, "no dir: in memory");
        let e = parse_config(
            "mlm_server\n    storage\n        sync = sometimes\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("mlm_server/storage/sync"), "{e}");
    }

    #[test]
    fn schedules_are_read_and_bad_ones_refused() {
        let text = "mlm_server\n    schedule\n        tick\n            every = \"1s\"\n            address = \"svc\"\n            subject = \"beat\"\n        nightly\n            cron = \"0 3 * * *\"\n            timezone = \"Europe/Paris\"\n            address = \"svc\"\n            subject = \"night\"\n            content = \"{}\"\n";
        let (cfg, _) = parse_config(text, Path::new(".")).unwrap();
        let names: Vec<&str> = cfg.schedules.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["tick", "nightly"]);
        assert_eq!(cfg.schedules[1].content, "{}");
        for (bad, says) in [
            ("every = \"1s\"\n            cron = \"* * * * *\"\n            address = \"a\"\n            subject = \"s\"", "both"),
            ("cron = \"99 * * * *\"\n            address = \"a\"\n            subject = \"s\"", "cron"),
            ("every = \"1s\"\n            subject = \"s\"", "address"),
            ("every = \"often\"\n            address = \"a\"\n            subject = \"s\"", "every"),
            ("every = \"1s\"\n            address = \"a\"\n            subject = \"s\"\n            colour = \"red\"", "unknown key"),
        ] {
            let text = format!("mlm_server\n    schedule\n        x\n            {bad}\n");
            let e = parse_config(&text, Path::new(".")).unwrap_err().to_string();
            assert!(e.contains("schedule") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse_config("server\n    timeout = soon\n", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("server/timeout"), "{e}");
        let e = parse_config(
            "mlm_server\n    security\n        mechanism = gssapi\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("mechanism"), "{e}");
    }

    #[test]
    fn plain_needs_a_passwords_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("passwords.cfg"),
            "# users\nadmin=secret\nbob = pw\n",
        )
        .unwrap();
        let text = "server\n    auth\n        plain = passwords.cfg\nmlm_server\n    security\n        mechanism = plain\n";
        let (cfg, _) = parse_config(text, dir.path()).unwrap();
        let users = cfg.plain.unwrap();
        assert_eq!(users.get("admin").map(String::as_str), Some("secret"));
        assert_eq!(users.get("bob").map(String::as_str), Some("pw"));
        let e = parse_config(
            "mlm_server\n    security\n        mechanism = plain\n",
            dir.path(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("server/auth/plain"), "{e}");
    }
}

#[cfg(test)]
mod security_tests {
    use super::*;
    use crate::curve::write_new_pair;

    #[test]
    fn curve_reads_the_broker_key_and_the_allowed_clients() {
        let dir = tempfile::tempdir().unwrap();
        let broker = write_new_pair(&dir.path().join("broker"), "broker").unwrap();
        std::fs::create_dir(dir.path().join("clients")).unwrap();
        let app = write_new_pair(&dir.path().join("clients/app"), "app").unwrap();
        let text = "mlm_server\n    security\n        mechanism = curve\n        curve\n            certificate = broker_secret\n            clients = clients\n";
        let (cfg, warnings) = parse_config(text, dir.path()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let curve = cfg.curve.unwrap();
        assert_eq!(curve.keys, broker);
        assert_eq!(curve.clients.name_of(&app.public), Some("app"));
        assert_eq!(curve.clients.len(), 1);
    }

    #[test]
    fn curve_without_its_files_is_an_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = "mlm_server\n    security\n        mechanism = curve\n";
        let e = parse_config(text, dir.path()).unwrap_err();
        assert!(e.to_string().contains("curve/certificate"), "{e}");
        let text = "mlm_server\n    security\n        mechanism = curve\n        curve\n            certificate = missing_secret\n            clients = clients\n";
        let e = parse_config(text, dir.path()).unwrap_err();
        assert!(e.to_string().contains("missing_secret"), "{e}");
    }

    #[test]
    fn an_acl_with_a_syntax_error_is_a_start_up_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("acl.cfg"),
            "user\n    app\n        open = \"*\"\n        opne = \"x\"\n",
        )
        .unwrap();
        let text = "mlm_server\n    security\n        acl = acl.cfg\n";
        let e = parse_config(text, dir.path()).unwrap_err();
        assert!(e.to_string().contains("acl.cfg: line 4"), "{e}");
        std::fs::write(dir.path().join("acl.cfg"), "default\n    send = \"*\"\n").unwrap();
        let (cfg, _) = parse_config(text, dir.path()).unwrap();
        assert!(cfg.acl.is_some());
        assert_eq!(cfg.acl_file, Some(dir.path().join("acl.cfg")));
    }
}
