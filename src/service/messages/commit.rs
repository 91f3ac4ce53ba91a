//! A post's write and its frames: the group commit's jobs, frames held ahead of the write
//! and released after it, and the frames of what was written, in commit order.
use std::collections::BTreeSet;

use super::super::model::Message;
use super::super::{Services, alerts, writer};
use super::{ConvMap, activity, send_activity};
use crate::auth::access::ContentType;
use crate::cluster::HeldFrame;
use crate::error::{AppError, AppResult};
use crate::hub::{Action, Audience};
use crate::store::Tx;
use crate::store::entities::{conversations, messages};

/// What was written, in request order, with what its frames need.
pub(super) struct Written {
    message: messages::Model,
    conv: conversations::Model,
    created: bool,
    pm_alert: Option<alerts::PendingPmAlert>,
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

impl Services {
    /// Writes, then sends the frames. New messages go through the group-commit writer
    /// (see `writer`), so concurrent posts share transactions; batches with edits are
    /// written directly.
    pub(super) async fn commit_and_announce(
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
    pub(in crate::service) async fn write_jobs(&self, jobs: Vec<writer::Job>) {
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
                && super::super::content_type(&convs[&m.conversation_id].conv)
                    != ContentType::PrivateMessage
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
                && super::super::content_type(&convs[&m.conversation_id].conv)
                    != ContentType::PrivateMessage
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
                let tx = store.begin_write().await?;
                let touched: BTreeSet<&str> = rows
                    .iter()
                    .filter(|(_, created)| *created)
                    .map(|(m, _)| m.conversation_id.as_str())
                    .collect();
                for id in &touched {
                    tx.lock_conversation(id).await?;
                }
                let mut written = Vec::with_capacity(rows.len());
                for (m, created) in &rows {
                    let conv = convs[&m.conversation_id].conv.clone();
                    let pm_alert = if *created {
                        tx.insert_message(m).await?;
                        self.private_message_flow(&tx, &conv, m).await?
                    } else {
                        tx.update_message(m).await?;
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
                    tx.bump_stats(id, added as u64).await?;
                }
                tx.commit().await?;
                Ok::<_, AppError>(written)
            })
            .await
    }

    async fn private_message_flow(
        &self,
        tx: &Tx,
        conv: &conversations::Model,
        m: &messages::Model,
    ) -> AppResult<Option<alerts::PendingPmAlert>> {
        if super::super::content_type(conv) != ContentType::PrivateMessage {
            return Ok(None);
        }
        let name = m.display_name.as_deref().unwrap_or_default();
        alerts::on_message_created(tx, conv, m.person_id.as_deref(), name, m.time_sent).await
    }

    /// Frames after the commit, per message: `message`, `conversationActivity`,
    /// `privateMessage` (§3.2 order).
    pub(super) async fn announce(&self, written: Vec<Written>) -> Vec<Message> {
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
}
