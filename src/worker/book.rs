//! The scripts the VMs compiled, for `/v1/status`: written by the VMs,
//! read by the status page. A leaf: it knows nothing of the rest of the
//! worker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// One script as last compiled by a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptInfo {
    /// The file.
    pub path: PathBuf,
    /// Its modification time when compiled: the version in use.
    pub modified: Option<SystemTime>,
    /// When it was compiled last.
    pub compiled: SystemTime,
    /// How many times a VM compiled it (once per VM, and again after each
    /// change).
    pub compiles: u64,
}

/// The scripts the VMs compiled, by subject. VMs write it when they
/// compile (the first run of a subject on each VM, and after each change of
/// the file), so the lock is taken rarely and never on a request's hot path.
#[derive(Clone, Default)]
pub struct ScriptBook(Arc<Mutex<BTreeMap<String, ScriptInfo>>>);

impl std::fmt::Debug for ScriptBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptBook")
            .field("len", &self.len())
            .finish()
    }
}

impl ScriptBook {
    /// A VM compiled `subject` from `path`, modified at `modified`.
    pub fn compiled(&self, subject: &str, path: &Path, modified: Option<SystemTime>) {
        let mut book = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let e = book
            .entry(subject.to_string())
            .or_insert_with(|| ScriptInfo {
                path: path.to_path_buf(),
                modified,
                compiled: SystemTime::now(),
                compiles: 0,
            });
        e.compiles += 1;
        e.compiled = SystemTime::now();
        e.path = path.to_path_buf();
        // VMs compile a file again only when it changed, but one may still
        // compile the version another VM replaced: keep the newest.
        if modified > e.modified {
            e.modified = modified;
        }
    }

    /// How many subjects were compiled.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything, by subject.
    pub fn snapshot(&self) -> BTreeMap<String, ScriptInfo> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
