//! `/messaging/conversations…` (§10.4).
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::input::{Batch, Obj};
use super::{Ctx, bodies, ok_json};
use crate::error::AppResult;
use crate::service::conversations::{ConversationInput, StartInput};

pub async fn current(ctx: &Ctx) -> AppResult<Response> {
    let c = ctx
        .svc
        .current_conversation(&ctx.caller, ctx.param(0), ctx.param(1), ctx.param(2))
        .await?;
    Ok(ok_json(&c))
}

pub async fn ensure(ctx: &Ctx) -> AppResult<Response> {
    let Obj(body) = ctx.body::<bodies::EnsureBody>()?;
    let t = body.content_type.map(String::from).unwrap_or_default();
    let id = body.content_id.map(String::from).unwrap_or_default();
    Ok(ok_json(
        &ctx.svc.ensure_conversation(&ctx.caller, &t, &id).await?,
    ))
}

pub async fn save(ctx: &Ctx) -> AppResult<Response> {
    let Batch(items) = ctx.body::<bodies::SaveBody>()?;
    // A new conversation names its content (checked by the type); an update may leave it out.
    let items: Vec<ConversationInput> = items
        .into_iter()
        .map(|Obj(item)| ConversationInput {
            id: item.id.map(String::from).filter(|s| !s.is_empty()),
            content_type: item.content_type.map(String::from),
            content_id: item.content_id.map(String::from),
            title: item.title.map(String::from),
            group_id: item.group_id.map(String::from),
            visibility: item.visibility.map(String::from),
            allow_anonymous_posts: item.allow_anonymous_posts.map(|f| f.0),
        })
        .collect();
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

pub async fn messages_by_content(ctx: &Ctx) -> AppResult<Response> {
    let q = ctx.query::<bodies::PageQuery>()?;
    let (page, limit) = (q.page.0, q.limit.0);
    let list = ctx
        .svc
        .conversations_with_messages(&ctx.caller, ctx.param(0), ctx.param(1), page, limit)
        .await?;
    Ok(ok_json(&list))
}

pub async fn timeline(ctx: &Ctx) -> AppResult<Response> {
    let ids = ctx.query::<bodies::TimelineQuery>()?.ids.0;
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
    let Obj(body) = ctx.body::<bodies::StartBody>()?;
    let input = StartInput {
        group_id: body.group_id.map(String::from).filter(|s| !s.is_empty()),
        content_type: body.content_type.into(),
        content_id: body.content_id.into(),
        title: body.title.map(String::from),
        comment: body.comment.into(),
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
