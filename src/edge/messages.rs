//! `/messaging/messages…` (§10.3).
use axum::response::Response;
use serde_json::{Value, json};

use super::{Ctx, body, ok_json};
use crate::error::{AppError, AppResult};
use crate::service::limits::{MAX_BATCH, MAX_ID};
use crate::service::messages::{MAX_CONTENT_BYTES, MAX_EMOJI, MessageInput};
use crate::service::model::Callout;

/// `content` is limited in UTF-8 bytes; every other field in characters (§9).
fn content(o: &body::Obj, ptr: &str, v: &Value) -> AppResult<String> {
    match v.get("content") {
        Some(Value::String(s)) if s.len() <= MAX_CONTENT_BYTES => Ok(s.clone()),
        _ => {
            o.req_str_any("content", usize::MAX)?;
            Err(AppError::invalid_body(format!("{ptr}/content")))
        }
    }
}

fn items(ctx: &Ctx, allow_id: bool) -> AppResult<Vec<MessageInput>> {
    let v = ctx.json()?;
    let arr = body::array(&v, MAX_BATCH)?;
    let mut out = Vec::with_capacity(arr.len());
    for (i, item) in arr.iter().enumerate() {
        let ptr = format!("/{i}");
        let o = body::Obj::new(item, ptr.clone())?;
        // Read for their type only: the server sets them.
        o.opt_str("churchId", MAX_ID)?;
        o.opt_str("personId", MAX_ID)?;
        let id = o
            .opt_str("id", MAX_ID)?
            .filter(|s| allow_id && !s.is_empty());
        // An edit names its message; its conversation is the message's own.
        let conversation_id = match id {
            Some(_) => o.opt_str("conversationId", MAX_ID)?.unwrap_or_default(),
            None => o.req_str("conversationId", MAX_ID)?,
        };
        out.push(MessageInput {
            id,
            conversation_id,
            content: content(&o, &ptr, item)?,
            display_name: o.opt_str("displayName", 45)?,
            message_type: o.opt_str("messageType", 45)?,
        });
    }
    Ok(out)
}

pub async fn by_conversation(ctx: &Ctx) -> AppResult<Response> {
    Ok(ok_json(
        &ctx.svc
            .conversation_messages(&ctx.caller, ctx.param(0))
            .await?,
    ))
}

pub async fn catchup(ctx: &Ctx) -> AppResult<Response> {
    let since = match ctx.query("since").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            crate::time::parse_rfc3339_ms(&s).ok_or(AppError::InvalidQuery { field: "since" })?,
        ),
    };
    Ok(ok_json(
        &ctx.svc
            .catchup(&ctx.caller, ctx.param(0), ctx.param(1), since)
            .await?,
    ))
}

pub async fn send(ctx: &Ctx) -> AppResult<Response> {
    let items = items(ctx, false)?;
    if items.is_empty() {
        return Ok(ok_json(&json!([])));
    }
    Ok(ok_json(
        &ctx.svc
            .send_messages(&ctx.caller, ctx.client_ip.as_deref(), items)
            .await?,
    ))
}

pub async fn post(ctx: &Ctx) -> AppResult<Response> {
    let items = items(ctx, true)?;
    if items.is_empty() {
        return Ok(ok_json(&json!([])));
    }
    Ok(ok_json(
        &ctx.svc
            .post_messages(&ctx.caller, ctx.client_ip.as_deref(), items)
            .await?,
    ))
}

pub async fn set_callout(ctx: &Ctx) -> AppResult<Response> {
    let v = ctx.json()?;
    let o = body::Obj::new(&v, String::new())?;
    let content = match v.get("content") {
        None | Some(Value::Null) => None,
        Some(_) => Some(content(&o, "", &v)?),
    };
    let callout = Callout {
        id: o.opt_str("id", MAX_ID)?,
        church_id: None,
        conversation_id: Some(o.req_str("conversationId", MAX_ID)?),
        person_id: o.opt_str("personId", MAX_ID)?,
        display_name: o.opt_str("displayName", 45)?,
        time_sent: o.opt_str("timeSent", 64)?,
        time_updated: o.opt_str("timeUpdated", 64)?,
        message_type: o.opt_str("messageType", 45)?,
        content,
    };
    Ok(ok_json(&ctx.svc.set_callout(&ctx.caller, callout).await?))
}

pub async fn get(ctx: &Ctx) -> AppResult<Response> {
    Ok(ok_json(
        &ctx.svc
            .get_message(&ctx.caller, ctx.param(0), ctx.param(1))
            .await?,
    ))
}

pub async fn react(ctx: &Ctx) -> AppResult<Response> {
    let v = ctx.json()?;
    let emoji = match v.get("emoji") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(AppError::BadRequest("emoji is required")),
    };
    if emoji.chars().count() > MAX_EMOJI {
        return Err(AppError::invalid_body("/emoji"));
    }
    let message_id = ctx.param(0);
    let added = ctx.svc.react(&ctx.caller, message_id, &emoji).await?;
    Ok(ok_json(
        &json!({"messageId": message_id, "emoji": emoji, "added": added}),
    ))
}

pub async fn delete(ctx: &Ctx) -> AppResult<Response> {
    ctx.svc.delete_message(&ctx.caller, ctx.param(0)).await?;
    Ok(ok_json(&json!({"message": "Message deleted successfully"})))
}
