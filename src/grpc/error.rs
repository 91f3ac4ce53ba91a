//! The service layer's errors as gRPC statuses (§12), mapped once.
use tonic::Status;

use crate::error::AppError;

impl From<AppError> for Status {
    fn from(e: AppError) -> Self {
        match &e {
            AppError::Db(_) if e.is_unavailable() => {
                tracing::warn!(error = %e, "database unavailable");
                Status::unavailable("Database unavailable")
            }
            AppError::Db(_) | AppError::Internal(_) => {
                tracing::error!(error = %e, "internal error");
                Status::internal("Internal server error")
            }
            AppError::Unauthorized | AppError::AnonymousPostingNotAllowed | AppError::IpBlocked => {
                Status::permission_denied(e.to_string())
            }
            AppError::NotFound(m) => Status::not_found(*m),
            AppError::Conflict(m) => Status::already_exists(*m),
            AppError::InvalidBody { field } => {
                Status::invalid_argument(format!("Invalid request body: {field}"))
            }
            AppError::InvalidJson
            | AppError::BadRequest(_)
            | AppError::TooManyItems
            | AppError::InvalidQuery { .. }
            | AppError::InvalidPath { .. }
            | AppError::PayloadTooLarge => Status::invalid_argument(e.to_string()),
        }
    }
}
