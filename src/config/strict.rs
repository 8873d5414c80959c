//! Strict keys: every key a configuration file or an `ALASKA_…`
//! environment variable sets must be one the binary knows. An unknown key
//! is an error that names it, says where it was (file line or variable)
//! and suggests the nearest known key, instead of being ignored while the
//! default silently applies (`worker/pool/sise`, a `workr` section,
//! `ALASKA_WORKER__POOL__SIZ`).
//!
//! Environment variables are `ALASKA_` + the key's path in capitals with
//! `__` for `/`. Only those naming this binary's section, or no binary's,
//! are checked: a variable for another binary of the project (a gateway
//! key in a worker's environment) is left alone, and so are names without
//! `__` (`ALASKA_GATEWAY_USER` and other single variables).

use super::{zpl, ConfigError};

/// The top sections of the project's binaries: an environment variable
/// under one of them that is not ours belongs to another binary.
pub const ROOTS: [&str; 4] = ["worker", "gateway", "server", "mlm_server"];

/// The key path an `ALASKA_A__B__C` variable sets (`a/b/c`), if it is one.
pub fn env_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix("ALASKA_")?;
    if !rest.contains("__") {
        return None;
    }
    Some(rest.to_ascii_lowercase().replace("__", "/"))
}

/// Levenshtein distance, for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known key nearest to `key`, if it is near enough to be a typo.
pub fn suggest<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    known
        .into_iter()
        .map(|k| (distance(key, k), k))
        .min()
        .filter(|(d, k)| *d <= 3.max(k.len() / 4))
        .map(|(_, k)| k.to_string())
}

/// Checks the keys of `text` (ZPL) and of `env` against `known` (plus any
/// key under one of `open` prefixes, whose subkeys are checked elsewhere):
/// the first unknown one is an error. `root` is this binary's section.
pub fn check(
    known: &[(&str, &str)],
    open: &[&str],
    root: &str,
    text: &str,
    env: &[(String, String)],
) -> Result<(), ConfigError> {
    let ok =
        |key: &str| known.iter().any(|(k, _)| *k == key) || open.iter().any(|p| key.starts_with(p));
    let entries = zpl::parse(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    for e in &entries {
        if !ok(&e.path) {
            return Err(ConfigError::Unknown {
                key: e.path.clone(),
                place: format!("line {}", e.line),
                suggestion: suggest(&e.path, known.iter().map(|(k, _)| *k)),
            });
        }
    }
    for (name, _) in env {
        let Some(key) = env_key(name) else { continue };
        let top = key.split('/').next().unwrap_or("");
        if top != root && ROOTS.contains(&top) {
            continue;
        }
        if !ok(&key) {
            return Err(ConfigError::Unknown {
                key,
                place: format!("environment variable {name}"),
                suggestion: suggest(
                    &env_key(name).unwrap_or_default(),
                    known.iter().map(|(k, _)| *k),
                )
                .map(|k| format!("ALASKA_{}", k.to_ascii_uppercase().replace('/', "__"))),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[(&str, &str)] = &[("worker/pool/size", "4"), ("worker/pool/backlog", "64")];

    #[test]
    fn typos_are_named_with_the_nearest_key() {
        let e = check(
            KNOWN,
            &[],
            "worker",
            "worker\n    pool\n        sise = 2\n",
            &[],
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("worker/pool/sise") && text.contains("line 3"),
            "{text}"
        );
        assert!(text.contains("did you mean worker/pool/size"), "{text}");
        let e = check(
            KNOWN,
            &[],
            "worker",
            "workr\n    pool\n        size = 2\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("worker/pool/size"), "{e}");
        let env = vec![("ALASKA_WORKER__POOL__SIZ".to_string(), "2".to_string())];
        let e = check(KNOWN, &[], "worker", "", &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ALASKA_WORKER__POOL__SIZ") && e.contains("ALASKA_WORKER__POOL__SIZE"),
            "{e}"
        );
    }

    #[test]
    fn other_binaries_variables_and_open_subtrees_pass() {
        let env = vec![
            ("ALASKA_GATEWAY__HTTP__LISTEN".to_string(), "x".to_string()),
            ("ALASKA_GATEWAY_USER".to_string(), "u".to_string()),
            ("ALASKA_QUICKSTART_TEST".to_string(), "1".to_string()),
        ];
        check(
            KNOWN,
            &["worker/runners/"],
            "worker",
            "worker\n    runners\n        r\n            url = x\n",
            &env,
        )
        .unwrap();
        let env = vec![("ALASKA_WORKR__POOL__SIZE".to_string(), "2".to_string())];
        assert!(
            check(KNOWN, &[], "worker", "", &env).is_err(),
            "an unknown section"
        );
    }
}
