//! The service layer's errors as HTTP responses (§9), mapped once.
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::json;

use super::{framework_error, json_response};
use crate::error::AppError;

/// The response for an error of a request to `path`.
pub fn error_response(e: AppError, path: &str) -> Response {
    let (status, body) = match &e {
        AppError::InvalidJson => (400, json!({"error": "Invalid JSON"})),
        AppError::InvalidBody { field } => (
            400,
            json!({"error": "Invalid request body", "field": field}),
        ),
        AppError::BadRequest(m) => (400, json!({"error": m})),
        AppError::TooManyItems => (400, json!({"error": "Too many items"})),
        AppError::InvalidQuery { field } => (
            400,
            json!({"error": "Invalid query parameter", "field": field}),
        ),
        AppError::InvalidPath { field } => (
            400,
            json!({"error": "Invalid path parameter", "field": field}),
        ),
        AppError::Unauthorized => (401, json!({"error": "Unauthorized"})),
        AppError::AnonymousPostingNotAllowed => {
            (401, json!({"error": "Anonymous posting not allowed"}))
        }
        AppError::IpBlocked => (403, json!({"error": "IP address blocked"})),
        AppError::NotFound(m) => (404, json!({"error": m})),
        AppError::Conflict(m) => (409, json!({"error": m})),
        AppError::PayloadTooLarge => (413, json!({"error": "Payload too large"})),
        AppError::Db(_) if e.is_unavailable() => {
            tracing::warn!(error = %e, %path, "database unavailable");
            let mut resp = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "Database unavailable"}),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return resp;
        }
        AppError::Db(_) | AppError::Internal(_) => {
            tracing::error!(error = %e, %path, "request failed");
            return framework_error(500, "Internal server error", path);
        }
    };
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        &body,
    )
}
