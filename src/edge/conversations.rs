//! `/messaging/conversations…` (§10.4).
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Ctx, body, ok_json};
use crate::error::{AppError, AppResult};
use crate::service::conversations::{ConversationInput, StartInput};
use crate::service::limits::{MAX_BATCH, MAX_ID};
use crate::service::messages::MAX_CONTENT_BYTES;

pub async fn current(ctx: &Ctx) -> AppResult<Response> {
    let c = ctx
        .svc
        .current_conversation(&ctx.caller, ctx.param(0), ctx.param(1), ctx.param(2))
        .await?;
    Ok(ok_json(&c))
}

pub async fn ensure(ctx: &Ctx) -> AppResult<Response> {
    let v = ctx.json()?;
    let o = body::Obj::new(&v, String::new())?;
    let t = o.opt_str("contentType", 45)?.unwrap_or_default();
    let id = o.opt_str("contentId", 255)?.unwrap_or_default();
    Ok(ok_json(
        &ctx.svc.ensure_conversation(&ctx.caller, &t, &id).await?,
    ))
}

pub async fn save(ctx: &Ctx) -> AppResult<Response> {
    let v = ctx.json()?;
    let arr = body::array(&v, MAX_BATCH)?;
    let mut items = Vec::with_capacity(arr.len());
    for (i, item) in arr.iter().enumerate() {
        let o = body::Obj::new(item, format!("/{i}"))?;
        o.opt_str("churchId", MAX_ID)?;
        let id = o.opt_str("id", MAX_ID)?.filter(|s| !s.is_empty());
        // A new conversation names its content; an update may leave it out.
        let (content_type, content_id) = match id {
            Some(_) => (o.opt_str("contentType", 45)?, o.opt_str("contentId", 255)?),
            None => (
                Some(o.req_str("contentType", 45)?),
                Some(o.req_str("contentId", 255)?),
            ),
        };
        items.push(ConversationInput {
            id,
            content_type,
            content_id,
            title: o.opt_str("title", 255)?,
            group_id: o.opt_str("groupId", MAX_ID)?,
            visibility: o.opt_str("visibility", 45)?,
            allow_anonymous_posts: o.opt_bool("allowAnonymousPosts")?,
        });
    }
    if items.is_empty() {
        return Ok(ok_json(&json!([])));
    }
    Ok(ok_json(
        &ctx.svc.save_conversations(&ctx.caller, items).await?,
    ))
}

pub async fn get(ctx: &Ctx) -> AppResult<Response> {
    Ok(ok_json(
        &ctx.svc
            .get_conversation(&ctx.caller, ctx.param(0), ctx.param(1))
            .await?,
    ))
}

pub async fn by_content(ctx: &Ctx) -> AppResult<Response> {
    let list = ctx
        .svc
        .conversations_for_content(&ctx.caller, ctx.param(0), ctx.param(1), ctx.param(2))
        .await?;
    Ok(ok_json(&list))
}

fn query_number(ctx: &Ctx, name: &'static str, default: u64, max: u64) -> AppResult<u64> {
    match ctx.query(name) {
        None => Ok(default),
        Some(s) => s
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or(AppError::InvalidQuery { field: name }),
    }
}

pub async fn messages_by_content(ctx: &Ctx) -> AppResult<Response> {
    let page = query_number(ctx, "page", 1, 1_000_000)?;
    let limit = query_number(ctx, "limit", 20, 100)?;
    let list = ctx
        .svc
        .conversations_with_messages(&ctx.caller, ctx.param(0), ctx.param(1), page, limit)
        .await?;
    Ok(ok_json(&list))
}

pub async fn timeline(ctx: &Ctx) -> AppResult<Response> {
    let ids: Vec<String> = ctx
        .query("ids")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if ids.len() > 100 || ids.iter().any(|i| i.chars().count() > MAX_ID) {
        return Err(AppError::InvalidQuery { field: "ids" });
    }
    let list = ctx.svc.timeline(&ctx.caller, ids).await?;
    let out: Vec<Value> = list
        .into_iter()
        .map(|t| json!({"id": t.conversation.id, "postCount": t.conversation.post_count, "messages": t.messages}))
        .collect();
    Ok(ok_json(&out))
}

/// Group posts omit `firstPostId` and `lastPostId` (the messages carry them).
fn posts_json(list: Vec<crate::service::conversations::Timeline>) -> Vec<Value> {
    list.into_iter()
        .map(|t| {
            let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.shift_remove("firstPostId");
                o.shift_remove("lastPostId");
            }
            v
        })
        .collect()
}

pub async fn posts(ctx: &Ctx) -> AppResult<Response> {
    Ok(ok_json(&posts_json(
        ctx.svc.group_posts(&ctx.caller, None).await?,
    )))
}

pub async fn posts_by_group(ctx: &Ctx) -> AppResult<Response> {
    Ok(ok_json(&posts_json(
        ctx.svc.group_posts(&ctx.caller, Some(ctx.param(0))).await?,
    )))
}

pub async fn start(ctx: &Ctx) -> AppResult<Response> {
    let v = ctx.json()?;
    let o = body::Obj::new(&v, String::new())?;
    let input = StartInput {
        group_id: o.opt_str("groupId", MAX_ID)?.filter(|s| !s.is_empty()),
        content_type: o.req_str("contentType", 45)?,
        content_id: o.req_str("contentId", 255)?,
        title: o.opt_str("title", 255)?,
        comment: match v.get("comment") {
            Some(Value::String(s)) if s.len() <= MAX_CONTENT_BYTES => s.clone(),
            _ => return Err(AppError::invalid_body("/comment")),
        },
    };
    Ok(ok_json(
        &ctx.svc.start_conversation(&ctx.caller, input).await?,
    ))
}

pub async fn delete(ctx: &Ctx) -> AppResult<Response> {
    ctx.svc
        .delete_conversation(&ctx.caller, ctx.param(0), ctx.param(1))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
