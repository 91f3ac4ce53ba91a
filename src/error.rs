//! The service layer's one error type, mapped once to an HTTP response (edge) and once to a
//! `tonic::Status` (gRPC). WebSocket close codes live with the socket code in `hub::ws`.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("Invalid JSON")]
    InvalidJson,
    /// Wrong type, missing required field or over-long value; `field` is a JSON Pointer.
    #[error("Invalid request body at {field:?}")]
    InvalidBody { field: String },
    /// A 400 with its own message (e.g. `emoji is required`).
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("Too many items")]
    TooManyItems,
    #[error("Invalid query parameter {field}")]
    InvalidQuery { field: &'static str },
    #[error("Unauthorized")]
    Unauthorized,
    #[error("Anonymous posting not allowed")]
    AnonymousPostingNotAllowed,
    #[error("IP address blocked")]
    IpBlocked,
    /// 404 with a named error such as `Conversation not found`.
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("Payload too large")]
    PayloadTooLarge,
    #[error("internal: {0}")]
    Internal(#[from] anyhow::Error),
}

impl From<sea_orm::DbErr> for AppError {
    fn from(e: sea_orm::DbErr) -> Self {
        AppError::Internal(anyhow::Error::new(e))
    }
}

impl AppError {
    pub fn invalid_body(field: impl Into<String>) -> Self {
        AppError::InvalidBody {
            field: field.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::InvalidJson
            | AppError::InvalidBody { .. }
            | AppError::BadRequest(_)
            | AppError::TooManyItems
            | AppError::InvalidQuery { .. } => StatusCode::BAD_REQUEST,
            AppError::Unauthorized | AppError::AnonymousPostingNotAllowed => {
                StatusCode::UNAUTHORIZED
            }
            AppError::IpBlocked => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The exact JSON body of the contract (§9). Internal errors need the request path,
    /// so the edge renders them itself (see `edge::internal_error`).
    pub fn body(&self) -> serde_json::Value {
        match self {
            AppError::InvalidJson => json!({"error": "Invalid JSON"}),
            AppError::InvalidBody { field } => {
                json!({"error": "Invalid request body", "field": field})
            }
            AppError::BadRequest(m) => json!({"error": m}),
            AppError::TooManyItems => json!({"error": "Too many items"}),
            AppError::InvalidQuery { field } => {
                json!({"error": "Invalid query parameter", "field": field})
            }
            AppError::Unauthorized => json!({"error": "Unauthorized"}),
            AppError::AnonymousPostingNotAllowed => {
                json!({"error": "Anonymous posting not allowed"})
            }
            AppError::IpBlocked => json!({"error": "IP address blocked"}),
            AppError::NotFound(m) | AppError::Conflict(m) => json!({"error": m}),
            AppError::PayloadTooLarge => json!({"error": "Payload too large"}),
            AppError::Internal(_) => {
                json!({"error": {"message": "Internal server error", "status": 500}})
            }
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(e) = &self {
            tracing::error!(error = %e, "internal error");
        }
        crate::edge::json_response(self.status(), &self.body())
    }
}

impl From<AppError> for tonic::Status {
    fn from(e: AppError) -> Self {
        use tonic::Status;
        match &e {
            AppError::Internal(err) => {
                tracing::error!(error = %err, "internal error");
                Status::internal("Internal server error")
            }
            AppError::Unauthorized | AppError::AnonymousPostingNotAllowed => {
                Status::permission_denied(e.to_string())
            }
            AppError::IpBlocked => Status::permission_denied(e.to_string()),
            AppError::NotFound(m) => Status::not_found(*m),
            AppError::Conflict(m) => Status::already_exists(*m),
            AppError::InvalidBody { field } => {
                Status::invalid_argument(format!("Invalid request body: {field}"))
            }
            _ => Status::invalid_argument(e.to_string()),
        }
    }
}

pub type AppResult<T> = Result<T, AppError>;
