//! Not yet written.
use axum::response::Response;

use super::Ctx;
use crate::error::{AppError, AppResult};

pub async fn current(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn ensure(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn save(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn get(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn by_content(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn messages_by_content(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn timeline(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn posts(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn posts_by_group(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn start(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn delete(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}
