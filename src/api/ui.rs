//! The admin dashboard (`GET /ui`): three static files compiled into the
//! binary (no CDN, no build step). The page talks to the admin API with the
//! token the admin types in; it holds no secret of its own.
//!
//! Every URL the page uses is relative (`ui/app.js`, `admin/nodes`), so it
//! works unchanged behind a reverse proxy that mounts imroute under a path.

use poem::{http::StatusCode, Response};

pub const INDEX_HTML: &str = include_str!("../../ui/index.html");
pub const APP_JS: &str = include_str!("../../ui/app.js");
pub const APP_CSS: &str = include_str!("../../ui/app.css");

/// Scripts and styles come only from the page's own files: nothing inline,
/// nothing from elsewhere, no framing.
pub const UI_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn file(body: &'static str, content_type: &'static str) -> Response {
    Response::builder()
        .content_type(content_type)
        .header(poem::http::header::CACHE_CONTROL, "no-cache")
        .body(body)
}

/// A relative redirect (kept relative so a path prefix added by a proxy
/// survives it).
fn redirect(to: &'static str) -> Response {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(poem::http::header::LOCATION, to)
        .body(())
}

/// The dashboard's files, and `/` sending browsers to it; `None` for any
/// other path.
pub fn serve(path: &str) -> Option<Response> {
    Some(match path {
        "/" => redirect("ui"),
        "/ui" => file(INDEX_HTML, "text/html; charset=utf-8"),
        "/ui/" => redirect("../ui"),
        "/ui/app.js" => file(APP_JS, "text/javascript; charset=utf-8"),
        "/ui/app.css" => file(APP_CSS, "text/css; charset=utf-8"),
        _ => return None,
    })
}
