//! The alerts flows of §7: counts, the private-message flow run inside a message's
//! transaction, and the `privateMessage` / `notification` frames after the commit.
use std::collections::HashMap;

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, IsolationLevel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionOptions, TransactionTrait,
};
use serde::Serialize;

use super::Services;
use super::model::Counts;
use crate::error::AppResult;
use crate::hub::Action;
use crate::store::Store;
use crate::store::entities::{conversations, notifications, private_messages as pm};

/// `contentType` of conversations, notifications and alerts that belong to private messages.
pub const PRIVATE_MESSAGE: &str = crate::auth::access::ContentType::PrivateMessage.as_str();

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
pub async fn counts<C: ConnectionTrait>(db: &C, church: &str, person: &str) -> AppResult<Counts> {
    let notification_count = notifications::Entity::find()
        .filter(notifications::Column::ChurchId.eq(church))
        .filter(notifications::Column::PersonId.eq(person))
        .filter(notifications::Column::IsNew.eq(true))
        .filter(notifications::Column::ContentType.ne(PRIVATE_MESSAGE))
        .count(db)
        .await?;
    let pm_count = pm::Entity::find()
        .filter(pm::Column::ChurchId.eq(church))
        .filter(pm::Column::NotifyPersonId.eq(person))
        .count(db)
        .await?;
    Ok(Counts {
        notification_count,
        pm_count,
    })
}

/// The counts of several people of one church in two grouped queries, so a fan-out costs
/// the same number of round trips whatever its size. People with nothing get zeros.
pub async fn counts_many<C: ConnectionTrait>(
    db: &C,
    church: &str,
    people: &[String],
) -> AppResult<HashMap<String, Counts>> {
    let mut out: HashMap<String, Counts> = people
        .iter()
        .map(|p| (p.clone(), Counts::default()))
        .collect();
    if people.is_empty() {
        return Ok(out);
    }
    let unread: Vec<(String, i64)> = notifications::Entity::find()
        .select_only()
        .column(notifications::Column::PersonId)
        .column_as(Expr::col(notifications::Column::Id).count(), "n")
        .filter(notifications::Column::ChurchId.eq(church))
        .filter(notifications::Column::PersonId.is_in(people.iter().cloned()))
        .filter(notifications::Column::IsNew.eq(true))
        .filter(notifications::Column::ContentType.ne(PRIVATE_MESSAGE))
        .group_by(notifications::Column::PersonId)
        .into_tuple()
        .all(db)
        .await?;
    for (person, n) in unread {
        if let Some(c) = out.get_mut(&person) {
            c.notification_count = u64::try_from(n).unwrap_or_default();
        }
    }
    let flagged: Vec<(String, i64)> = pm::Entity::find()
        .select_only()
        .column(pm::Column::NotifyPersonId)
        .column_as(Expr::col(pm::Column::Id).count(), "n")
        .filter(pm::Column::ChurchId.eq(church))
        .filter(pm::Column::NotifyPersonId.is_in(people.iter().cloned()))
        .group_by(pm::Column::NotifyPersonId)
        .into_tuple()
        .all(db)
        .await?;
    for (person, n) in flagged {
        if let Some(c) = out.get_mut(&person) {
            c.pm_count = u64::try_from(n).unwrap_or_default();
        }
    }
    Ok(out)
}

/// Steps 1–4 of the private-message flow, for a message just **created** in `conv` (a
/// conversation with `contentType = "privateMessage"`), inside the message's transaction.
pub async fn on_message_created(
    txn: &DatabaseTransaction,
    conv: &conversations::Model,
    sender_person: Option<&str>,
    sender_name: &str,
    now: i64,
) -> Result<Option<PendingPmAlert>, DbErr> {
    // The row lock serializes this flow per thread with itself and with the inbox reads,
    // so two messages cannot both create the recipient's unread notification. Locking
    // reads also see the latest committed rows under MySQL's REPEATABLE READ snapshot.
    let Some(row) = pm::Entity::find()
        .filter(pm::Column::ConversationId.eq(&conv.id))
        .lock_exclusive()
        .one(txn)
        .await?
    else {
        return Ok(None);
    };
    let recipient = match sender_person {
        Some(s) if s == row.from_person_id => row.to_person_id.clone(),
        Some(s) if s == row.to_person_id => row.from_person_id.clone(),
        _ => {
            if row.notify_person_id.is_some() {
                set_notify(txn, &row.id, None).await?;
            }
            return Ok(None);
        }
    };
    if row.notify_person_id.as_deref() != Some(recipient.as_str()) {
        set_notify(txn, &row.id, Some(recipient.clone())).await?;
    }
    let message = format!("New Message from {sender_name}");
    let unread = notifications::Entity::find()
        .filter(notifications::Column::ChurchId.eq(&row.church_id))
        .filter(notifications::Column::PersonId.eq(&recipient))
        .filter(notifications::Column::ContentType.eq(PRIVATE_MESSAGE))
        .filter(notifications::Column::ContentId.eq(&row.id))
        .filter(notifications::Column::IsNew.eq(true))
        .order_by_desc(notifications::Column::TimeSent)
        .lock_exclusive()
        .one(txn)
        .await?;
    let notification_id = match unread {
        Some(n) => {
            notifications::Entity::update_many()
                .col_expr(notifications::Column::Message, Expr::value(message))
                .col_expr(notifications::Column::TimeSent, Expr::value(now))
                .filter(notifications::Column::Id.eq(&n.id))
                .exec(txn)
                .await?;
            n.id
        }
        None => {
            let id = crate::ids::new_id();
            let am = notifications::ActiveModel {
                id: Set(id.clone()),
                church_id: Set(row.church_id.clone()),
                person_id: Set(recipient.clone()),
                content_type: Set(PRIVATE_MESSAGE.to_string()),
                content_id: Set(row.id.clone()),
                time_sent: Set(now),
                is_new: Set(true),
                message: Set(message),
                link: Set(None),
                delivery_method: Set(None),
                triggered_by_person_id: Set(sender_person.map(str::to_string)),
                category: Set(Some("direct_messages".to_string())),
            };
            notifications::Entity::insert(am)
                .exec_without_returning(txn)
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

async fn set_notify(txn: &DatabaseTransaction, id: &str, to: Option<String>) -> Result<(), DbErr> {
    pm::Entity::update_many()
        .col_expr(pm::Column::NotifyPersonId, Expr::value(to))
        .filter(pm::Column::Id.eq(id))
        .exec(txn)
        .await?;
    Ok(())
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
    let db = &svc.store().db;
    let mut by_church: HashMap<&str, Vec<String>> = HashMap::new();
    for a in alerts {
        by_church
            .entry(&a.church_id)
            .or_default()
            .push(a.recipient.clone());
    }
    let mut counts = HashMap::new();
    for (church, people) in by_church {
        for (person, c) in counts_many(db, church, &people).await? {
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
    set_delivery_method(db, reached, Some("socket")).await?;
    set_delivery_method(db, missed, None).await?;
    Ok(())
}

impl Services {
    /// Whether a frame just sent to a person's alerts reached a row (§7, `deliveryMethod`):
    /// `local` of this node's sockets, or, across nodes, any alerts row another node holds
    /// (that node queues the frame as it arrives through the broker).
    async fn reached_person(&self, church: &str, person: &str, local: usize) -> AppResult<bool> {
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
    let db = &svc.store().db;
    let mut by_church: HashMap<String, Vec<String>> = HashMap::new();
    for r in rows.iter() {
        by_church
            .entry(r.church_id.clone())
            .or_default()
            .push(r.person_id.clone());
    }
    let mut counts = HashMap::new();
    for (church, people) in by_church {
        for (person, c) in counts_many(db, &church, &people).await? {
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
    set_delivery_method(db, reached, Some("socket")).await
}

async fn set_delivery_method<C: ConnectionTrait>(
    db: &C,
    ids: Vec<String>,
    method: Option<&str>,
) -> AppResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    notifications::Entity::update_many()
        .col_expr(
            notifications::Column::DeliveryMethod,
            Expr::value(method.map(str::to_string)),
        )
        .filter(notifications::Column::Id.is_in(ids))
        .exec(db)
        .await?;
    Ok(())
}

/// A write transaction with an explicit isolation level on PostgreSQL and MySQL (SQLite
/// write transactions are IMMEDIATE and therefore already serial).
pub(crate) async fn begin_isolated(
    store: &Store,
    level: IsolationLevel,
) -> Result<DatabaseTransaction, DbErr> {
    if store.db.get_database_backend() == DbBackend::Sqlite {
        return store.begin_write().await;
    }
    store
        .db
        .begin_with_options(TransactionOptions {
            isolation_level: Some(level),
            ..Default::default()
        })
        .await
}
