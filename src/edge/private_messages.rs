//! `/messaging/privatemessages…` (§10.5): JSON in, `service::private_messages`, JSON out.
use axum::response::Response;
use serde_json::json;

use super::{Ctx, body, ok_json};
use crate::error::AppResult;
use crate::service::limits::{MAX_BATCH, MAX_ID};
use crate::service::{self, private_messages as pms};

pub async fn create(ctx: &Ctx) -> AppResult<Response> {
    let me = service::person(&ctx.caller)?;
    let v = ctx.json()?;
    let items = body::array(&v, MAX_BATCH)?;
    let mut parsed = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let o = body::Obj::new(item, format!("/{i}"))?;
        parsed.push(pms::NewPrivateMessage {
            to_person_id: o.req_str("toPersonId", MAX_ID)?,
            conversation_id: o.req_str("conversationId", MAX_ID)?,
        });
    }
    let rows = pms::create(&ctx.svc, me, &parsed).await?;
    Ok(ok_json(&rows))
}

pub async fn list(ctx: &Ctx) -> AppResult<Response> {
    let me = service::person(&ctx.caller)?;
    Ok(ok_json(&pms::list(&ctx.svc, me).await?))
}

pub async fn get(ctx: &Ctx) -> AppResult<Response> {
    let me = service::person(&ctx.caller)?;
    Ok(ok_json(&pms::get(&ctx.svc, me, ctx.param(0)).await?))
}

pub async fn delete(ctx: &Ctx) -> AppResult<Response> {
    let me = service::person(&ctx.caller)?;
    pms::delete(&ctx.svc, me, ctx.param(0)).await?;
    Ok(ok_json(&json!({"success": true})))
}
