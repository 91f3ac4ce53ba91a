//! Messages (§10.3): send, post and edit, delete, reactions, callout, reads and catch-up.
//!
//! Every write follows §9: the batch is validated, resolved and authorized whole, written in
//! one transaction, and its frames are delivered after the commit and before the response.
//! New messages outside private conversations publish their frames held before the write
//! and release them after the commit (`Seam::publish_held`): across nodes, the broker
//! orders them while the database writes.
use std::collections::BTreeSet;

use sea_orm::{ActiveValue::Set, DatabaseTransaction, EntityTrait};
use serde::Serialize;

use super::model::{Callout, Message};
use super::{ConvAccess, Services, alerts, holder, member, person, writer};
use crate::auth::access::ContentType;
use crate::auth::{Caller, Permission};
use crate::cluster::HeldFrame;
use crate::error::{AppError, AppResult};
use crate::hub::{Action, Audience};
use crate::store::Store;
use crate::store::entities::{conversations, messages};

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

/// What was written, in request order, with what its frames need.
pub(super) struct Written {
    message: messages::Model,
    conv: conversations::Model,
    created: bool,
    pm_alert: Option<alerts::PendingPmAlert>,
}

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

/// A job's frames, published held before its write, and its response.
pub(super) struct Held {
    frames: Vec<Box<dyn HeldFrame>>,
    messages: Vec<Message>,
}

impl Held {
    /// The write committed: every frame goes out, in publish order.
    fn release(self) -> Vec<Message> {
        for f in self.frames {
            f.release();
        }
        self.messages
    }
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
                _ if crate::auth::access::is_anonymous_public(&c.conv) => (None, body_name),
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

    /// Writes, then sends the frames. New messages go through the group-commit writer
    /// (see `writer`), so concurrent posts share transactions; batches with edits are
    /// written directly.
    async fn commit_and_announce(
        &self,
        rows: Vec<(messages::Model, bool)>,
        convs: ConvMap,
    ) -> AppResult<Vec<Message>> {
        match &self.writer {
            Some(writer) if rows.iter().all(|(_, created)| *created) => {
                writer.submit(rows, convs).await
            }
            _ => {
                let written = self.write_messages(rows, &convs).await?;
                Ok(self.announce(written).await)
            }
        }
    }

    /// One group commit: every job's rows in one transaction, then each job's frames in
    /// commit order. If the shared transaction fails, each job is retried on its own so
    /// that one bad job cannot fail the others. Frames that need nothing from the write
    /// are published held before it (see `hold`) and released (or withdrawn) after it.
    pub(super) async fn write_jobs(&self, jobs: Vec<writer::Job>) {
        let mut all_rows = Vec::new();
        let mut all_convs = ConvMap::new();
        for j in &jobs {
            all_rows.extend(j.rows.iter().cloned());
            all_convs.extend(j.convs.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let held: Vec<Option<Held>> = jobs.iter().map(|j| self.hold(&j.rows, &j.convs)).collect();
        let started = std::time::Instant::now();
        let result = self
            .extending(&held, self.write_messages(all_rows, &all_convs))
            .await;
        // The database's share of a post's latency: one group commit, retries included.
        metrics::histogram!("messaging_message_write_seconds")
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(written) => {
                let mut written = written.into_iter();
                for (j, h) in jobs.into_iter().zip(held) {
                    let mine: Vec<Written> = written.by_ref().take(j.rows.len()).collect();
                    let _ = j.reply.send(Ok(self.release(h, mine).await));
                }
            }
            Err(_) if jobs.len() > 1 => {
                let mut held: Vec<Option<Held>> = held;
                for (k, j) in jobs.into_iter().enumerate() {
                    let result = self
                        .extending(&held[k..], self.write_messages(j.rows, &j.convs))
                        .await;
                    let h = held[k].take();
                    let result = match result {
                        Ok(w) => Ok(self.release(h, w).await),
                        Err(e) => Err(e), // `h` is dropped: withdrawn
                    };
                    let _ = j.reply.send(result);
                }
            }
            Err(e) => {
                drop(held);
                if let Some(j) = jobs.into_iter().next() {
                    let _ = j.reply.send(Err(e));
                }
            }
        }
    }

    /// Publishes the frames of new messages held, before their write, when they need
    /// nothing from it: messages outside private conversations (a private message's alert
    /// depends on the write). Their order is `announce`'s.
    fn hold(&self, rows: &[(messages::Model, bool)], convs: &ConvMap) -> Option<Held> {
        let plain = rows.iter().all(|(m, created)| {
            *created
                && ContentType::of(&convs[&m.conversation_id].conv) != ContentType::PrivateMessage
        });
        if !plain {
            return None;
        }
        let mut held = Held {
            frames: Vec::with_capacity(2 * rows.len()),
            messages: Vec::with_capacity(rows.len()),
        };
        for (m, _) in rows {
            let conv = &convs[&m.conversation_id].conv;
            let msg = Message::from(m.clone());
            let room = Audience::room(&conv.church_id, &conv.id);
            held.frames
                .push(self.send_held(&room, &conv.id, Action::Message, &msg));
            if let Some(f) = activity(conv, "message", |room, data| {
                let audience = Audience::room(&conv.church_id, room);
                self.send_held(&audience, room, Action::ConversationActivity, data)
            }) {
                held.frames.push(f);
            }
            held.messages.push(msg);
        }
        Some(held)
    }

    /// Runs a write, extending the held frames while it runs (`Seam::extend_every`), so
    /// that no node gives up on them while the database is slow.
    async fn extending<T>(
        &self,
        held: &[Option<Held>],
        write: impl std::future::Future<Output = T>,
    ) -> T {
        let Some(period) = self.seam.extend_every() else {
            return write.await;
        };
        if held.iter().all(Option::is_none) {
            return write.await;
        }
        tokio::pin!(write);
        let first = tokio::time::Instant::now() + period;
        let mut every = tokio::time::interval_at(first, period);
        loop {
            tokio::select! {
                done = &mut write => return done,
                _ = every.tick() => {
                    for f in held.iter().flatten().flat_map(|h| &h.frames) {
                        f.extend();
                    }
                }
            }
        }
    }

    /// After the commit: releases what was held, or sends the frames now.
    async fn release(&self, held: Option<Held>, written: Vec<Written>) -> Vec<Message> {
        match held {
            Some(h) => h.release(),
            None => self.announce(written).await,
        }
    }

    /// Writes created and edited messages in one transaction, with stats and the
    /// private-message flow; nothing is sent yet.
    async fn write_messages(
        &self,
        rows: Vec<(messages::Model, bool)>,
        convs: &ConvMap,
    ) -> AppResult<Vec<Written>> {
        let store = self.store();
        // New messages outside private conversations need only their rows and the stats.
        let plain = rows.iter().all(|(m, created)| {
            *created
                && ContentType::of(&convs[&m.conversation_id].conv) != ContentType::PrivateMessage
        });
        if plain {
            let models: Vec<messages::Model> = rows.iter().map(|(m, _)| m.clone()).collect();
            store.write(|| store.append_messages(&models)).await?;
            return Ok(rows
                .into_iter()
                .map(|(m, _)| Written {
                    conv: convs[&m.conversation_id].conv.clone(),
                    message: m,
                    created: true,
                    pm_alert: None,
                })
                .collect());
        }
        store
            .write(|| async {
                let txn = store.begin_write().await?;
                let touched: BTreeSet<&str> = rows
                    .iter()
                    .filter(|(_, created)| *created)
                    .map(|(m, _)| m.conversation_id.as_str())
                    .collect();
                for id in &touched {
                    Store::lock_conversation(&txn, id).await?;
                }
                let mut written = Vec::with_capacity(rows.len());
                for (m, created) in &rows {
                    let conv = convs[&m.conversation_id].conv.clone();
                    let pm_alert = if *created {
                        messages::Entity::insert(active(m))
                            .exec_without_returning(&txn)
                            .await?;
                        self.private_message_flow(&txn, &conv, m).await?
                    } else {
                        messages::Entity::update(active(m)).exec(&txn).await?;
                        None
                    };
                    written.push(Written {
                        message: m.clone(),
                        conv,
                        created: *created,
                        pm_alert,
                    });
                }
                for id in &touched {
                    let added = rows
                        .iter()
                        .filter(|(m, c)| *c && m.conversation_id == *id)
                        .count();
                    Store::bump_stats(&txn, id, added as u64).await?;
                }
                txn.commit().await?;
                Ok::<_, AppError>(written)
            })
            .await
    }

    async fn private_message_flow(
        &self,
        txn: &DatabaseTransaction,
        conv: &conversations::Model,
        m: &messages::Model,
    ) -> AppResult<Option<alerts::PendingPmAlert>> {
        if ContentType::of(conv) != ContentType::PrivateMessage {
            return Ok(None);
        }
        let name = m.display_name.as_deref().unwrap_or_default();
        Ok(
            alerts::on_message_created(txn, conv, m.person_id.as_deref(), name, m.time_sent)
                .await?,
        )
    }

    /// Frames after the commit, per message: `message`, `conversationActivity`,
    /// `privateMessage` (§3.2 order).
    async fn announce(&self, written: Vec<Written>) -> Vec<Message> {
        let mut out = Vec::with_capacity(written.len());
        for w in written {
            let msg = Message::from(w.message);
            self.send_to_room(&w.conv.church_id, &w.conv.id, Action::Message, &msg);
            send_activity(self, &w.conv, "message");
            if let Some(alert) = w.pm_alert.filter(|_| w.created)
                && let Err(e) = alerts::deliver_pm_alert(self, &alert).await
            {
                tracing::warn!(error = ?e, "privateMessage alert not delivered");
            }
            out.push(msg);
        }
        out
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
                let txn = store.begin_write().await?;
                Store::lock_conversation(&txn, &m.conversation_id).await?;
                Store::delete_messages(&txn, vec![m.id.clone()]).await?;
                Store::refresh_stats(&txn, &m.conversation_id).await?;
                txn.commit().await?;
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
                let txn = store.begin_write().await?;
                let added = Store::toggle_reaction(
                    &txn,
                    &m,
                    &claims.person_id,
                    emoji,
                    crate::time::now_ms(),
                )
                .await?;
                txn.commit().await?;
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

fn active(m: &messages::Model) -> messages::ActiveModel {
    messages::ActiveModel {
        id: Set(m.id.clone()),
        church_id: Set(m.church_id.clone()),
        conversation_id: Set(m.conversation_id.clone()),
        person_id: Set(m.person_id.clone()),
        display_name: Set(m.display_name.clone()),
        time_sent: Set(m.time_sent),
        time_updated: Set(m.time_updated),
        message_type: Set(m.message_type.clone()),
        content: Set(m.content.clone()),
    }
}
