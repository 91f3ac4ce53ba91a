//! `/messaging/messages…` (§10.3).
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use serde_json::Value;

use super::api::{Body, Input, Query};
use super::input::{self, Obj};
use super::{Ctx, bodies};
use crate::error::{AppError, AppResult};
use crate::service::messages::MessageInput;
use crate::service::model::{Callout, Message};

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

pub async fn by_conversation(ctx: &Ctx<'_>) -> AppResult<Vec<Message>> {
    ctx.svc()
        .conversation_messages(&ctx.caller, ctx.param(0))
        .await
}

pub async fn catchup(
    ctx: &Ctx<'_>,
    Query(q): Query<bodies::CatchupQuery>,
) -> AppResult<Vec<Message>> {
    ctx.svc()
        .catchup(&ctx.caller, ctx.param(0), ctx.param(1), q.since.0)
        .await
}

pub async fn send(ctx: &Ctx<'_>, Body(body): Body<bodies::SendBody>) -> AppResult<Vec<Message>> {
    let items = send_items(body);
    if items.is_empty() {
        return Ok(Vec::new());
    }
    ctx.svc()
        .send_messages(&ctx.caller, ctx.client_ip.as_deref(), items)
        .await
}

pub async fn post(ctx: &Ctx<'_>, Body(body): Body<bodies::PostBody>) -> AppResult<Vec<Message>> {
    let items = post_items(body);
    if items.is_empty() {
        return Ok(Vec::new());
    }
    ctx.svc()
        .post_messages(&ctx.caller, ctx.client_ip.as_deref(), items)
        .await
}

pub async fn set_callout(
    ctx: &Ctx<'_>,
    Body(Obj(c)): Body<bodies::CalloutBody>,
) -> AppResult<Callout> {
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
    ctx.svc().set_callout(&ctx.caller, callout).await
}

pub async fn get(ctx: &Ctx<'_>) -> AppResult<Message> {
    ctx.svc()
        .get_message(&ctx.caller, ctx.param(0), ctx.param(1))
        .await
}

/// The body of `POST …/reactions` (`bodies::ReactBody`): its emoji.
pub struct Emoji(String);

impl Input for Emoji {
    fn read(ctx: &Ctx<'_>) -> AppResult<Self> {
        let v = input::json(&ctx.body)?;
        // Anything but a non-empty string is "required"; a non-empty string failed its length.
        let Obj(reaction) =
            input::typed::<bodies::ReactBody>(&v).map_err(|_| match v.get("emoji") {
                Some(Value::String(s)) if !s.is_empty() => AppError::invalid_body("/emoji"),
                _ => AppError::BadRequest("emoji is required"),
            })?;
        Ok(Emoji(reaction.emoji.into()))
    }

    fn body_schema(g: &mut SchemaGenerator) -> Option<Schema> {
        Some(g.subschema_for::<bodies::ReactBody>())
    }
}

/// Whether the caller's reaction is there after the toggle.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReactionResult {
    message_id: String,
    emoji: String,
    added: bool,
}

pub async fn react(ctx: &Ctx<'_>, Emoji(emoji): Emoji) -> AppResult<ReactionResult> {
    let message_id = ctx.param(0);
    let added = ctx.svc().react(&ctx.caller, message_id, &emoji).await?;
    Ok(ReactionResult {
        message_id: message_id.to_string(),
        emoji,
        added,
    })
}

// Old clients show the message as it is.
#[derive(Serialize, JsonSchema)]
pub struct Deleted {
    message: &'static str,
}

pub async fn delete(ctx: &Ctx<'_>) -> AppResult<Deleted> {
    ctx.svc().delete_message(&ctx.caller, ctx.param(0)).await?;
    Ok(Deleted {
        message: "Message deleted successfully",
    })
}
