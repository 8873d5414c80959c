//! The README's quick start, followed as a newcomer would: a fresh clone
//! of the repository, the first command of the quick start exactly as
//! written (it builds and starts a worker with its embedded broker), then
//! every command of the block that follows it, exactly as written.
//!
//! It builds the project in release mode in its own target folder
//! (`target/quickstart`, kept between runs so only the project's own crate
//! is rebuilt), which takes minutes: it runs when `ALASKA_QUICKSTART_TEST=1`
//! (`.ci/run` sets it) and says "skipped" otherwise. It needs `git`, and
//! the quick start's port (9999) free.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The shell blocks of the quick start: (commands to start, commands to
/// run after), each one line, comments removed.
fn quick_start(readme: &str) -> (Vec<String>, Vec<String>) {
    let section = readme
        .split("## Quick start")
        .nth(1)
        .expect("a Quick start section")
        .split("\n## ")
        .next()
        .unwrap();
    let blocks: Vec<Vec<String>> = section
        .split("```sh")
        .skip(1)
        .map(|b| {
            // The fence may carry attributes (`sh run worker`): the block
            // starts on the next line.
            let b = &b[b.find('\n').map_or(b.len(), |i| i + 1)..];
            b.split("```")
                .next()
                .unwrap()
                .lines()
                .map(strip_comment)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .collect();
    assert!(blocks.len() >= 2, "the quick start has two shell blocks");
    (blocks[0].clone(), blocks[1].clone())
}

/// Removes a trailing `# comment` that is outside quotes.
fn strip_comment(line: &str) -> String {
    let (mut single, mut double) = (false, false);
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double => return line[..i].trim().to_string(),
            _ => {}
        }
    }
    line.trim().to_string()
}

fn sh(dir: &Path, cmd: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn readme_quick_start_works_as_written_in_a_fresh_clone() {
    if std::env::var("ALASKA_QUICKSTART_TEST").as_deref() != Ok("1") {
        println!("skipped: set ALASKA_QUICKSTART_TEST=1 to build and follow the quick start");
        return;
    }
    if std::net::TcpListener::bind("127.0.0.1:9999").is_err() {
        println!("skipped: port 9999 (the quick start's) is in use");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let (start, after) = quick_start(&readme);
    assert!(start[0].contains("target/release/alaska"), "{start:?}");
    assert!(
        start.iter().any(|c| c.starts_with("cargo test")),
        "{start:?}"
    );

    let base = root.join("target/quickstart");
    let clone = base.join("alaska");
    let _ = std::fs::remove_dir_all(&clone);
    std::fs::create_dir_all(&base).unwrap();
    let out = Command::new("git")
        .args(["clone", "-q"])
        .arg(&root)
        .arg(&clone)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The clone's own `target` folder, as the quick start expects, kept
    // outside the clone so the dependencies are built once.
    let target = base.join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&target, clone.join("target")).unwrap();

    let log_path = base.join("worker.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut worker = Command::new("sh")
        .arg("-c")
        .arg(&start[0])
        .current_dir(&clone)
        .env_remove("CARGO_TARGET_DIR")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = worker.id() as i32;
    let stop = |signal| {
        // SAFETY: signalling the process group we created.
        unsafe { libc::kill(-pgid, signal) };
    };
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("ready:") {
            break;
        }
        if let Some(status) = worker.try_wait().unwrap() {
            panic!("`{}` ended with {status}:\n{text}", start[0]);
        }
        if Instant::now() > deadline {
            stop(libc::SIGKILL);
            panic!("the worker was not ready within 30 minutes:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200)); // bounded poll of the log
    }
    let mut results = Vec::new();
    for cmd in &after {
        let out = sh(&clone, cmd);
        results.push((cmd.clone(), out));
    }
    // The dump's line in the worker's log (what the last assert reads):
    // polled, bounded; a missing line is reported by that assert.
    let logged = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("c = 1")
        && Instant::now() < logged
    {
        std::thread::sleep(Duration::from_millis(50)); // bounded poll (deadline above)
    }
    stop(libc::SIGTERM);
    let ended = Instant::now() + Duration::from_secs(15);
    while worker.try_wait().unwrap().is_none() && Instant::now() < ended {
        std::thread::sleep(Duration::from_millis(50)); // bounded poll of the exit
    }
    if worker.try_wait().unwrap().is_none() {
        stop(libc::SIGKILL);
        let _ = worker.wait();
        panic!("the worker did not stop on SIGTERM");
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    for (cmd, out) in &results {
        assert!(
            out.status.success(),
            "`{cmd}` failed ({}): {}\nworker log:\n{log}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // What the comments promise: the pi reply, and the dump in the log.
    let pi = String::from_utf8_lossy(&results[0].1.stdout);
    assert!(pi.starts_with("3.14159"), "pi replied {pi:?}");
    assert!(log.contains("c = 1"), "dump.lua printed nothing:\n{log}");
}

#[test]
fn comments_are_stripped_outside_quotes_only() {
    assert_eq!(strip_comment("echo '#x' | a   # note"), "echo '#x' | a");
    assert_eq!(strip_comment("a \"b#c\""), "a \"b#c\"");
    let (start, after) = quick_start(
        "## Quick start\n```sh\nrun   # go\ncargo test\n```\ntext\n```sh run worker\none\n\ntwo # c\n```\n## Next\n```sh\nno\n```",
    );
    assert_eq!(start, vec!["run", "cargo test"]);
    assert_eq!(after, vec!["one", "two"]);
}
