//! The domain's one error type. Each door maps it once: `edge::error` to an HTTP response,
//! `grpc::error` to a `tonic::Status`; the socket's close codes live with the wire code in
//! `hub::socket`. Database errors stay typed (`DbErr`, with the driver's code inside), so that
//! retries and outages are decided by code, never by text.
use sea_orm::DbErr;

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
    /// A path parameter longer than any value of its kind can be.
    #[error("Invalid path parameter {field}")]
    InvalidPath { field: &'static str },
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
    /// The database failed; its kind decides whether that is an outage or a bug.
    #[error("database: {0}")]
    Db(#[from] DbErr),
    /// A failure of this process that no input explains (a task that stopped).
    #[error("internal: {0}")]
    Internal(String),
}

impl AppError {
    pub fn invalid_body(field: impl Into<String>) -> Self {
        AppError::InvalidBody {
            field: field.into(),
        }
    }

    /// The database cannot be reached (connection refused, pool timed out) or ended the
    /// connection (restart, failover, a killed session: `store::outage_of`): the caller may
    /// retry later. Any other failure is a bug or a constraint and stays a 500.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AppError::Db(e) if crate::store::is_unavailable(e))
    }
}

pub type AppResult<T> = Result<T, AppError>;

impl crate::store::DbFailure for AppError {
    fn db_err(&self) -> Option<&DbErr> {
        match self {
            AppError::Db(e) => Some(e),
            _ => None,
        }
    }
}
