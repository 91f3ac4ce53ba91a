//! Not yet written.
use axum::response::Response;

use super::Ctx;
use crate::error::{AppError, AppResult};

pub async fn create(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn list(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn get(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn delete(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}
