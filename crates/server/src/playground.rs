//! The web playground and operator console (docs/playground.md): one page and its static
//! assets, embedded in the binary (no CDN, nothing fetched at run time), served at `/` and
//! `/playground` without credentials (the page asks for the API key and sends it with its own
//! API calls). Every answer carries a strict Content-Security-Policy: scripts, styles and
//! connections to this server only, no inline script, images also from `data:`/`blob:` (plots
//! and downloads), no framing.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;

/// The page's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("../assets/playground/index.html");

/// The assets under `/playground/`: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/playground/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/playground/app.css"),
    ),
    (
        "vendor/codemirror-5.65.18.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/playground/vendor/codemirror-5.65.18.js"),
    ),
    (
        "vendor/codemirror-5.65.18.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/playground/vendor/codemirror-5.65.18.css"),
    ),
    (
        "vendor/CODEMIRROR-LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/playground/vendor/CODEMIRROR-LICENSE"),
    ),
];

/// The playground's routes: the page at `/` and `/playground`, its assets below
/// `/playground/`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/playground", get(page))
        .route("/playground/", get(page))
        .route("/playground/{*file}", get(asset))
}

fn secured(mut resp: Response, cache: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

async fn page() -> Response {
    secured(
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response(),
        "no-cache",
    )
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, ctype, bytes)) => secured(
            ([(header::CONTENT_TYPE, *ctype)], *bytes).into_response(),
            "no-cache",
        ),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such playground file",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_embedded_assets() {
        for part in INDEX.split("/playground/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(
                ASSETS.iter().any(|(n, _, _)| *n == name),
                "index.html names {name:?}, which is not embedded"
            );
        }
        assert!(!INDEX.contains("<script>"), "no inline script (CSP)");
        assert!(!INDEX.contains("style=\""), "no inline style (CSP)");
    }
}
