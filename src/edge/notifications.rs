//! Not yet written.
use axum::response::Response;

use super::Ctx;
use crate::error::{AppError, AppResult};

pub async fn unread_count(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn my(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn create(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn mark_read(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn delete_my(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn delete(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}
