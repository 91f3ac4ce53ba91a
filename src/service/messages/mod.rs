//! Messages (§10.3): send, post and edit, delete, reactions, callout, reads and catch-up.
//!
//! Every write follows §9: the batch is validated, resolved and authorized whole, written in
//! one transaction, and its frames are delivered after the commit and before the response.
//! New messages outside private conversations publish their frames held before the write
//! and release them after the commit (`Seam::publish_held`): across nodes, the broker
//! orders them while the database writes.
use std::collections::BTreeSet;

use serde::Serialize;

use super::model::{Callout, Message};
use super::{ConvAccess, Services, holder, member, person};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult};
use crate::hub::Action;
use crate::store::entities::{conversations, messages};

mod commit;

pub use super::limits::{MAX_CONTENT_BYTES, MAX_EMOJI};

/// One item of `/messages/send` or `POST /messages`, already shape-checked by the edge.
#[derive(Debug, Clone, Default)]
pub struct MessageInput {
    /// `POST /messages` only: present means an edit.
    pub id: Option<String>,
    pub conversation_id: String,
    pub content: String,
    pub display_name: Option<String>,
    pub message_type: Option<String>,
}

pub use super::writer::ConvMap;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ActivityData<'a> {
    content_type: &'a str,
    content_id: &'a str,
    conversation_id: &'a str,
    kind: &'a str,
}

/// `content-{type}-{id}` for a conversation that has both, else `None`.
pub fn content_room(conv: &conversations::Model) -> Option<String> {
    match (conv.content_type.as_deref(), conv.content_id.as_deref()) {
        (Some(t), Some(id)) if !t.is_empty() && !id.is_empty() => {
            Some(super::rooms::content_room(t, id))
        }
        _ => None,
    }
}

/// Hands `conversationActivity` for the content room of `conv`, if it has one, to `send`.
fn activity<R>(
    conv: &conversations::Model,
    kind: &str,
    send: impl FnOnce(&str, &ActivityData) -> R,
) -> Option<R> {
    let room = content_room(conv)?;
    let data = ActivityData {
        content_type: conv.content_type.as_deref().unwrap_or_default(),
        content_id: conv.content_id.as_deref().unwrap_or_default(),
        conversation_id: &conv.id,
        kind,
    };
    Some(send(&room, &data))
}

/// Sends `conversationActivity` to the content room of `conv`, if it has one.
pub fn send_activity(svc: &Services, conv: &conversations::Model, kind: &str) {
    activity(conv, kind, |room, data| {
        svc.send_to_room(&conv.church_id, room, Action::ConversationActivity, data)
    });
}

fn ce_in(caller: &Caller, church: &str) -> bool {
    caller
        .member_of(church)
        .is_some_and(|c| c.has_permission(Permission::ContentEdit))
}

impl Services {
    /// A message of `church` by id, or 404.
    async fn load_message_in(&self, church: &str, id: &str) -> AppResult<messages::Model> {
        self.store()
            .message(id)
            .await?
            .filter(|m| m.church_id == church)
            .ok_or(AppError::NotFound("Message not found"))
    }

    /// Loads each distinct conversation of a batch once (404 on the first unknown one).
    async fn batch_conversations(
        &self,
        items: &[MessageInput],
        church: Option<&str>,
    ) -> AppResult<ConvMap> {
        let mut out = std::collections::HashMap::new();
        for it in items.iter().filter(|i| i.id.is_none()) {
            if !out.contains_key(&it.conversation_id) {
                let c = match church {
                    Some(ch) => self.hot_conversation_in(ch, &it.conversation_id).await?,
                    None => self.hot_conversation(&it.conversation_id).await?,
                };
                out.insert(it.conversation_id.clone(), c);
            }
        }
        Ok(out)
    }

    /// 403 if the client IP is blocked in any target conversation (Content Edit is exempt).
    async fn check_ip_blocks<'a>(
        &self,
        caller: &Caller,
        ip: Option<&str>,
        convs: impl Iterator<Item = &'a conversations::Model>,
    ) -> AppResult<()> {
        let Some(ip) = ip else { return Ok(()) };
        let mut seen = BTreeSet::new();
        for c in convs {
            if seen.insert(c.id.clone())
                && !ce_in(caller, &c.church_id)
                && self.hot_ip_blocked(&c.church_id, &c.id, ip).await?
            {
                return Err(AppError::IpBlocked);
            }
        }
        Ok(())
    }

    /// `POST /messages/send`: authenticated posts for members who may participate,
    /// anonymous posts in anonymous-public rooms, 401 otherwise.
    pub async fn send_messages(
        &self,
        caller: &Caller,
        ip: Option<&str>,
        items: Vec<MessageInput>,
    ) -> AppResult<Vec<Message>> {
        let items: Vec<MessageInput> = items
            .into_iter()
            .map(|i| MessageInput { id: None, ..i })
            .collect();
        let convs = self.batch_conversations(&items, None).await?;
        let mut rows = Vec::with_capacity(items.len());
        let now = crate::time::now_ms();
        for it in &items {
            let c = &convs[&it.conversation_id];
            let body_name = it.display_name.clone().unwrap_or_default();
            let (person_id, display_name) = match caller.member_of(&c.conv.church_id) {
                Some(claims) if c.can_participate(caller) => {
                    let name = if body_name.is_empty() {
                        claims.display_name()
                    } else {
                        body_name
                    };
                    (
                        Some(claims.person_id.clone()).filter(|p| !p.is_empty()),
                        name,
                    )
                }
                _ if super::is_anonymous_public(&c.conv) => (None, body_name),
                _ => return Err(AppError::AnonymousPostingNotAllowed),
            };
            rows.push(new_message(c, it, person_id, display_name, now));
        }
        self.check_ip_blocks(caller, ip, convs.values().map(|c| &c.conv))
            .await?;
        self.commit_and_announce(rows.into_iter().map(|m| (m, true)).collect(), convs)
            .await
    }

    /// `POST /messages`: creates (no `id`) and edits (with `id`) for token holders.
    pub async fn post_messages(
        &self,
        caller: &Caller,
        ip: Option<&str>,
        items: Vec<MessageInput>,
    ) -> AppResult<Vec<Message>> {
        let claims = person(caller)?;
        let church = claims.church_id.clone();
        // Existence: conversations of new items, messages of edits (in the caller's church).
        let mut convs = self.batch_conversations(&items, Some(&church)).await?;
        let mut edited = std::collections::HashMap::new();
        for it in &items {
            if let Some(id) = &it.id {
                let m = self.load_message_in(&church, id).await?;
                if !convs.contains_key(&m.conversation_id) {
                    let c = self
                        .load_conversation_in(&church, &m.conversation_id)
                        .await?;
                    convs.insert(m.conversation_id.clone(), c);
                }
                edited.insert(id.clone(), m);
            }
        }
        // Access.
        let now = crate::time::now_ms();
        let mut rows = Vec::with_capacity(items.len());
        for it in &items {
            match &it.id {
                None => {
                    let c = &convs[&it.conversation_id];
                    if !c.can_participate(caller) {
                        return Err(AppError::Unauthorized);
                    }
                    let name = it
                        .display_name
                        .clone()
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| claims.display_name());
                    rows.push((
                        new_message(c, it, Some(claims.person_id.clone()), name, now),
                        true,
                    ));
                }
                Some(id) => {
                    let m = &edited[id];
                    let c = &convs[&m.conversation_id];
                    let author = m.person_id.as_deref() == Some(claims.person_id.as_str())
                        && c.can_read(caller);
                    if !author && !c.can_moderate(caller) {
                        return Err(AppError::Unauthorized);
                    }
                    // Only the content changes; authorship and time stay (no spoofing).
                    let mut m = m.clone();
                    m.content = it.content.clone();
                    m.time_updated = Some(now);
                    rows.push((m, false));
                }
            }
        }
        let new_convs = rows
            .iter()
            .filter(|(_, created)| *created)
            .map(|(m, _)| &convs[&m.conversation_id].conv);
        self.check_ip_blocks(caller, ip, new_convs).await?;
        self.commit_and_announce(rows, convs).await
    }

    /// `DELETE /messages/{id}`: author (who can still read) or moderator.
    pub async fn delete_message(&self, caller: &Caller, id: &str) -> AppResult<()> {
        let claims = member(caller)?;
        let m = self.load_message_in(&claims.church_id, id).await?;
        let c = self.load_conversation(&m.conversation_id).await?;
        let author = !claims.person_id.is_empty()
            && m.person_id.as_deref() == Some(claims.person_id.as_str())
            && c.can_read(caller);
        if !author && !c.can_moderate(caller) {
            return Err(AppError::Unauthorized);
        }
        let store = self.store();
        store
            .write(|| async {
                let tx = store.begin_write().await?;
                tx.lock_conversation(&m.conversation_id).await?;
                tx.delete_messages(vec![m.id.clone()]).await?;
                tx.refresh_stats(&m.conversation_id).await?;
                tx.commit().await?;
                Ok::<_, AppError>(())
            })
            .await?;
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Deleted<'a> {
            id: &'a str,
            conversation_id: &'a str,
        }
        let data = Deleted {
            id: &m.id,
            conversation_id: &m.conversation_id,
        };
        self.send_to_room(&c.conv.church_id, &c.conv.id, Action::DeleteMessage, &data);
        Ok(())
    }

    /// `POST /messages/{messageId}/reactions`: toggles; returns whether it was added.
    pub async fn react(&self, caller: &Caller, message_id: &str, emoji: &str) -> AppResult<bool> {
        let claims = person(caller)?;
        let m = self.load_message_in(&claims.church_id, message_id).await?;
        let c = self.load_conversation(&m.conversation_id).await?;
        if !c.can_participate(caller) {
            return Err(AppError::Unauthorized);
        }
        let store = self.store();
        let added = store
            .write(|| async {
                let tx = store.begin_write().await?;
                let added = tx
                    .toggle_reaction(&m, &claims.person_id, emoji, crate::time::now_ms())
                    .await?;
                tx.commit().await?;
                Ok::<_, AppError>(added)
            })
            .await?;
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Reaction<'a> {
            message_id: &'a str,
            conversation_id: &'a str,
            person_id: &'a str,
            emoji: &'a str,
            added: bool,
        }
        let data = Reaction {
            message_id: &m.id,
            conversation_id: &m.conversation_id,
            person_id: &claims.person_id,
            emoji,
            added,
        };
        self.send_to_room(&c.conv.church_id, &c.conv.id, Action::Reaction, &data);
        Ok(added)
    }

    /// `POST /messages/setCallout`: a Message-shaped object to the room, not stored.
    pub async fn set_callout(&self, caller: &Caller, mut callout: Callout) -> AppResult<Callout> {
        let claims = holder(caller, Permission::ContentEdit)?;
        let conv_id = callout.conversation_id.clone().unwrap_or_default();
        let c = self
            .load_conversation_in(&claims.church_id, &conv_id)
            .await?;
        callout.church_id = Some(claims.church_id.clone());
        self.send_to_room(&c.conv.church_id, &c.conv.id, Action::Callout, &callout);
        Ok(callout)
    }

    /// `GET /messages/conversation/{id}`: a conversation of the caller's church.
    pub async fn conversation_messages(
        &self,
        caller: &Caller,
        conversation: &str,
    ) -> AppResult<Vec<Message>> {
        let claims = member(caller)?;
        let c = self
            .load_conversation_in(&claims.church_id, conversation)
            .await?;
        if !c.can_read(caller) {
            return Err(AppError::Unauthorized);
        }
        Ok(self
            .store()
            .messages_of(&c.conv.id, None)
            .await?
            .into_iter()
            .map(Message::from)
            .collect())
    }

    /// `GET /messages/catchup/{churchId}/{conversationId}[?since]`.
    pub async fn catchup(
        &self,
        caller: &Caller,
        church: &str,
        conversation: &str,
        since: Option<i64>,
    ) -> AppResult<Vec<Message>> {
        let c = self.load_conversation_in(church, conversation).await?;
        if !c.can_read(caller) {
            return Err(AppError::Unauthorized);
        }
        Ok(self
            .store()
            .messages_of(&c.conv.id, since)
            .await?
            .into_iter()
            .map(Message::from)
            .collect())
    }

    /// `GET /messages/{churchId}/{id}`.
    pub async fn get_message(&self, caller: &Caller, church: &str, id: &str) -> AppResult<Message> {
        let m = self.load_message_in(church, id).await?;
        let c = self.load_conversation(&m.conversation_id).await?;
        if !c.can_read(caller) {
            return Err(AppError::Unauthorized);
        }
        Ok(m.into())
    }
}

fn new_message(
    c: &ConvAccess,
    it: &MessageInput,
    person_id: Option<String>,
    display_name: String,
    now: i64,
) -> messages::Model {
    messages::Model {
        id: crate::ids::new_id(),
        church_id: c.conv.church_id.clone(),
        conversation_id: c.conv.id.clone(),
        person_id,
        display_name: Some(display_name),
        time_sent: now,
        time_updated: None,
        message_type: it
            .message_type
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "comment".into()),
        content: it.content.clone(),
    }
}
