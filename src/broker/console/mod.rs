//! The broker's web console: one self-contained HTML page (styles and script
//! inline, no CDN, nothing fetched at run time but the broker's own JSON API)
//! embedded in the binary at build time and served at `GET /` on the
//! broker's HTTP listener (`mlm_server/http/listen`).
//!
//! The page polls `/v1/clients`, `/v1/services`, `/v1/mailboxes`,
//! `/v1/streams`, `/v1/dead` and `/v1/series` every 2 s and draws its charts
//! by hand in SVG. When an admin token is configured it asks for it once (on
//! the first `401`) and keeps it in `sessionStorage`; state changes are sent
//! as JSON with `Authorization: Bearer <token>`.

use crate::ops::http::{HttpRequest, HttpResponse, Reply};

/// The page, embedded at build time so that the binary serves it alone
/// (see [`crate::ops::console_page`]).
pub const INDEX_HTML: &str = crate::ops::console_page!(
    "Alaska broker",
    include_str!("assets/index.html"),
    include_str!("assets/index.js")
);

/// `GET /`: the console page. `no-store` so that a new broker's page is
/// never hidden behind a cached old one.
pub fn index(_: HttpRequest) -> Reply {
    Reply::Now(
        HttpResponse::new(200, "text/html; charset=utf-8", INDEX_HTML)
            .with_header("Cache-Control", "no-store")
            .with_header("X-Content-Type-Options", "nosniff"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::http::Method;

    #[test]
    fn the_page_is_served_whole_and_self_contained() {
        let Reply::Now(r) = index(HttpRequest::new(Method::GET, "/", Vec::new())) else {
            panic!("the page is answered at once");
        };
        assert_eq!(r.status, 200);
        let body = String::from_utf8(r.body.clone()).expect("UTF-8 page");
        assert!(body.starts_with("<!doctype html>"));
        assert!(body.contains("/v1/clients") && body.contains("/v1/series"));
        // Nothing is fetched from elsewhere: no absolute URL in src/href.
        assert!(!body.contains("src=\"http") && !body.contains("href=\"http"));
        assert!(!body.contains("src=\"//") && !body.contains("href=\"//"));
    }
}
