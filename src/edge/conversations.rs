//! `/messaging/conversations…` (§10.4).
use schemars::JsonSchema;
use serde::Serialize;

use super::api::{Body, NoContent, Query};
use super::input::{Batch, Obj};
use super::{Ctx, bodies};
use crate::error::AppResult;
use crate::service::conversations::{ConversationInput, StartInput, Timeline};
use crate::service::model::{
    Conversation, ConversationWithMessages, Message, MessageWithReactions,
};

pub async fn current(ctx: &Ctx<'_>) -> AppResult<Conversation> {
    ctx.svc()
        .current_conversation(&ctx.caller, ctx.param(0), ctx.param(1), ctx.param(2))
        .await
}

pub async fn ensure(
    ctx: &Ctx<'_>,
    Body(Obj(body)): Body<bodies::EnsureBody>,
) -> AppResult<Conversation> {
    let t = body.content_type.map(String::from).unwrap_or_default();
    let id = body.content_id.map(String::from).unwrap_or_default();
    ctx.svc().ensure_conversation(&ctx.caller, &t, &id).await
}

pub async fn save(
    ctx: &Ctx<'_>,
    Body(Batch(items)): Body<bodies::SaveBody>,
) -> AppResult<Vec<Conversation>> {
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
        return Ok(Vec::new());
    }
    ctx.svc().save_conversations(&ctx.caller, items).await
}

pub async fn get(ctx: &Ctx<'_>) -> AppResult<Conversation> {
    ctx.svc()
        .get_conversation(&ctx.caller, ctx.param(0), ctx.param(1))
        .await
}

pub async fn by_content(ctx: &Ctx<'_>) -> AppResult<Vec<Conversation>> {
    ctx.svc()
        .conversations_for_content(&ctx.caller, ctx.param(0), ctx.param(1), ctx.param(2))
        .await
}

pub async fn messages_by_content(
    ctx: &Ctx<'_>,
    Query(q): Query<bodies::PageQuery>,
) -> AppResult<Vec<ConversationWithMessages<MessageWithReactions>>> {
    let (page, limit) = (q.page.0, q.limit.0);
    ctx.svc()
        .conversations_with_messages(&ctx.caller, ctx.param(0), ctx.param(1), page, limit)
        .await
}

/// A conversation of the timeline: its id and count with its first and last message.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineItem {
    id: String,
    post_count: i32,
    messages: Vec<Message>,
}

pub async fn timeline(
    ctx: &Ctx<'_>,
    Query(q): Query<bodies::TimelineQuery>,
) -> AppResult<Vec<TimelineItem>> {
    let list = ctx.svc().timeline(&ctx.caller, q.ids.0).await?;
    Ok(list
        .into_iter()
        .map(|t| TimelineItem {
            id: t.conversation.id,
            post_count: t.conversation.post_count,
            messages: t.messages,
        })
        .collect())
}

/// A group post: its conversation without `firstPostId` and `lastPostId` (the messages
/// carry them), then its messages.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupPost {
    id: String,
    church_id: String,
    content_type: Option<String>,
    content_id: Option<String>,
    title: Option<String>,
    date_created: String,
    group_id: Option<String>,
    visibility: Option<String>,
    post_count: i32,
    allow_anonymous_posts: bool,
    messages: Vec<Message>,
}

impl From<Timeline> for GroupPost {
    fn from(t: Timeline) -> Self {
        let c = t.conversation;
        GroupPost {
            id: c.id,
            church_id: c.church_id,
            content_type: c.content_type,
            content_id: c.content_id,
            title: c.title,
            date_created: c.date_created,
            group_id: c.group_id,
            visibility: c.visibility,
            post_count: c.post_count,
            allow_anonymous_posts: c.allow_anonymous_posts,
            messages: t.messages,
        }
    }
}

pub async fn posts(ctx: &Ctx<'_>) -> AppResult<Vec<GroupPost>> {
    let list = ctx.svc().group_posts(&ctx.caller, None).await?;
    Ok(list.into_iter().map(GroupPost::from).collect())
}

pub async fn posts_by_group(ctx: &Ctx<'_>) -> AppResult<Vec<GroupPost>> {
    let list = ctx
        .svc()
        .group_posts(&ctx.caller, Some(ctx.param(0)))
        .await?;
    Ok(list.into_iter().map(GroupPost::from).collect())
}

pub async fn start(
    ctx: &Ctx<'_>,
    Body(Obj(body)): Body<bodies::StartBody>,
) -> AppResult<Conversation> {
    let input = StartInput {
        group_id: body.group_id.map(String::from).filter(|s| !s.is_empty()),
        content_type: body.content_type.into(),
        content_id: body.content_id.into(),
        title: body.title.map(String::from),
        comment: body.comment.into(),
    };
    ctx.svc().start_conversation(&ctx.caller, input).await
}

pub async fn delete(ctx: &Ctx<'_>) -> AppResult<NoContent> {
    ctx.svc()
        .delete_conversation(&ctx.caller, ctx.param(0), ctx.param(1))
        .await?;
    Ok(NoContent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group post is its conversation's JSON without the two post ids, then the messages,
    /// as it was when the fields were removed from the serialized conversation.
    #[test]
    fn a_group_post_is_its_conversation_without_the_post_ids() {
        let conversation = Conversation {
            id: "V1".into(),
            church_id: "C1".into(),
            content_type: Some("group".into()),
            content_id: Some("G1".into()),
            title: None,
            date_created: "2024-01-01T00:00:00.000Z".into(),
            group_id: Some("G1".into()),
            visibility: None,
            first_post_id: Some("M1".into()),
            last_post_id: Some("M2".into()),
            post_count: 2,
            allow_anonymous_posts: false,
        };
        let t = Timeline {
            conversation,
            messages: Vec::new(),
        };
        let mut old = serde_json::to_value(&t).unwrap_or_default();
        if let Some(o) = old.as_object_mut() {
            o.shift_remove("firstPostId");
            o.shift_remove("lastPostId");
        }
        let new = serde_json::to_string(&GroupPost::from(t)).unwrap_or_default();
        assert_eq!(new, old.to_string());
    }
}
