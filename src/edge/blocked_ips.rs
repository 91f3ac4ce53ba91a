//! `/messaging/blockedips…` (§10.7).
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::input::{Batch, Obj};
use super::{Ctx, bodies, ok_json};
use crate::error::AppResult;
use crate::service::blocked_ips::ToggleInput;

pub async fn toggle(ctx: &Ctx) -> AppResult<Response> {
    let Batch(items) = ctx.body::<bodies::BlockedIpsBody>()?;
    let items: Vec<ToggleInput> = items
        .into_iter()
        .map(|Obj(item)| ToggleInput {
            conversation_id: item.conversation_id.into(),
            ip_address: item.ip_address.into(),
            service_id: item.service_id.map(String::from),
        })
        .collect();
    if items.is_empty() {
        return Ok(ok_json(&json!([])));
    }
    Ok(ok_json(
        &ctx.svc.toggle_blocked_ips(&ctx.caller, items).await?,
    ))
}

pub async fn list(ctx: &Ctx) -> AppResult<Response> {
    Ok(ok_json(
        &ctx.svc
            .list_blocked_ips(&ctx.caller, ctx.param(0), ctx.param(1))
            .await?,
    ))
}

pub async fn clear(ctx: &Ctx) -> AppResult<Response> {
    let Batch(items) = ctx.body::<bodies::ClearBody>()?;
    let service_ids = items
        .into_iter()
        .map(|Obj(item)| item.service_id.into())
        .collect();
    ctx.svc.clear_blocked_ips(&ctx.caller, service_ids).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
