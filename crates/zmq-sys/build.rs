//! Builds libzmq 4.3 from the source vendored by `zeromq-src`, with CURVE:
//! linked against the static libsodium that `libsodium-sys-stable` built
//! from its bundled, signature-checked release tarball (no network, no
//! system package).

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PROFILE");
    // `libsodium-sys-stable` (links = "sodium") publishes where it
    // installed the library and its headers. It publishes no include
    // directory when told to use a prebuilt library (SODIUM_LIB_DIR), and
    // libzmq needs sodium.h: say so instead of failing in the C compiler.
    let dep = |key: &str| -> PathBuf {
        match env::var_os(key) {
            Some(v) => PathBuf::from(v),
            None => panic!(
                "{key} is not set: libsodium-sys-stable did not build libsodium from source \
                 (unset SODIUM_LIB_DIR / SODIUM_USE_PKG_CONFIG, or give both the library and \
                 its headers)"
            ),
        }
    };
    let include = dep("DEP_SODIUM_INCLUDE");
    let lib = dep("DEP_SODIUM_LIB");
    // zeromq-src prints the libsodium search path in a form rustc does not
    // read as a path, so give it here.
    println!("cargo:rustc-link-search=native={}", lib.display());
    // libzmq's own compiler warnings are not ours to fix, and a path
    // dependency's build output is shown on every build that reruns it.
    // zeromq-src compiles in this process, so the flags reach it here.
    for var in ["CFLAGS", "CXXFLAGS"] {
        let mut flags = env::var(var).unwrap_or_default();
        flags.push_str(" -w");
        env::set_var(var, flags.trim_start());
    }
    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(lib, include)))
        .build();
}
