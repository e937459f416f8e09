//! The web UI: hand-written HTML, CSS and JavaScript under `crates/mgmt/ui/`, embedded in the
//! binary at build time (no build step, no CDN: it works offline) and served at `/` and
//! `/ui/<file>`. The pages talk only to the HTTP API with the user's basic-auth credentials.
//!
//! Owns: the asset table, their content types and cache header, and the header rule that
//! keeps browsers from popping up their own login dialog on the UI's API calls. Must not
//! touch: any `/api/...` route or broker state.

use axum::extract::{Path, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

/// The header the UI's `fetch` calls carry (`lib.js`).
pub const UI_REQUEST_HEADER: &str = "x-warren-ui";
/// Marks, for the UI, a 401 that means "wrong credentials" (see `no_browser_login_prompt`).
pub const LOGIN_FAILED_HEADER: &str = "x-warren-login-failed";
/// Assets may be cached briefly: the binary can be upgraded under the same URL.
const CACHE_CONTROL: &str = "public, max-age=300";

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// Every file of the UI: `/ui/<name>`, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", JAVASCRIPT, include_str!("../ui/app.js")),
    ("lib.js", JAVASCRIPT, include_str!("../ui/lib.js")),
    ("overview.js", JAVASCRIPT, include_str!("../ui/overview.js")),
    (
        "connections.js",
        JAVASCRIPT,
        include_str!("../ui/connections.js"),
    ),
    (
        "exchanges.js",
        JAVASCRIPT,
        include_str!("../ui/exchanges.js"),
    ),
    ("queues.js", JAVASCRIPT, include_str!("../ui/queues.js")),
    ("messages.js", JAVASCRIPT, include_str!("../ui/messages.js")),
    ("admin.js", JAVASCRIPT, include_str!("../ui/admin.js")),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../ui/style.css"),
    ),
];

const INDEX_HTML: &str = include_str!("../ui/index.html");

/// `/` and `/ui/{file}`; nothing under `/api`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/ui/", get(index))
        .route("/ui/{*file}", get(asset))
}

async fn index() -> Response {
    // The page itself is not cached, so an upgraded binary's assets are picked up.
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, CACHE_CONTROL),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such UI file\n").into_response(),
    }
}

/// A 401 for wrong credentials carries `WWW-Authenticate: Basic`, which makes browsers show
/// their own login dialog even for `fetch` calls; the UI has its own login form, so its calls
/// get the 401 without it, and `LOGIN_FAILED_HEADER` instead: a 401 without it is a refusal
/// (tags, permissions), which must not log the UI out.
pub async fn no_browser_login_prompt(request: Request, next: Next) -> Response {
    let from_ui = request.headers().contains_key(UI_REQUEST_HEADER);
    let mut response = next.run(request).await;
    if from_ui
        && response
            .headers_mut()
            .remove(header::WWW_AUTHENTICATE)
            .is_some()
    {
        response
            .headers_mut()
            .insert(LOGIN_FAILED_HEADER, HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn fetch(path: &str, ui_header: bool) -> (StatusCode, axum::http::HeaderMap, String) {
        let mut req = Request::get(path);
        if ui_header {
            req = req.header(super::UI_REQUEST_HEADER, "1");
        }
        let response = crate::tests::api()
            .app
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn serves_the_page_and_its_assets() {
        let (s, headers, body) = fetch("/", false).await;
        assert_eq!(s, StatusCode::OK);
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(body.contains("/ui/app.js"));

        let (s, headers, body) = fetch("/ui/app.js", false).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert!(headers.contains_key(header::CACHE_CONTROL));
        assert!(body.contains("import"));

        let (s, headers, _) = fetch("/ui/style.css", false).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
    }

    #[tokio::test]
    async fn unknown_assets_are_404_and_api_paths_are_not_shadowed() {
        for path in ["/ui/nope.js", "/ui/../Cargo.toml", "/ui/app.js/x"] {
            let (s, _, _) = fetch(path, false).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        }
        // Still the API's answers: JSON 404 and 401 with the challenge.
        let (s, _, body) = fetch("/api/nope", false).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(body.contains("not_found"));
        let (s, headers, _) = fetch("/api/whoami", false).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key(header::WWW_AUTHENTICATE));
    }

    #[tokio::test]
    async fn ui_calls_get_no_browser_login_prompt() {
        let (s, headers, body) = fetch("/api/whoami", true).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(!headers.contains_key(header::WWW_AUTHENTICATE));
        assert!(headers.contains_key(super::LOGIN_FAILED_HEADER));
        assert!(body.contains("not_authorised"));
    }
}
