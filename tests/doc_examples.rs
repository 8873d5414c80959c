//! Every example of the README and docs/ marked runnable runs as written.
//!
//! The convention: a fenced block whose info string has the word `run`
//! after its language (` ```sh run `, ` ```lua run `) is run; any other
//! block is left alone, and the text around it says why it cannot run (a
//! sketch, another machine, a daemon that does not end). Attributes after
//! `run`:
//! - `worker` (sh): a worker with its embedded broker is started first,
//!   from the shipped `alaska.cfg` (tcp://127.0.0.1:9999, as the README
//!   says), in the block's scratch folder.
//! - Lua blocks are whole service scripts: saved as
//!   `services/<subject>.lua` (`subject=NAME`, default `example`), then
//!   asked once with `alas -s NAME --wait 5` with `input=JSON` (default
//!   `{}`, no spaces) on stdin; `exit=N` is the exit status expected of
//!   `alas` (default 0, so an example that fails on purpose says so);
//!   `expect="TEXT"`: what `alas` must print (reply or error).
//!
//! A shell, Lua or Python block that is not marked says why in the text
//! just before it (a sentence with "not run by the tests", "a sketch", or
//! naming the test that follows it): [`unmarked_blocks_say_why`].
//!
//! Each block runs in a scratch folder holding a copy of the shipped
//! configurations, `services/` and `runners/`, with the binaries on `PATH`
//! and as `target/release/<name>` (the README's quick start paths), under
//! `bash -eu -o pipefail` with a time limit.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One fenced block.
#[derive(Debug)]
struct Block {
    file: PathBuf,
    line: usize,
    lang: String,
    attrs: Vec<String>,
    code: String,
}

impl Block {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find_map(|a| a.strip_prefix(key)?.strip_prefix('='))
    }
    fn has(&self, word: &str) -> bool {
        self.attrs.iter().any(|a| a == word)
    }
    fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The markdown files: README.md and everything under docs/.
fn pages() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md")];
    let mut dirs = vec![root().join("docs")];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The words of an info string; `key="a value"` is one word (those
/// quotes dropped, any others kept).
fn info_words(info: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in info.chars() {
        match c {
            // Only a value's quotes (`key="..."`) group; JSON's stay.
            '"' if quoted => quoted = false,
            '"' if cur.ends_with('=') => quoted = true,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The fenced blocks of a markdown text.
fn blocks_of(file: &Path, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(info) = t.strip_prefix("```") {
            match open.take() {
                Some(b) => out.push(b),
                None => {
                    let mut words = info_words(info).into_iter();
                    let lang = words.next().unwrap_or_default();
                    open = Some(Block {
                        file: file.strip_prefix(root()).unwrap_or(file).to_path_buf(),
                        line: i + 1,
                        lang,
                        attrs: words.collect(),
                        code: String::new(),
                    });
                }
            }
        } else if let Some(b) = open.as_mut() {
            b.code.push_str(line);
            b.code.push('\n');
        }
    }
    out
}

fn runnable() -> Vec<Block> {
    pages()
        .iter()
        .flat_map(|p| blocks_of(p, &std::fs::read_to_string(p).unwrap()))
        .filter(|b| b.has("run"))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A scratch folder laid out as a fresh clone's top, binaries included.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["alaska.cfg", "alaska-broker.cfg", "alaska-gateway.cfg"] {
        std::fs::copy(root().join(f), dir.path().join(f)).unwrap();
    }
    copy_dir(&root().join("services"), &dir.path().join("services"));
    copy_dir(&root().join("runners"), &dir.path().join("runners"));
    std::fs::create_dir_all(dir.path().join("target")).unwrap();
    std::os::unix::fs::symlink(bin_dir(), dir.path().join("target/release")).unwrap();
    dir
}

fn bin_dir() -> PathBuf {
    assert_cmd::cargo::cargo_bin("alaska")
        .parent()
        .unwrap()
        .to_path_buf()
}

fn path_env() -> String {
    format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A worker with its embedded broker, started in `dir`; stopped on drop.
struct Worker {
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Worker {
    fn start(dir: &Path) -> Worker {
        assert!(
            std::net::TcpListener::bind("127.0.0.1:9999").is_ok(),
            "port 9999 (the README's) is in use: the examples need it free"
        );
        let mut child = Command::new(bin_dir().join("alaska"))
            .arg("-f")
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("ready:") {
                    let _ = tx.send(());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!(
                "the worker was not ready within 30 s:\n{}",
                log.lock().unwrap()
            );
        }
        Worker { child, log }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child: a polite stop, then wait.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` with `input` on stdin for at most `limit`: status and output.
fn run_bounded(mut cmd: Command, input: &[u8], limit: Duration) -> (Option<i32>, String) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // The child may exit before reading its input (a usage error does):
    // a closed pipe is its answer, not the test's failure.
    if let Err(e) = child.stdin.take().unwrap().write_all(input) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn run_block(b: &Block) -> Result<(), String> {
    let dir = scratch();
    match b.lang.as_str() {
        "sh" | "bash" | "console" => {
            let worker = b.has("worker").then(|| Worker::start(dir.path()));
            let mut cmd = Command::new("bash");
            cmd.args(["-eu", "-o", "pipefail", "-c", &b.code])
                .current_dir(dir.path())
                .env("PATH", path_env());
            let (code, out) = run_bounded(cmd, b"", Duration::from_secs(120));
            let log = worker
                .as_ref()
                .map(|w| w.log.lock().unwrap().clone())
                .unwrap_or_default();
            if code != Some(0) {
                return Err(format!("exit {code:?}\n{out}\nworker log:\n{log}"));
            }
            Ok(())
        }
        "lua" => {
            let subject = b.attr("subject").unwrap_or("example");
            std::fs::write(dir.path().join(format!("services/{subject}.lua")), &b.code).unwrap();
            let worker = Worker::start(dir.path());
            let want: i32 = b.attr("exit").map(|e| e.parse().unwrap()).unwrap_or(0);
            let input = b.attr("input").unwrap_or("{}");
            let mut cmd = Command::new(bin_dir().join("alas"));
            cmd.args(["-s", subject, "--wait", "5"])
                .current_dir(dir.path());
            let (code, out) = run_bounded(cmd, input.as_bytes(), Duration::from_secs(30));
            if code != Some(want) {
                let log = worker.log.lock().unwrap().clone();
                return Err(format!(
                    "alas exit {code:?}, expected {want}\n{out}\nworker log:\n{log}"
                ));
            }
            Ok(())
        }
        other => Err(format!(
            "no way to run a `{other}` block (sh, bash, console or lua)"
        )),
    }
}

#[test]
fn the_fence_convention_is_read() {
    let text = "a\n```sh run worker\necho hi\n```\n```lua\nx\n```\n```lua run subject=s input={\"a\":1} exit=7 expect=\"no order\"\nreturn 1\n```\n";
    let bs = blocks_of(Path::new("x.md"), text);
    assert_eq!(bs.len(), 3);
    assert!(bs[0].has("run") && bs[0].has("worker"));
    assert_eq!(bs[0].code, "echo hi\n");
    assert!(!bs[1].has("run"));
    assert_eq!(bs[2].attr("subject"), Some("s"));
    assert_eq!(bs[2].attr("input"), Some("{\"a\":1}"));
    assert_eq!(bs[2].attr("exit"), Some("7"));
    assert_eq!(bs[2].attr("expect"), Some("no order"));
    assert_eq!(bs[2].line, 8);
}

/// A failing example fails the harness (so a pass means something).
#[test]
fn a_failing_block_is_reported() {
    let bs = blocks_of(Path::new("x.md"), "```sh run\nfalse\n```\n");
    assert!(run_block(&bs[0]).is_err());
    let ok = blocks_of(
        Path::new("x.md"),
        "```sh run\ntest -f alaska.cfg && test -x target/release/alas\n```\n",
    );
    run_block(&ok[0]).unwrap();
}

#[test]
fn every_runnable_example_runs() {
    let blocks = runnable();
    assert!(
        blocks.len() >= 3,
        "only {} runnable blocks found in README.md and docs/",
        blocks.len()
    );
    let mut failed = Vec::new();
    for b in &blocks {
        if let Err(e) = run_block(b) {
            failed.push(format!(
                "{} ({} {}):\n{}\n--- the block ---\n{}",
                b.place(),
                b.lang,
                b.attrs.join(" "),
                e,
                b.code
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} examples failed:\n\n{}",
        failed.len(),
        blocks.len(),
        failed.join("\n\n")
    );
    println!("{} runnable examples ran", blocks.len());
}

/// Every shell, Lua and Python block either runs or says, in the few
/// lines before it, why it does not.
#[test]
fn unmarked_blocks_say_why() {
    let mut silent = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for b in blocks_of(&page, &text) {
            if b.has("run")
                || !["sh", "bash", "console", "lua", "python"].contains(&b.lang.as_str())
            {
                continue;
            }
            let from = b.line.saturating_sub(5);
            let before = lines[from..b.line - 1].join(" ").to_lowercase();
            if ![
                "not run by the tests",
                "a sketch",
                "tests/readme_quickstart.rs",
            ]
            .iter()
            .any(|why| before.contains(why))
            {
                silent.push(b.place());
            }
        }
    }
    assert!(
        silent.is_empty(),
        "blocks that neither run nor say why: {silent:?}"
    );
}
