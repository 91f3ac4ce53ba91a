//! `/messaging/messages…` (§10.3).
use axum::response::Response;
use serde_json::{Value, json};

use super::input::{self, Obj};
use super::{Ctx, bodies, ok_json};
use crate::error::{AppError, AppResult};
use crate::service::messages::MessageInput;
use crate::service::model::Callout;

/// `/send` items: `id` is read for its type only, a new message is always created.
fn send_items(body: bodies::SendBody) -> Vec<MessageInput> {
    body.0
        .into_iter()
        .map(|Obj(item)| MessageInput {
            id: None,
            conversation_id: item.conversation_id.into(),
            content: item.content.into(),
            display_name: item.display_name.map(String::from),
            message_type: item.message_type.map(String::from),
        })
        .collect()
}

/// `POST /messages` items: a non-empty `id` is an edit, whose conversation is the
/// message's own.
fn post_items(body: bodies::PostBody) -> Vec<MessageInput> {
    body.0
        .into_iter()
        .map(|Obj(item)| MessageInput {
            id: item.id.map(String::from).filter(|s| !s.is_empty()),
            conversation_id: item.conversation_id.map(String::from).unwrap_or_default(),
            content: item.content.into(),
            display_name: item.display_name.map(String::from),
            message_type: item.message_type.map(String::from),
        })
        .collect()
}

pub async fn by_conversation(ctx: &Ctx) -> AppResult<Response> {
    Ok(ok_json(
        &ctx.svc
            .conversation_messages(&ctx.caller, ctx.param(0))
            .await?,
    ))
}

pub async fn catchup(ctx: &Ctx) -> AppResult<Response> {
    let since = ctx.query::<bodies::CatchupQuery>()?.since.0;
    Ok(ok_json(
        &ctx.svc
            .catchup(&ctx.caller, ctx.param(0), ctx.param(1), since)
            .await?,
    ))
}

pub async fn send(ctx: &Ctx) -> AppResult<Response> {
    let items = send_items(ctx.body()?);
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
    let items = post_items(ctx.body()?);
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
    let Obj(c) = ctx.body::<bodies::CalloutBody>()?;
    let callout = Callout {
        id: c.id.map(String::from),
        church_id: None,
        conversation_id: Some(c.conversation_id.into()),
        person_id: c.person_id.map(String::from),
        display_name: c.display_name.map(String::from),
        time_sent: c.time_sent.map(String::from),
        time_updated: c.time_updated.map(String::from),
        message_type: c.message_type.map(String::from),
        content: c.content.map(String::from),
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
    let v = input::json(&ctx.body)?;
    // Anything but a non-empty string is "required"; a non-empty string failed its length.
    let Obj(reaction) =
        input::typed::<bodies::ReactBody>(&v).map_err(|_| match v.get("emoji") {
            Some(Value::String(s)) if !s.is_empty() => AppError::invalid_body("/emoji"),
            _ => AppError::BadRequest("emoji is required"),
        })?;
    let emoji = String::from(reaction.emoji);
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
