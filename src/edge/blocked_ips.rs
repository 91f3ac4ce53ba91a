//! `/messaging/blockedips…` (§10.7).
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Ctx, body, ok_json};
use crate::error::AppResult;
use crate::service::blocked_ips::ToggleInput;
use crate::service::limits::{MAX_BATCH, MAX_ID};

pub async fn toggle(ctx: &Ctx) -> AppResult<Response> {
    let v = ctx.json()?;
    let arr = body::array(&v, MAX_BATCH)?;
    let mut items = Vec::with_capacity(arr.len());
    for (i, item) in arr.iter().enumerate() {
        let o = body::Obj::new(item, format!("/{i}"))?;
        items.push(ToggleInput {
            conversation_id: o.req_str("conversationId", MAX_ID)?,
            ip_address: o.req_str("ipAddress", 45)?,
            service_id: o.opt_str("serviceId", MAX_ID)?,
        });
    }
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
    let v = ctx.json()?;
    let arr = body::array(&v, MAX_BATCH)?;
    let mut service_ids = Vec::with_capacity(arr.len());
    for (i, item) in arr.iter().enumerate() {
        let o = body::Obj::new(item, format!("/{i}"))?;
        o.opt_str("churchId", MAX_ID)?;
        service_ids.push(o.req_str("serviceId", MAX_ID)?);
    }
    ctx.svc.clear_blocked_ips(&ctx.caller, service_ids).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
