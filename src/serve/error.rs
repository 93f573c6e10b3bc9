//! The service's one error type: every failure answers JSON `{error, field, detail}` with a status
//! that says whose fault it is.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::model::FieldError;

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code, e.g. `invalid_parameter`, `token_expired`.
    pub error: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
    /// What is wrong, for a person.
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// Seconds a client should wait before retrying (503 answers).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        error: &str,
        field: Option<&str>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.to_string(),
                field: field.map(str::to_string),
                detail: detail.into(),
            },
            retry_after: None,
        }
    }

    /// A request parameter or body field that breaks a rule.
    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            Some(field),
            detail,
        )
    }

    pub fn not_found(field: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", Some(field), detail)
    }

    pub fn slot_not_configured(tenant: &str, slot: &str) -> Self {
        Self::not_found(
            "slot",
            format!("slot {slot:?} of tenant {tenant:?} is not configured"),
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            Some("authorization"),
            detail,
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", None, detail)
    }

    /// A dependency (store or event log) is down; the client may retry after `retry_after` s.
    pub fn unavailable(error: &str, detail: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, error, None, detail)
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Self::invalid(&e.field, e.rule)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// axum's own rejections (bad JSON, body over the limit, bad query or path) in our shape,
/// keeping their status (400, 413, 415, 422).
fn rejection(status: StatusCode, field: Option<&str>, detail: String) -> ApiError {
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "invalid_body",
    };
    ApiError::new(status, error, field, detail)
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        rejection(r.status(), Some("body"), r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        rejection(r.status(), Some("body"), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        let detail = r.body_text();
        // serde names the parameter in "unknown field `x`" or "x: invalid digit"; say which.
        let field = detail
            .split('`')
            .nth(1)
            .map(str::to_string)
            .unwrap_or_else(|| "query".into());
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            Some(&field),
            detail,
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::new(r.status(), "invalid_path", Some("path"), r.body_text())
    }
}
