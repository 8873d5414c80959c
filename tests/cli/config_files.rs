//! Configuration through files on disk: the ZPL reader as a `config` crate
//! file format, `Settings::load` with a missing, a seed-style and a broken
//! file, and environment overrides given as a list (never the process
//! environment, which parallel tests share).

use std::path::PathBuf;
use std::time::Duration;

use alaska::config::zpl::{self, Zpl};
use alaska::config::{Settings, DEFAULT_CONFIG};

/// A config in the style of the original's sample, retyped: the keys and
/// values it shipped with, single and double quotes, comments.
const SEED_STYLE: &str = "\
#   Worker configuration
worker
    background = \"0\"
    workdir = \".\"
    verbose = \"0\"
    syslog = '0'                #   stderr
    scripts
        dir = \"../services\"
    pool
        size = \"4\"
    broker
        endpoint = \"tcp://127.0.0.1:9999\"
        timeout = 1000
    service
        address = \"default\"
        filter = \".*\"
    errors
        notify = \"1\"
        mailbox = \"awerr\"
";

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_zpl_file_on_disk_reads_through_the_config_crate() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "nested.cfg",
        "# comment\nserver\n    name = 'with # hash'   # comment\n    \
         limits\n        open = 12\n\n        # indented comment\n    \
         bind = tcp://*:5555\nclient = \"x\"\n",
    );
    let c = config::Config::builder()
        .add_source(config::File::new(path.to_str().unwrap(), Zpl))
        .build()
        .unwrap();
    assert_eq!(c.get_string("server.name").unwrap(), "with # hash");
    assert_eq!(c.get_int("server.limits.open").unwrap(), 12);
    assert_eq!(c.get_string("server.bind").unwrap(), "tcp://*:5555");
    assert_eq!(c.get_string("client").unwrap(), "x");
    // A section is a table, not a value.
    assert!(c.get_string("server.limits").is_err());
    assert!(config::FileStoredFormat::file_extensions(&Zpl).contains(&"cfg"));
}

#[test]
fn the_shipped_file_names_every_key_once_and_parses_to_the_defaults() {
    let entries = zpl::parse(DEFAULT_CONFIG).unwrap();
    let mut paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let count = paths.len();
    paths.sort_unstable();
    paths.dedup();
    assert_eq!(paths.len(), count, "a key appears twice: {paths:?}");
    for key in [
        "worker/background",
        "worker/workdir",
        "worker/verbose",
        "worker/syslog",
        "worker/lockfile",
        "worker/user",
        "worker/group",
        "worker/scripts/dir",
        "worker/pool/size",
        "worker/pool/backlog",
        "worker/pool/hold",
        "worker/pool/hold_bytes",
        "worker/broker/endpoint",
        "worker/broker/timeout",
        "worker/service/address",
        "worker/service/filter",
        "worker/errors/notify",
        "worker/errors/mailbox",
        "worker/errors/reply",
        "worker/auth/plain/username",
        "worker/auth/plain/password",
        "worker/lua/timeout",
        "worker/lua/memory",
        "worker/lua/path",
        "worker/shutdown/timeout",
    ] {
        assert!(paths.contains(&key), "{key} is not in alaska.cfg");
    }
    assert_eq!(
        Settings::from_sources(DEFAULT_CONFIG, Vec::new()).unwrap(),
        Settings::default()
    );
}

/// The sample files are documentation of the defaults in code: each names
/// exactly the keys the code knows, with exactly its default values
/// (editing a sample changes no default, and this test says so).
#[test]
fn the_sample_files_match_the_defaults_in_code() {
    use alaska::config::defaults::{GATEWAY_DEFAULTS, WORKER_DEFAULTS};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, table) in [
        ("alaska.cfg", WORKER_DEFAULTS),
        ("alaska-gateway.cfg", GATEWAY_DEFAULTS),
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let sample: Vec<(String, String)> = zpl::parse(&text)
            .unwrap()
            .into_iter()
            .map(|e| (e.path, e.value))
            .collect();
        let code: Vec<(String, String)> = table
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(sample, code, "{file} and the defaults in code differ");
    }
    // The broker's sample names only keys the broker reads.
    let text = std::fs::read_to_string(root.join("alaska-broker.cfg")).unwrap();
    for e in zpl::parse(&text).unwrap() {
        assert!(
            alaska::broker::BROKER_KEYS.contains(&e.path.as_str()),
            "alaska-broker.cfg: {} (line {}) is not a key the broker reads",
            e.path,
            e.line
        );
    }
}

#[test]
fn a_missing_file_is_written_with_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alaska.cfg");
    let loaded = Settings::load(&path).unwrap();
    assert!(loaded.created);
    assert_eq!(loaded.settings, Settings::default());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), DEFAULT_CONFIG);

    // The second start finds it and leaves it alone.
    let again = Settings::load(&path).unwrap();
    assert!(!again.created);
    assert_eq!(again.settings, Settings::default());
}

#[test]
fn a_file_in_the_original_style_loads_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "alaska.cfg", SEED_STYLE);
    let loaded = Settings::load(&path).unwrap();
    assert!(!loaded.created);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), SEED_STYLE);
    let s = loaded.settings;
    assert_eq!(s.pool_size, 4);
    assert_eq!(s.endpoints, ["tcp://127.0.0.1:9999"]);
    assert_eq!(s.broker_timeout, Duration::from_millis(1000));
    assert_eq!(s.service, "default");
    assert_eq!(s.filter, ".*");
    assert!(s.errors_notify);
    assert_eq!(s.errors_mailbox, "awerr");
    assert_eq!(s.scripts_dir, PathBuf::from("../services"));
    assert_eq!(s.plain, None);
    assert_eq!(s.lockfile, None);
}

#[test]
fn environment_pairs_override_nested_keys() {
    let env = [
        ("ALASKA_WORKER__AUTH__PLAIN__USERNAME", "alice"),
        ("ALASKA_WORKER__AUTH__PLAIN__PASSWORD", "secret"),
        ("ALASKA_WORKER__BROKER__ENDPOINT", "tcp://10.0.0.5:9999"),
        ("ALASKA_WORKER__LUA__PATH", "/usr/share/lua/5.4; /opt/lua"),
        ("ALASKA_WORKER__VERBOSE", "true"),
        // Not ours: ignored.
        ("WORKER__POOL__SIZE", "99"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let s = Settings::from_sources(SEED_STYLE, env).unwrap();
    assert_eq!(s.plain, Some(("alice".into(), "secret".into())));
    assert_eq!(s.endpoints, ["tcp://10.0.0.5:9999"]);
    assert_eq!(
        s.lua_path,
        [
            PathBuf::from("/usr/share/lua/5.4"),
            PathBuf::from("/opt/lua")
        ]
    );
    assert!(s.verbose);
    assert_eq!(s.pool_size, 4);
}

#[test]
fn a_bad_environment_value_names_the_key() {
    let env = vec![("ALASKA_WORKER__POOL__SIZE".into(), "abc".into())];
    let e = Settings::from_sources(SEED_STYLE, env).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("worker/pool/size") && text.contains("abc"),
        "{text}"
    );
}

#[test]
fn bad_values_in_a_file_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key, value) in [
        (
            "worker\n    pool\n        size = \"abc\"\n",
            "worker/pool/size",
            "abc",
        ),
        (
            "worker\n    pool\n        size = \"0\"\n",
            "worker/pool/size",
            "0",
        ),
        (
            "worker\n    pool\n        backlog = \"-3\"\n",
            "worker/pool/backlog",
            "-3",
        ),
        ("worker\n    syslog = \"maybe\"\n", "worker/syslog", "maybe"),
        (
            "worker\n    lua\n        memory = \"lots\"\n",
            "worker/lua/memory",
            "lots",
        ),
        (
            "worker\n    shutdown\n        timeout = \"5 parsecs\"\n",
            "worker/shutdown/timeout",
            "5 parsecs",
        ),
        (
            "worker\n    broker\n        endpoint = \"\"\n",
            "worker/broker/endpoint",
            "",
        ),
    ] {
        let path = write(&dir, "bad.cfg", text);
        let e = Settings::load(&path).unwrap_err().to_string();
        assert!(e.contains("bad.cfg"), "{e}");
        assert!(e.contains(key), "{e}");
        assert!(e.contains(&format!("{value:?}")), "{e}");
    }
}

#[test]
fn syntax_errors_name_the_line() {
    for (text, line, what) in [
        ("worker\n   pool = 1\n", 2, "multiple of 4"),
        ("worker\n    pool = \"4\n", 2, "unterminated"),
        ("worker\n    po?ol = 4\n", 2, "expected '='"),
        ("worker\n            pool = 4\n", 2, "levels"),
        ("worker\n\tpool = 4\n", 2, "tabs"),
        ("= 4\n", 1, "expected a name"),
    ] {
        let e = zpl::parse(text).unwrap_err();
        assert_eq!(e.line, line, "{text:?}: {e}");
        assert!(e.to_string().contains(what), "{text:?}: {e}");
        assert!(e.to_string().starts_with(&format!("line {line}:")), "{e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "broken.cfg", "worker\n    pool = \"4\n");
    let e = Settings::load(&path).unwrap_err().to_string();
    assert!(e.contains("broken.cfg") && e.contains("line 2"), "{e}");
}
