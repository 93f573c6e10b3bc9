//! The demo page (`/`), the dashboard (`/dashboard`) and their assets, embedded in the binary
//! (no CDN, no files to deploy). The pages call the /v1 API with the key given in the URL
//! fragment (`/#key=...`, never sent to the server in the URL) or pasted into the page.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::error::ApiError;
use super::AppState;

const INDEX: &str = include_str!("static/index.html");
const DASHBOARD: &str = include_str!("static/dashboard.html");
const CSS: &str = include_str!("static/app.css");
const COMMON_JS: &str = include_str!("static/common.js");
const PAGE_JS: &str = include_str!("static/page.js");
const DASHBOARD_JS: &str = include_str!("static/dashboard.js");

/// The sample banners (datasets/banners), so that the demo shows images without any setup.
const BANNERS: [(&str, &[u8]); 10] = [
    ("b01.svg", include_bytes!("../../datasets/banners/b01.svg")),
    ("b02.svg", include_bytes!("../../datasets/banners/b02.svg")),
    ("b03.svg", include_bytes!("../../datasets/banners/b03.svg")),
    ("b04.svg", include_bytes!("../../datasets/banners/b04.svg")),
    ("b05.svg", include_bytes!("../../datasets/banners/b05.svg")),
    ("b06.svg", include_bytes!("../../datasets/banners/b06.svg")),
    ("b07.svg", include_bytes!("../../datasets/banners/b07.svg")),
    ("b08.svg", include_bytes!("../../datasets/banners/b08.svg")),
    ("b09.svg", include_bytes!("../../datasets/banners/b09.svg")),
    ("b10.svg", include_bytes!("../../datasets/banners/b10.svg")),
];

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/dashboard", get(|| async { Html(DASHBOARD) }))
        .route("/static/{file}", get(asset))
        .route("/static/banners/{file}", get(banner))
}

fn typed(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (ty, body) = match file.as_str() {
        "app.css" => ("text/css; charset=utf-8", CSS),
        "common.js" => ("text/javascript; charset=utf-8", COMMON_JS),
        "page.js" => ("text/javascript; charset=utf-8", PAGE_JS),
        "dashboard.js" => ("text/javascript; charset=utf-8", DASHBOARD_JS),
        _ => return Err(ApiError::not_found("path", format!("no asset {file:?}"))),
    };
    Ok(typed(ty, body.as_bytes()))
}

async fn banner(Path(file): Path<String>) -> Result<Response, ApiError> {
    BANNERS
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, svg)| typed("image/svg+xml", svg))
        .ok_or_else(|| ApiError::not_found("path", format!("no banner image {file:?}")))
}
