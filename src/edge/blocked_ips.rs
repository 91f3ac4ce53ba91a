//! Not yet written.
use axum::response::Response;

use super::Ctx;
use crate::error::{AppError, AppResult};

pub async fn toggle(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn list(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn clear(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}
