//! The browser client, embedded in the binary: pages and ES modules served from memory.
//!
//! Only the files listed here are served; any other name is a 404. No build step: the files in
//! `crates/dais-server/assets/` are what the browser gets.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../assets/index.html")),
    ("speak.html", "text/html; charset=utf-8", include_str!("../assets/speak.html")),
    ("watch.html", "text/html; charset=utf-8", include_str!("../assets/watch.html")),
    ("moderate.html", "text/html; charset=utf-8", include_str!("../assets/moderate.html")),
    ("dais.js", "text/javascript; charset=utf-8", include_str!("../assets/dais.js")),
    ("index.js", "text/javascript; charset=utf-8", include_str!("../assets/index.js")),
    ("speak.js", "text/javascript; charset=utf-8", include_str!("../assets/speak.js")),
    ("watch.js", "text/javascript; charset=utf-8", include_str!("../assets/watch.js")),
    ("moderate.js", "text/javascript; charset=utf-8", include_str!("../assets/moderate.js")),
    ("ui.js", "text/javascript; charset=utf-8", include_str!("../assets/ui.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../assets/style.css")),
];

/// The response for one embedded file, or 404.
pub fn page(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, body)) => {
            ([(header::CONTENT_TYPE, *mime), (header::CACHE_CONTROL, "no-cache")], *body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
