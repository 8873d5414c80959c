//! The `worker/runners/<name>/` sections (see
//! [`crate::worker::runners`]).
//!
//! Runners are read in file order, because the first runner whose `match`
//! matches a subject wins, and the `config` crate's tables do not keep
//! order. So the runners' names, their order, the line of each key and
//! the `headers/<name>` and `env/<NAME>` entries (whose names are
//! case-sensitive, while the `config` crate lowercases keys) come from the
//! file itself, through the project's ZPL reader ([`super::zpl::parse`]).
//! The other keys are looked up in the layered settings, so the
//! environment overrides them as it does any key
//! (`ALASKA_WORKER__RUNNERS__PY__PROCESSES=4`). A runner that only the
//! environment names is an error: it would have no place in the order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

use super::zpl;
use super::ConfigError;
use crate::worker::runners::{ExecConfig, HttpConfig, Pattern, RunnerConfig, RunnerKind};

/// Default `timeout` of both kinds of runner.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `concurrency` of an HTTP runner.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Default `processes` of an exec runner.
pub const DEFAULT_PROCESSES: usize = 2;
/// Most threads or processes one runner may ask for: a typo should not
/// start a hundred thousand.
pub const MAX_SLOTS: usize = 1024;

/// The keys a runner may have (besides `headers/*` and `env/*`).
const COMMON: &[&str] = &["match", "type", "timeout"];
const HTTP: &[&str] = &["url", "concurrency"];
const EXEC: &[&str] = &["command", "dir", "processes"];

/// One runner's entries as the file has them.
struct Section {
    name: String,
    /// key (lowercase, `headers/` and `env/` names as written), value, line.
    entries: Vec<(String, String, usize)>,
}

fn err(key: String, line: usize, message: impl Into<String>) -> ConfigError {
    ConfigError::Runner {
        key,
        at: if line > 0 {
            format!(" (line {line})")
        } else {
            String::new()
        },
        message: message.into(),
    }
}

/// Reads the runners of `text` (the configuration file). `lookup` gives
/// the layered value of a dotted, lowercase key (file, then
/// environment); `layered_names` are the runner names the layered settings
/// hold (lowercase), to find runners named only in the environment.
pub fn parse(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
    layered_names: &[String],
) -> Result<Vec<RunnerConfig>, ConfigError> {
    let entries = zpl::parse(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    let mut sections: Vec<Section> = Vec::new();
    for e in entries {
        let parts: Vec<&str> = e.path.split('/').collect();
        if parts.len() < 3
            || !parts[0].eq_ignore_ascii_case("worker")
            || !parts[1].eq_ignore_ascii_case("runners")
        {
            continue;
        }
        let name = parts[2];
        if parts.len() == 3 {
            return Err(err(
                format!("worker/runners/{name}"),
                e.line,
                "a runner is a section of keys (match, type, ...), not a value",
            ));
        }
        let key = match parts[3].to_ascii_lowercase().as_str() {
            // The name after headers/ or env/ keeps its case.
            k @ ("headers" | "env") if parts.len() == 5 => format!("{k}/{}", parts[4]),
            _ => parts[3..].join("/").to_ascii_lowercase(),
        };
        match sections
            .iter_mut()
            .find(|s| s.name.eq_ignore_ascii_case(name))
        {
            Some(s) => s.entries.push((key, e.value, e.line)),
            None => sections.push(Section {
                name: name.to_string(),
                entries: vec![(key, e.value, e.line)],
            }),
        }
    }
    for n in layered_names {
        if !sections.iter().any(|s| s.name.eq_ignore_ascii_case(n)) {
            return Err(err(
                format!("worker/runners/{n}"),
                0,
                "named only in the environment: declare runners in the configuration file \
                 (their order matters); the environment may override their keys",
            ));
        }
    }
    sections.iter().map(|s| runner(s, &lookup)).collect()
}

fn runner(
    s: &Section,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<RunnerConfig, ConfigError> {
    let name = &s.name;
    let key = |k: &str| format!("worker/runners/{name}/{k}");
    let lines: HashMap<&str, usize> = s.entries.iter().map(|(k, _, l)| (k.as_str(), *l)).collect();
    let first_line = s.entries.first().map(|e| e.2).unwrap_or(0);
    let line = |k: &str| lines.get(k).copied().unwrap_or(first_line);
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(err(
            format!("worker/runners/{name}"),
            first_line,
            "a runner's name is letters, digits, '_' and '-'",
        ));
    }
    // Scalar keys: the layered value (environment over file), else none.
    let value = |k: &str| -> Option<String> {
        let file = s
            .entries
            .iter()
            .rev()
            .find(|(ek, _, _)| ek == k)
            .map(|(_, v, _)| v.clone());
        lookup(&format!("worker.runners.{}.{k}", name.to_ascii_lowercase()))
            .or(file)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let named = |prefix: &str| -> Vec<(String, String, usize)> {
        s.entries
            .iter()
            .filter_map(|(k, v, l)| {
                k.strip_prefix(prefix)
                    .map(|n| (n.to_string(), v.clone(), *l))
            })
            .collect()
    };
    let kind = match value("type").map(|t| t.to_ascii_lowercase()) {
        Some(t) if t == "http" || t == "exec" => t,
        Some(t) => {
            return Err(err(
                key("type"),
                line("type"),
                format!("{t:?} is not http or exec"),
            ))
        }
        None => match (value("url").is_some(), value("command").is_some()) {
            (true, false) => "http".into(),
            (false, true) => "exec".into(),
            _ => {
                return Err(err(
                    key("type"),
                    first_line,
                    "not set: http (with a url) or exec (with a command)",
                ))
            }
        },
    };
    let allowed: &[&str] = if kind == "http" { HTTP } else { EXEC };
    for (k, _, l) in &s.entries {
        let base = k.split('/').next().unwrap_or("");
        let ok = COMMON.contains(&k.as_str())
            || allowed.contains(&k.as_str())
            || (kind == "http" && base == "headers" && k.contains('/'))
            || (kind == "exec" && base == "env" && k.contains('/'));
        if !ok {
            let keys = COMMON
                .iter()
                .chain(allowed)
                .copied()
                .chain(std::iter::once(if kind == "http" {
                    "headers/<name>"
                } else {
                    "env/<NAME>"
                }))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(err(
                key(k),
                *l,
                format!("not a key of an {kind} runner (its keys: {keys})"),
            ));
        }
    }
    let pattern = match value("match") {
        Some(p) => Regex::new(&p).map_err(|e| {
            err(
                key("match"),
                line("match"),
                format!(
                    "{p:?} is not a regular expression: {}",
                    one_line(&e.to_string())
                ),
            )
        })?,
        // Default: exactly the runner's name as subject.
        None => Regex::new(&format!("^{}$", regex::escape(name)))
            .map_err(|e| err(key("match"), first_line, e.to_string()))?,
    };
    let timeout = match value("timeout") {
        None => DEFAULT_TIMEOUT,
        Some(v) => match super::duration("timeout", &v) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                return Err(err(
                    key("timeout"),
                    line("timeout"),
                    format!("{v:?} is not a duration above zero (ms, or with ms, s or m)"),
                ))
            }
        },
    };
    let count = |k: &str, default: usize| -> Result<usize, ConfigError> {
        match value(k) {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_SLOTS).contains(&n) => Ok(n),
                _ => Err(err(
                    key(k),
                    line(k),
                    format!("{v:?} is not a whole number from 1 to {MAX_SLOTS}"),
                )),
            },
        }
    };
    let kind = if kind == "http" {
        let url = value("url").ok_or_else(|| {
            err(
                key("url"),
                first_line,
                "not set: an http runner needs the URL to POST to",
            )
        })?;
        check_url(&url).map_err(|m| err(key("url"), line("url"), m))?;
        let mut headers = Vec::new();
        for (n, v, l) in named("headers/") {
            let bad_name = ureq::http::HeaderName::from_bytes(n.as_bytes()).is_err();
            if bad_name || n.to_ascii_lowercase().starts_with("x-alaska-") {
                return Err(err(
                    key(&format!("headers/{n}")),
                    l,
                    if bad_name {
                        "not a valid HTTP header name"
                    } else {
                        "X-Alaska-* headers are the worker's own"
                    },
                ));
            }
            if ureq::http::HeaderValue::from_str(&v).is_err() {
                return Err(err(
                    key(&format!("headers/{n}")),
                    l,
                    format!("{v:?} is not a valid HTTP header value"),
                ));
            }
            headers.push((n, v));
        }
        RunnerKind::Http(HttpConfig {
            url,
            timeout,
            concurrency: count("concurrency", DEFAULT_CONCURRENCY)?,
            headers,
        })
    } else {
        let raw = value("command").ok_or_else(|| {
            err(
                key("command"),
                first_line,
                "not set: an exec runner needs a command to run",
            )
        })?;
        let command = shlex::split(&raw)
            .filter(|words| !words.is_empty())
            .ok_or_else(|| {
                err(
                    key("command"),
                    line("command"),
                    format!("{raw:?} cannot be split into words (unbalanced quotes?)"),
                )
            })?;
        let mut env = Vec::new();
        for (n, v, l) in named("env/") {
            if n.is_empty() || n.contains('=') || n.contains('\0') || v.contains('\0') {
                return Err(err(
                    key(&format!("env/{n}")),
                    l,
                    "not a valid environment variable",
                ));
            }
            env.push((n, v));
        }
        RunnerKind::Exec(ExecConfig {
            command,
            dir: value("dir").map(PathBuf::from),
            processes: count("processes", DEFAULT_PROCESSES)?,
            timeout,
            env,
        })
    };
    Ok(RunnerConfig {
        name: name.clone(),
        pattern: Pattern(pattern),
        kind,
        lines: s.entries.iter().map(|(k, _, l)| (k.clone(), *l)).collect(),
    })
}

/// An `http://host[:port]/path` URL (no TLS in this build).
fn check_url(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{url:?}: https is not supported (this build has no TLS): POST to the \
                 application over http on a trusted network, or through a local TLS proxy"
            ))
        }
        _ => return Err(format!("{url:?} is not an http:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;
    use crate::worker::runners::RunnerKind;
    use std::time::Duration;

    fn settings(runners: &str) -> Result<Settings, String> {
        Settings::from_sources(&format!("worker\n    runners\n{runners}"), Vec::new())
            .map_err(|e| e.to_string())
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const TWO: &str = "        zeta\n            match = \"^orders\\.\"\n            type = \"http\"\n            url = \"http://127.0.0.1:8080/orders\"\n            headers\n                Authorization = \"Bearer x\"\n                X-Trace = \"1\"\n        alpha\n            command = \"python3 -u 'my handler.py' --flag\"\n            processes = \"3\"\n            timeout = \"2s\"\n            dir = \"/srv/handlers\"\n            env\n                PYTHONPATH = \"/opt/alaska/runners/python\"\n                lower_Case = \"kept\"\n";

    #[test]
    fn runners_in_file_order_with_every_key() {
        let s = settings(TWO).unwrap();
        let names: Vec<&str> = s.runners.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"], "file order, not sorted");
        let z = &s.runners[0];
        assert_eq!(z.pattern.0.as_str(), "^orders\\.");
        let RunnerKind::Http(h) = &z.kind else {
            panic!("zeta is http")
        };
        assert_eq!(h.url, "http://127.0.0.1:8080/orders");
        assert_eq!(h.timeout, Duration::from_secs(30));
        assert_eq!(h.concurrency, 4);
        assert_eq!(
            h.headers,
            vec![
                ("Authorization".to_string(), "Bearer x".to_string()),
                ("X-Trace".to_string(), "1".to_string())
            ]
        );
        let a = &s.runners[1];
        assert_eq!(a.pattern.0.as_str(), "^alpha$", "default match: the name");
        let RunnerKind::Exec(e) = &a.kind else {
            panic!("alpha is exec (inferred from command)")
        };
        assert_eq!(e.command, ["python3", "-u", "my handler.py", "--flag"]);
        assert_eq!(e.processes, 3);
        assert_eq!(e.timeout, Duration::from_secs(2));
        assert_eq!(
            e.dir.as_deref(),
            Some(std::path::Path::new("/srv/handlers"))
        );
        assert_eq!(
            e.env,
            vec![
                (
                    "PYTHONPATH".to_string(),
                    "/opt/alaska/runners/python".to_string()
                ),
                ("lower_Case".to_string(), "kept".to_string())
            ]
        );
        assert_eq!(a.line_of("command"), 11);
    }

    #[test]
    fn the_environment_overrides_a_declared_runner() {
        let s = crate::config::Settings::from_sources(
            &format!("worker\n    runners\n{TWO}"),
            env(&[
                ("ALASKA_WORKER__RUNNERS__ALPHA__PROCESSES", "5"),
                ("ALASKA_WORKER__RUNNERS__ZETA__TIMEOUT", "250ms"),
            ]),
        )
        .unwrap();
        let RunnerKind::Exec(e) = &s.runners[1].kind else {
            panic!()
        };
        assert_eq!(e.processes, 5);
        let RunnerKind::Http(h) = &s.runners[0].kind else {
            panic!()
        };
        assert_eq!(h.timeout, Duration::from_millis(250));
        let e = crate::config::Settings::from_sources(
            &format!("worker\n    runners\n{TWO}"),
            env(&[("ALASKA_WORKER__RUNNERS__GHOST__URL", "http://x/")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("worker/runners/ghost"), "{e}");
    }

    #[test]
    fn bad_settings_name_the_key_and_line() {
        let cases = [
            ("        x\n            type = \"http\"\n", "worker/runners/x/url (line 4)", "not set"),
            ("        x\n            type = \"ftp\"\n", "worker/runners/x/type (line 4)", "not http or exec"),
            ("        x\n            timeout = \"1s\"\n", "worker/runners/x/type (line 4)", "not set"),
            ("        x\n            url = \"http://h/\"\n            match = \"(\"\n", "worker/runners/x/match (line 5)", "not a regular expression"),
            ("        x\n            url = \"https://h/\"\n", "worker/runners/x/url (line 4)", "https is not supported"),
            ("        x\n            url = \"localhost:80\"\n", "worker/runners/x/url (line 4)", "not an http:// URL"),
            ("        x\n            url = \"http://h/\"\n            command = \"cat\"\n", "worker/runners/x/type (line 4)", "not set"),
            ("        x\n            type = \"http\"\n            url = \"http://h/\"\n            command = \"cat\"\n", "worker/runners/x/command (line 6)", "not a key of an http runner"),
            ("        x\n            command = \"cat\"\n            concurrency = \"2\"\n", "worker/runners/x/concurrency (line 5)", "not a key of an exec runner"),
            ("        x\n            command = \"cat\"\n            comand = \"cat\"\n", "worker/runners/x/comand (line 5)", "not a key"),
            ("        x\n            command = \"cat 'open\"\n", "worker/runners/x/command (line 4)", "unbalanced"),
            ("        x\n            command = \"cat\"\n            processes = \"0\"\n", "worker/runners/x/processes (line 5)", "from 1 to 1024"),
            ("        x\n            command = \"cat\"\n            timeout = \"0\"\n", "worker/runners/x/timeout (line 5)", "above zero"),
            ("        x\n            url = \"http://h/\"\n            headers\n                X-Alaska-Subject = \"no\"\n", "worker/runners/x/headers/X-Alaska-Subject (line 6)", "worker's own"),
            ("        x.y\n            url = \"http://h/\"\n", "worker/runners/x.y (line 4)", "name"),
            ("        x = \"1\"\n", "worker/runners/x (line 3)", "section"),
        ];
        for (text, key, what) in cases {
            let e = settings(text).unwrap_err();
            assert!(e.starts_with(key) && e.contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_commented_example_in_the_shipped_file_works_uncommented() {
        let shipped = crate::config::DEFAULT_CONFIG;
        let start = shipped.find("#   runners").expect("the example is there");
        let example: String = shipped[start..]
            .lines()
            .map(|l| format!(" {}\n", &l[1..]))
            .collect();
        let s = crate::config::Settings::from_sources(
            &format!("{}{example}", &shipped[..start]),
            Vec::new(),
        )
        .unwrap();
        let names: Vec<&str> = s.runners.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["orders", "pricing"]);
        let RunnerKind::Http(h) = &s.runners[0].kind else {
            panic!("orders is http")
        };
        assert_eq!(h.headers[0].0, "Authorization");
        let RunnerKind::Exec(e) = &s.runners[1].kind else {
            panic!("pricing is exec")
        };
        assert_eq!(e.env[0].0, "PYTHONPATH");
        assert!(s.runners[0].pattern.0.is_match("orders.new"));
    }

    #[test]
    fn no_runners_by_default() {
        assert!(settings("").unwrap().runners.is_empty());
    }
}
