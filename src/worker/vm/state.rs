//! The per-request state the API functions reach through the VM's app
//! data (what the running request sent and printed, and the request
//! itself). A leaf of the module graph.

use mlua::Lua;

use crate::worker::types::{Output, Request};

/// Per-request state the API functions reach through the VM's app data.
#[derive(Default)]
pub struct RequestState {
    /// A request runs (the API functions refuse to work otherwise).
    pub(crate) active: bool,
    /// What it sent so far, in order.
    pub(crate) outputs: Vec<Output>,
    /// Their content bytes.
    pub(crate) output_bytes: usize,
    /// Bytes printed by the running request.
    pub(crate) printed: usize,
    /// The request being run: its metadata is read from here when a
    /// script first asks for it.
    pub(crate) current: Option<Request>,
}

/// Reads the request being run (`None` when none runs), for the API
/// functions that need its metadata.
pub(crate) fn current_request<T>(lua: &Lua, f: impl FnOnce(&Request) -> T) -> Option<T> {
    let state = lua.app_data_ref::<RequestState>()?;
    if !state.active {
        return None;
    }
    state.current.as_ref().map(f)
}
