//! Not yet written.
use axum::response::Response;

use super::Ctx;
use crate::error::{AppError, AppResult};

pub async fn by_conversation(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn catchup(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn send(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn post(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn set_callout(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn get(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn react(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}

pub async fn delete(_ctx: &Ctx) -> AppResult<Response> {
    Err(AppError::NotFound("Endpoint not found"))
}
