//! The binaries as a user runs them: alas, alaska, configuration files,
//! packaging, inspection, the gateway, CURVE and the ACL, the console,
//! systemd notify.
//!
//! One test binary for the area (issue 22: each binary links the whole
//! crate); each old test file is a module of it, in this folder.

#[path = "../common/mod.rs"]
mod common;
#[path = "../ops_support/mod.rs"]
mod ops_support;

mod alas_cli;
mod alaska_bin;
mod config_files;
mod console;
mod gateway;
mod inspect;
mod ops;
mod packaging;
mod security;
