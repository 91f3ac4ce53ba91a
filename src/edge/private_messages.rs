//! `/messaging/privatemessages…` (§10.5): JSON in, `service::private_messages`, JSON out.
use axum::response::Response;
use serde_json::json;

use super::input::{Batch, Obj};
use super::{Ctx, bodies, ok_json};
use crate::error::AppResult;
use crate::service::private_messages as pms;

pub async fn create(ctx: &Ctx) -> AppResult<Response> {
    // Check 3 of §9 comes before the body's; the service decides it again.
    crate::service::person(&ctx.caller)?;
    let Batch(items) = ctx.body::<bodies::PrivateMessagesBody>()?;
    let parsed: Vec<pms::NewPrivateMessage> = items
        .into_iter()
        .map(|Obj(item)| pms::NewPrivateMessage {
            to_person_id: item.to_person_id.into(),
            conversation_id: item.conversation_id.into(),
        })
        .collect();
    let rows = pms::create(&ctx.svc, &ctx.caller, &parsed).await?;
    Ok(ok_json(&rows))
}

pub async fn list(ctx: &Ctx) -> AppResult<Response> {
    Ok(ok_json(&pms::list(&ctx.svc, &ctx.caller).await?))
}

pub async fn get(ctx: &Ctx) -> AppResult<Response> {
    Ok(ok_json(
        &pms::get(&ctx.svc, &ctx.caller, ctx.param(0)).await?,
    ))
}

pub async fn delete(ctx: &Ctx) -> AppResult<Response> {
    pms::delete(&ctx.svc, &ctx.caller, ctx.param(0)).await?;
    Ok(ok_json(&json!({"success": true})))
}
