//! What every binary shares for operations: an HTTP server for health,
//! metrics and admin endpoints ([`http`]), a metrics registry read without
//! locks on hot paths and rendered as Prometheus text ([`metrics`]), systemd
//! readiness and watchdog notifications ([`notify`]), and the wake-up pipe a
//! socket-owning thread sleeps on ([`wake`]).
//!
//! The one-owner-per-socket rule holds here too: HTTP threads never touch a
//! ZeroMQ socket. They read counters (atomics) and, when they need the
//! owner of a socket to act (an admin command, a gateway request), send it a
//! message on a channel, poke its [`wake::Waker`], and await the answer on a
//! one-shot [`http::Responder`] the owner completes without blocking.

/// A console page, whole, at build time: the head titled `$title`, the
/// styles and helper script the broker's console and a worker's status
/// page share (`src/ops/assets/`), then the page's `$body` markup and its
/// own `$script`. Nothing is fetched at run time. (The shared files are
/// named from the crate's root: `include_str!` in a macro reads paths
/// from the caller's file.)
macro_rules! console_page {
    ($title:literal, $body:expr, $script:expr) => {
        concat!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
            "<title>",
            $title,
            "</title>\n<style>\n",
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/ops/assets/console.css"
            )),
            "</style>\n</head>\n",
            $body,
            "<script>\n\"use strict\";\n",
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/ops/assets/console.js"
            )),
            $script,
            "</script>\n</body>\n</html>\n",
        )
    };
}
pub(crate) use console_page;

pub mod http;
pub mod metrics;
pub mod notify;
pub mod wake;
