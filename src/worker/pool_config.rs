//! The settings of the VM pool and of each VM ([`PoolConfig`]), apart
//! from the types the VMs pass around so that those stay a leaf (the
//! settings name the shared parts: the script book, `alaska.call`'s and
//! `alaska.http`'s [`super::reach::Reach`]).

use std::time::Duration;

/// Settings of the VM pool and of each VM. [`PoolConfig::default`] holds
/// the budget defaults.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Number of VMs (threads).
    pub size: usize,
    /// Jobs that may wait for a VM.
    pub backlog: usize,
    /// Where `<subject>.lua` scripts live.
    pub scripts_dir: std::path::PathBuf,
    /// Extra directories for `require` (prepended to `package.path`).
    pub lua_path: Vec<std::path::PathBuf>,
    /// Where `require` may load C modules from (`package.cpath`); `None`:
    /// no C modules (native code runs outside the time budget).
    pub lua_cpath: Option<String>,
    /// Allow `os.execute` and `io.popen`.
    pub processes: bool,
    /// Time budget of one request.
    pub timeout: Duration,
    /// Memory limit of one VM, bytes.
    pub memory: usize,
    /// Size of `alaska.shared`, bytes.
    pub shared_bytes: usize,
    /// Stream `send` uses when none is given.
    pub default_stream: String,
    /// Mailbox `sendTo` uses when none is given.
    pub default_mailbox: String,
    /// Where the VMs record each script they compile, for `/v1/status`.
    pub book: super::book::ScriptBook,
    /// `alaska.call`, `alaska.http`, `alaska.schedule`: their settings, the
    /// way to the hub and the HTTP client, shared by every VM.
    pub reach: std::sync::Arc<super::reach::Reach>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: 4,
            backlog: 64,
            scripts_dir: std::path::PathBuf::from("services"),
            lua_path: Vec::new(),
            lua_cpath: None,
            processes: false,
            timeout: Duration::from_secs(5),
            memory: 64 << 20,
            shared_bytes: 4 << 20,
            default_stream: "aw.res".into(),
            default_mailbox: "aw.res".into(),
            book: Default::default(),
            reach: Default::default(),
        }
    }
}
