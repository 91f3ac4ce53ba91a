//! Conversations (§10.4): the current room of a content item, create and update, reads,
//! listings by content, timelines, group posts, start, delete.
use std::collections::HashMap;

use super::messages::send_activity;
use super::model::{
    Conversation, ConversationWithMessages, Message, MessageWithReactions, ReactionSummary,
};
use super::{Services, member, person};
use crate::auth::access::ContentType;
use crate::auth::{Caller, Permission, access};
use crate::error::{AppError, AppResult};
use crate::store::entities::{conversations, messages};

const DAY_MS: i64 = 24 * 3600 * 1000;

/// One item of `POST /conversations`, shape-checked by the edge.
#[derive(Debug, Clone, Default)]
pub struct ConversationInput {
    pub id: Option<String>,
    pub content_type: Option<String>,
    pub content_id: Option<String>,
    pub title: Option<String>,
    pub group_id: Option<String>,
    pub visibility: Option<String>,
    pub allow_anonymous_posts: Option<bool>,
}

/// `POST /conversations/start`.
#[derive(Debug, Clone, Default)]
pub struct StartInput {
    pub group_id: Option<String>,
    pub content_type: String,
    pub content_id: String,
    pub title: Option<String>,
    pub comment: String,
}

/// First and last message of a conversation (`[first]` when they are the same).
pub type Timeline = ConversationWithMessages<Message>;

fn in_group(caller: &Caller, group: &str) -> bool {
    caller.claims().is_some_and(|c| {
        c.has_permission(Permission::ContentEdit)
            || c.group_ids.iter().any(|g| g == group)
            || c.leader_group_ids.iter().any(|g| g == group)
    })
}

fn new_conversation(
    church: &str,
    content_type: &str,
    content_id: &str,
    title: Option<String>,
    visibility: Option<String>,
    allow_anonymous_posts: bool,
    group_id: Option<String>,
) -> conversations::Model {
    conversations::Model {
        id: crate::ids::new_id(),
        church_id: church.to_string(),
        content_type: Some(content_type.to_string()),
        content_id: Some(content_id.to_string()),
        title,
        date_created: crate::time::now_ms(),
        group_id,
        visibility,
        first_post_id: None,
        last_post_id: None,
        post_count: 0,
        allow_anonymous_posts,
    }
}

/// The title of a conversation created on demand: `{contentType} #{contentId}`, cut to the
/// title column's `MAX_TITLE` characters. Both parts may be as long as their own limits
/// (45 + 255), and PostgreSQL and MariaDB refuse an overlong value (it was a 500 there).
fn auto_title(content_type: &str, content_id: &str) -> String {
    format!("{content_type} #{content_id}")
        .chars()
        .take(super::limits::MAX_TITLE)
        .collect()
}

impl Services {
    /// The newest conversation of the last 24 hours for a content item, created if none.
    /// Creation is serialized per process so concurrent callers share one room.
    async fn get_or_create_current(
        &self,
        church: &str,
        content_type: &str,
        content_id: &str,
        allow_anonymous_posts: bool,
    ) -> AppResult<conversations::Model> {
        let recent = || async {
            let since = crate::time::now_ms() - DAY_MS;
            Ok::<_, AppError>(
                self.store()
                    .conversations_by_content(church, content_type, content_id, Some(since))
                    .await?
                    .into_iter()
                    .next(),
            )
        };
        if let Some(c) = recent().await? {
            return Ok(c);
        }
        static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _guard = CREATING.lock().await;
        if let Some(c) = recent().await? {
            return Ok(c);
        }
        let c = new_conversation(
            church,
            content_type,
            content_id,
            Some(auto_title(content_type, content_id)),
            Some("public".into()),
            allow_anonymous_posts,
            None,
        );
        self.store().insert_conversation(c.clone()).await?;
        Ok(c)
    }

    /// `GET /conversations/current/{churchId}/{contentType}/{contentId}`.
    pub async fn current_conversation(
        &self,
        caller: &Caller,
        church: &str,
        content_type: &str,
        content_id: &str,
    ) -> AppResult<Conversation> {
        let kind = ContentType::parse(content_type);
        if kind == ContentType::StreamingLive {
            if caller.member_of(church).is_some() {
                return Ok(self
                    .get_or_create_current(church, content_type, content_id, true)
                    .await?
                    .into());
            }
            let since = crate::time::now_ms() - DAY_MS;
            let existing = self
                .store()
                .conversations_by_content(church, content_type, content_id, Some(since))
                .await?
                .into_iter()
                .next();
            return match existing {
                Some(c) if super::is_anonymous_public(&c) => Ok(c.into()),
                Some(_) => Err(AppError::Unauthorized),
                None if self.store().church_known(church).await? => Ok(self
                    .get_or_create_current(church, content_type, content_id, true)
                    .await?
                    .into()),
                None => Err(AppError::NotFound("Church not found")),
            };
        }
        let content_id = if content_id.chars().count() > 11 {
            (self.decrypt)(content_id)
        } else {
            content_id.to_string()
        };
        if !access::can_read_content(caller, church, content_type, &content_id) {
            return Err(AppError::Unauthorized);
        }
        let c = self
            .get_or_create_current(church, content_type, &content_id, false)
            .await?;
        if kind == ContentType::StreamingLiveHost {
            let public = ContentType::StreamingLive.as_str();
            self.get_or_create_current(church, public, &content_id, true)
                .await?;
        }
        Ok(c.into())
    }

    /// `POST /conversations/ensure`: the current `streamingLive` room of the token's church.
    pub async fn ensure_conversation(
        &self,
        caller: &Caller,
        content_type: &str,
        content_id: &str,
    ) -> AppResult<Conversation> {
        let claims = member(caller)?;
        if ContentType::parse(content_type) != ContentType::StreamingLive || content_id.is_empty() {
            return Err(AppError::Unauthorized);
        }
        Ok(self
            .get_or_create_current(&claims.church_id, content_type, content_id, true)
            .await?
            .into())
    }

    /// `POST /conversations`: creates, or updates items with `id` (Content Edit).
    pub async fn save_conversations(
        &self,
        caller: &Caller,
        items: Vec<ConversationInput>,
    ) -> AppResult<Vec<Conversation>> {
        let claims = member(caller)?;
        let church = claims.church_id.clone();
        let ce = claims.has_permission(Permission::ContentEdit);
        // Existence of updated conversations, then access for every item.
        let mut existing = HashMap::new();
        for it in &items {
            if let Some(id) = &it.id {
                let c = self.load_conversation_in(&church, id).await?;
                existing.insert(id.clone(), c.conv);
            }
        }
        let mut rows = Vec::with_capacity(items.len());
        for it in &items {
            match &it.id {
                Some(id) => {
                    if !ce {
                        return Err(AppError::Unauthorized);
                    }
                    let mut c = existing[id].clone();
                    if it.title.is_some() {
                        c.title = it.title.clone();
                    }
                    if it.visibility.is_some() {
                        c.visibility = it.visibility.clone();
                    }
                    if let Some(a) = it.allow_anonymous_posts {
                        c.allow_anonymous_posts = a;
                    }
                    if it.group_id.is_some() {
                        c.group_id = it.group_id.clone();
                    }
                    rows.push((c, false));
                }
                None => {
                    let t = it.content_type.clone().unwrap_or_default();
                    let needs = match ContentType::parse(&t) {
                        ContentType::Person => Some(Permission::PeopleEdit),
                        ContentType::PersonConfidential => Some(Permission::ViewConfidentialNotes),
                        _ => None,
                    };
                    if needs.is_some_and(|p| !claims.has_permission(p)) {
                        return Err(AppError::Unauthorized);
                    }
                    let mut c = new_conversation(
                        &church,
                        &t,
                        it.content_id.as_deref().unwrap_or_default(),
                        it.title.clone(),
                        it.visibility.clone(),
                        it.allow_anonymous_posts.unwrap_or(false),
                        it.group_id.clone(),
                    );
                    c.content_type = it.content_type.clone();
                    c.content_id = it.content_id.clone();
                    rows.push((c, true));
                }
            }
        }
        let store = self.store();
        store
            .write(|| async {
                let tx = store.begin_write().await?;
                for (c, created) in &rows {
                    if *created {
                        tx.insert_conversation(c).await?;
                    } else {
                        tx.update_conversation(c).await?;
                    }
                }
                tx.commit().await?;
                Ok::<_, AppError>(())
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(c, created)| {
                self.post_cache.forget_conversation(&c.id);
                if created {
                    send_activity(self, &c, "created");
                }
                c.into()
            })
            .collect())
    }

    /// `GET /conversations/{churchId}/{id}`.
    pub async fn get_conversation(
        &self,
        caller: &Caller,
        church: &str,
        id: &str,
    ) -> AppResult<Conversation> {
        let c = self.load_conversation_in(church, id).await?;
        if !c.can_read(caller) {
            return Err(AppError::Unauthorized);
        }
        Ok(c.conv.into())
    }

    /// `GET /conversations/{churchId}/{contentType}/{contentId}`, newest first.
    pub async fn conversations_for_content(
        &self,
        caller: &Caller,
        church: &str,
        content_type: &str,
        content_id: &str,
    ) -> AppResult<Vec<Conversation>> {
        let all = self
            .store()
            .conversations_by_content(church, content_type, content_id, None)
            .await?;
        if caller.member_of(church).is_some() {
            if !access::can_read_content(caller, church, content_type, content_id) {
                return Err(AppError::Unauthorized);
            }
            let mut out = Vec::with_capacity(all.len());
            for c in all {
                if self.conversation_access(c.clone()).await?.can_read(caller) {
                    out.push(c.into());
                }
            }
            return Ok(out);
        }
        if !all.iter().all(super::is_anonymous_public) {
            return Err(AppError::Unauthorized);
        }
        Ok(all.into_iter().map(Into::into).collect())
    }

    /// `GET /conversations/messages/{contentType}/{contentId}?page&limit`.
    pub async fn conversations_with_messages(
        &self,
        caller: &Caller,
        content_type: &str,
        content_id: &str,
        page: u64,
        limit: u64,
    ) -> AppResult<Vec<ConversationWithMessages<MessageWithReactions>>> {
        let claims = member(caller)?;
        if !access::can_read_content(caller, &claims.church_id, content_type, content_id) {
            return Err(AppError::Unauthorized);
        }
        let convs = self
            .store()
            .conversations_by_content(&claims.church_id, content_type, content_id, None)
            .await?;
        let mut out = Vec::new();
        for c in convs {
            if !self.conversation_access(c.clone()).await?.can_read(caller) {
                continue;
            }
            let page_msgs = self.store().message_page(&c.id, page, limit).await?;
            if page_msgs.is_empty() {
                continue;
            }
            let reactions = self
                .store()
                .reactions_of(page_msgs.iter().map(|m| m.id.clone()).collect())
                .await?;
            let messages = page_msgs
                .into_iter()
                .map(|m| {
                    let mut summary: Vec<ReactionSummary> = Vec::new();
                    for r in reactions.iter().filter(|r| r.message_id == m.id) {
                        let mine = r.person_id == claims.person_id;
                        match summary.iter_mut().find(|s| s.emoji == r.emoji) {
                            Some(s) => {
                                s.count += 1;
                                s.mine |= mine;
                            }
                            None => summary.push(ReactionSummary {
                                emoji: r.emoji.clone(),
                                count: 1,
                                mine,
                            }),
                        }
                    }
                    MessageWithReactions {
                        message: m.into(),
                        reactions: summary,
                    }
                })
                .collect();
            out.push(ConversationWithMessages {
                conversation: c.into(),
                messages,
            });
        }
        Ok(out)
    }

    /// First and last messages of conversations, keyed by conversation id.
    async fn first_last(
        &self,
        convs: &[conversations::Model],
    ) -> AppResult<HashMap<String, messages::Model>> {
        let ids: Vec<String> = convs
            .iter()
            .flat_map(|c| [c.first_post_id.clone(), c.last_post_id.clone()])
            .flatten()
            .collect();
        Ok(self
            .store()
            .messages_by_ids(ids)
            .await?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect())
    }

    fn timeline_of(c: conversations::Model, by_id: &HashMap<String, messages::Model>) -> Timeline {
        let mut msgs = Vec::new();
        if let Some(first) = c.first_post_id.as_ref().and_then(|id| by_id.get(id)) {
            msgs.push(Message::from(first.clone()));
        }
        if let Some(last) = c
            .last_post_id
            .as_ref()
            .filter(|l| Some(*l) != c.first_post_id.as_ref())
            .and_then(|id| by_id.get(id))
        {
            msgs.push(Message::from(last.clone()));
        }
        ConversationWithMessages {
            conversation: c.into(),
            messages: msgs,
        }
    }

    /// `GET /conversations/timeline/ids?ids=…`: unknown or unreadable ids are omitted.
    pub async fn timeline(&self, caller: &Caller, ids: Vec<String>) -> AppResult<Vec<Timeline>> {
        member(caller)?;
        let convs = self.store().conversations_by_ids(ids.clone()).await?;
        let mut readable = Vec::new();
        for c in convs {
            if self.conversation_access(c.clone()).await?.can_read(caller) {
                readable.push(c);
            }
        }
        // Request order.
        readable.sort_by_key(|c| ids.iter().position(|i| *i == c.id));
        let by_id = self.first_last(&readable).await?;
        Ok(readable
            .into_iter()
            .map(|c| Self::timeline_of(c, &by_id))
            .collect())
    }

    /// `GET /conversations/posts[/group/{groupId}]`: group conversations whose last post
    /// is under 365 days old, newest last post first.
    pub async fn group_posts(
        &self,
        caller: &Caller,
        group: Option<&str>,
    ) -> AppResult<Vec<Timeline>> {
        let claims = member(caller)?;
        let groups: Vec<String> = match group {
            Some(g) if in_group(caller, g) => vec![g.to_string()],
            Some(_) => return Err(AppError::Unauthorized),
            None => claims
                .group_ids
                .iter()
                .chain(&claims.leader_group_ids)
                .cloned()
                .collect(),
        };
        let convs = self
            .store()
            .group_conversations(&claims.church_id, groups)
            .await?;
        let by_id = self.first_last(&convs).await?;
        let cutoff = crate::time::now_ms() - 365 * DAY_MS;
        let mut recent: Vec<(i64, conversations::Model)> = convs
            .into_iter()
            .filter_map(|c| {
                let last = by_id.get(c.last_post_id.as_deref()?)?.time_sent;
                (last > cutoff).then_some((last, c))
            })
            .collect();
        recent.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.id.cmp(&a.1.id)));
        Ok(recent
            .into_iter()
            .map(|(_, c)| Self::timeline_of(c, &by_id))
            .collect())
    }

    /// `POST /conversations/start`: a conversation and its first message, one transaction.
    pub async fn start_conversation(
        &self,
        caller: &Caller,
        input: StartInput,
    ) -> AppResult<Conversation> {
        let claims = person(caller)?;
        let allowed = match input.group_id.as_deref() {
            Some(g) => in_group(caller, g),
            None => access::can_read_content(
                caller,
                &claims.church_id,
                &input.content_type,
                &input.content_id,
            ),
        };
        if !allowed {
            return Err(AppError::Unauthorized);
        }
        let mut c = new_conversation(
            &claims.church_id,
            &input.content_type,
            &input.content_id,
            input.title.clone(),
            Some("public".into()),
            false,
            input.group_id.clone(),
        );
        let m = messages::Model {
            id: crate::ids::new_id(),
            church_id: c.church_id.clone(),
            conversation_id: c.id.clone(),
            person_id: Some(claims.person_id.clone()),
            display_name: Some(claims.display_name()),
            time_sent: crate::time::now_ms(),
            time_updated: None,
            message_type: "comment".into(),
            content: input.comment.clone(),
        };
        c.post_count = 1;
        c.first_post_id = Some(m.id.clone());
        c.last_post_id = Some(m.id.clone());
        let store = self.store();
        store
            .write(|| async {
                let tx = store.begin_write().await?;
                tx.insert_conversation(&c).await?;
                tx.insert_message(&m).await?;
                tx.commit().await?;
                Ok::<_, AppError>(())
            })
            .await?;
        Ok(c.into())
    }

    /// `DELETE /conversations/{churchId}/{id}` (Content Edit of that church).
    pub async fn delete_conversation(
        &self,
        caller: &Caller,
        church: &str,
        id: &str,
    ) -> AppResult<()> {
        let c = self.load_conversation_in(church, id).await?;
        if !caller
            .member_of(&c.conv.church_id)
            .is_some_and(|cl| cl.has_permission(Permission::ContentEdit))
        {
            return Err(AppError::Unauthorized);
        }
        let store = self.store();
        store
            .write(|| async {
                let tx = store.begin_write().await?;
                tx.delete_conversations(vec![c.conv.id.clone()]).await?;
                tx.commit().await?;
                Ok::<_, AppError>(())
            })
            .await?;
        self.post_cache.forget_conversation(&c.conv.id);
        self.post_cache
            .forget_blocked(&c.conv.church_id, &c.conv.id);
        Ok(())
    }
}
