//! The alerts flows of §7: counts, the private-message flow run inside a message's
//! transaction, and the `privateMessage` / `notification` frames after the commit.
use std::collections::HashMap;

use serde::Serialize;

use super::Services;
use super::model::Counts;
use crate::error::AppResult;
use crate::hub::{Action, Audience};
use crate::store::Tx;
use crate::store::entities::{conversations, notifications};

/// `contentType` of conversations, notifications and alerts that belong to private messages.
pub const PRIVATE_MESSAGE: &str = crate::store::PRIVATE_MESSAGE;

/// The envelope `conversationId` of `notification` frames (§3.1).
const ALERT_CONVERSATION: &str = "alert";

/// What the private-message flow decided inside the transaction, to deliver after commit.
#[derive(Debug, Clone)]
pub struct PendingPmAlert {
    pub church_id: String,
    pub recipient: String,
    pub conversation_id: String,
    pub notification_id: String,
}

/// The `data` of `privateMessage` and `notification` frames.
#[derive(Serialize)]
struct CountsData {
    counts: Counts,
}

/// `notificationCount` and `pmCount` of `(church, person)` as committed (§7).
pub async fn counts(svc: &Services, church: &str, person: &str) -> AppResult<Counts> {
    Ok(Counts::from(svc.store().unread(church, person).await?))
}

/// The counts of several people of one church (see `Store::unread_many`).
async fn counts_many(
    svc: &Services,
    church: &str,
    people: &[String],
) -> AppResult<HashMap<String, Counts>> {
    Ok(svc
        .store()
        .unread_many(church, people)
        .await?
        .into_iter()
        .map(|(person, u)| (person, Counts::from(u)))
        .collect())
}

/// Steps 1–4 of the private-message flow, for a message just **created** in `conv` (a
/// conversation with `contentType = "privateMessage"`), inside the message's transaction.
pub async fn on_message_created(
    tx: &Tx,
    conv: &conversations::Model,
    sender_person: Option<&str>,
    sender_name: &str,
    now: i64,
) -> AppResult<Option<PendingPmAlert>> {
    // The row lock serializes this flow per thread with itself and with the inbox reads,
    // so two messages cannot both create the recipient's unread notification. Locking
    // reads also see the latest committed rows under MySQL's REPEATABLE READ snapshot.
    let Some(row) = tx.thread_of(&conv.id).await? else {
        return Ok(None);
    };
    let recipient = match sender_person {
        Some(s) if s == row.from_person_id => row.to_person_id.clone(),
        Some(s) if s == row.to_person_id => row.from_person_id.clone(),
        _ => {
            if row.notify_person_id.is_some() {
                tx.set_notify(&row.id, None).await?;
            }
            return Ok(None);
        }
    };
    if row.notify_person_id.as_deref() != Some(recipient.as_str()) {
        tx.set_notify(&row.id, Some(recipient.clone())).await?;
    }
    let message = format!("New Message from {sender_name}");
    let unread = tx
        .unread_thread_notification(&row.church_id, &recipient, &row.id)
        .await?;
    let notification_id = match unread {
        Some(n) => {
            tx.renotify(&n.id, message, now).await?;
            n.id
        }
        None => {
            let id = crate::ids::new_id();
            tx.insert_notifications(&[notifications::Model {
                id: id.clone(),
                church_id: row.church_id.clone(),
                person_id: recipient.clone(),
                content_type: PRIVATE_MESSAGE.to_string(),
                content_id: row.id.clone(),
                time_sent: now,
                is_new: true,
                message,
                link: None,
                delivery_method: None,
                triggered_by_person_id: sender_person.map(str::to_string),
                category: Some("direct_messages".to_string()),
            }])
            .await?;
            id
        }
    };
    Ok(Some(PendingPmAlert {
        church_id: row.church_id,
        recipient,
        conversation_id: conv.id.clone(),
        notification_id,
    }))
}

/// Steps 5–6, after the commit: `privateMessage {counts}` to the recipient's alerts rows and
/// the notification's `deliveryMethod`.
pub async fn deliver_pm_alert(svc: &Services, alert: &PendingPmAlert) -> AppResult<()> {
    deliver_pm_alerts(svc, std::slice::from_ref(alert)).await
}

/// `deliver_pm_alert` for the alerts of one committed batch, in order: the counts of all
/// recipients come from one pair of grouped queries and the `deliveryMethod`s are written
/// by at most two statements.
pub async fn deliver_pm_alerts(svc: &Services, alerts: &[PendingPmAlert]) -> AppResult<()> {
    let mut by_church: HashMap<&str, Vec<String>> = HashMap::new();
    for a in alerts {
        by_church
            .entry(&a.church_id)
            .or_default()
            .push(a.recipient.clone());
    }
    let mut counts = HashMap::new();
    for (church, people) in by_church {
        for (person, c) in counts_many(svc, church, &people).await? {
            counts.insert((church.to_string(), person), c);
        }
    }
    let mut reached = Vec::new();
    let mut missed = Vec::new();
    for a in alerts {
        let data = CountsData {
            counts: counts
                .get(&(a.church_id.clone(), a.recipient.clone()))
                .copied()
                .unwrap_or_default(),
        };
        let n = svc.send_to_person(
            &a.church_id,
            &a.recipient,
            &a.conversation_id,
            Action::PrivateMessage,
            &data,
        );
        if svc.reached_person(&a.church_id, &a.recipient, n).await? {
            reached.push(a.notification_id.clone());
        } else {
            missed.push(a.notification_id.clone());
        }
    }
    let store = svc.store();
    store.set_delivery_method(reached, Some("socket")).await?;
    store.set_delivery_method(missed, None).await?;
    Ok(())
}

impl Services {
    /// Whether a frame just sent to a person's alerts reached a row (§7, `deliveryMethod`):
    /// `local` of this node's sockets, or, across nodes, any alerts row another node holds
    /// (that node queues the frame as it arrives through the broker).
    async fn reached_person(&self, church: &str, person: &str, local: usize) -> AppResult<bool> {
        if self.seam.socketless() {
            // The posts tell: wait for them (a gone connection's 410 is no delivery).
            let drained = self.drain_published().await;
            return Ok(drained.reached.contains(&Audience::person(church, person)));
        }
        if local > 0 || !self.seam.crosses_nodes() {
            return Ok(local > 0);
        }
        let rows = self
            .store()
            .person_rows(church, super::rooms::ALERTS, person)
            .await?;
        Ok(rows.iter().any(|r| *r.node_id != *self.node_id))
    }
}

/// The notification flow of §7 for rows just committed by `POST /notifications/create`:
/// `notification {counts}` to each person's alerts rows, then `deliveryMethod` on the rows
/// (in the database and in `rows`).
pub async fn deliver_notifications(
    svc: &Services,
    rows: &mut [notifications::Model],
) -> AppResult<()> {
    let mut by_church: HashMap<String, Vec<String>> = HashMap::new();
    for r in rows.iter() {
        by_church
            .entry(r.church_id.clone())
            .or_default()
            .push(r.person_id.clone());
    }
    let mut counts = HashMap::new();
    for (church, people) in by_church {
        for (person, c) in counts_many(svc, &church, &people).await? {
            counts.insert((church.clone(), person), c);
        }
    }
    let mut reached = Vec::new();
    for r in rows.iter_mut() {
        let data = CountsData {
            counts: counts
                .get(&(r.church_id.clone(), r.person_id.clone()))
                .copied()
                .unwrap_or_default(),
        };
        let n = svc.send_to_person(
            &r.church_id,
            &r.person_id,
            ALERT_CONVERSATION,
            Action::Notification,
            &data,
        );
        let reached_any = svc.reached_person(&r.church_id, &r.person_id, n).await?;
        r.delivery_method = reached_any.then(|| "socket".to_string());
        if reached_any {
            reached.push(r.id.clone());
        }
    }
    // Rows are created with a null deliveryMethod, so only the reached ones change.
    Ok(svc
        .store()
        .set_delivery_method(reached, Some("socket"))
        .await?)
}
