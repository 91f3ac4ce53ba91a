//! Private messages (§10.5): the participants row of a private conversation, the inbox and
//! its side effects (§7), and deleting a whole thread.
use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbErr,
    EntityTrait, IsolationLevel, QueryFilter, QuerySelect,
};

use super::Services;
use super::alerts::{PRIVATE_MESSAGE, begin_isolated};
use super::model::{
    Conversation, ConversationWithMessages, Message, PrivateMessage, PrivateMessageView,
};
use crate::auth::{Caller, Claims};
use crate::error::{AppError, AppResult};
use crate::store::entities::{
    conversations, message_reactions, messages, notifications, private_messages as pm,
};

/// One item of `POST /privatemessages`.
#[derive(Debug, Clone)]
pub struct NewPrivateMessage {
    pub to_person_id: String,
    pub conversation_id: String,
}

fn is_participant(row: &pm::Model, person: &str) -> bool {
    row.from_person_id == person || row.to_person_id == person
}

fn same_pair(row: &pm::Model, a: &str, b: &str) -> bool {
    (row.from_person_id == a && row.to_person_id == b)
        || (row.from_person_id == b && row.to_person_id == a)
}

/// `POST /privatemessages`: attaches `(caller, toPersonId)` to each conversation, or returns
/// the conversation's row for the same pair. All items or none.
pub async fn create(
    svc: &Services,
    caller: &Caller,
    items: &[NewPrivateMessage],
) -> AppResult<Vec<PrivateMessage>> {
    let me = super::person(caller)?;
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let store = svc.store();
    let rows = store
        .write(|| async {
            let txn = store.begin_write().await?;
            let wanted: Vec<String> = items
                .iter()
                .map(|i| i.conversation_id.clone())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let found: HashSet<String> = conversations::Entity::find()
                .select_only()
                .column(conversations::Column::Id)
                .filter(conversations::Column::ChurchId.eq(&me.church_id))
                .filter(conversations::Column::Id.is_in(wanted))
                .into_tuple::<String>()
                .all(&txn)
                .await?
                .into_iter()
                .collect();
            if items.iter().any(|i| !found.contains(&i.conversation_id)) {
                return Err(AppError::NotFound("Conversation not found"));
            }
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let row = attach(&txn, me, item).await?;
                if !same_pair(&row, &me.person_id, &item.to_person_id) {
                    return Err(AppError::Conflict("Conversation already has participants"));
                }
                out.push(row);
            }
            txn.commit().await?;
            Ok(out)
        })
        .await?;
    Ok(rows.into_iter().map(PrivateMessage::from).collect())
}

/// Inserts the row unless the conversation has one, then reads whichever row won.
/// `conversationId` is unique, so a concurrent create of the same thread waits on the
/// index instead of failing; the locking read then sees the committed winner.
async fn attach(
    txn: &DatabaseTransaction,
    me: &Claims,
    item: &NewPrivateMessage,
) -> Result<pm::Model, DbErr> {
    let am = pm::ActiveModel {
        id: Set(crate::ids::new_id()),
        church_id: Set(me.church_id.clone()),
        from_person_id: Set(me.person_id.clone()),
        to_person_id: Set(item.to_person_id.clone()),
        conversation_id: Set(item.conversation_id.clone()),
        notify_person_id: Set(None),
    };
    pm::Entity::insert(am)
        .on_conflict(
            OnConflict::column(pm::Column::ConversationId)
                .do_nothing_on([pm::Column::Id])
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    pm::Entity::find()
        .filter(pm::Column::ConversationId.eq(&item.conversation_id))
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("private message after insert".into()))
}

/// `GET /privatemessages`: the caller's threads, most recent message first. The response is
/// read before the inbox side effects (§10.5) are applied, in the same transaction.
pub async fn list(svc: &Services, caller: &Caller) -> AppResult<Vec<PrivateMessageView>> {
    let me = super::person(caller)?;
    let store = svc.store();
    let views = store
        .write(|| async {
            // READ COMMITTED on MySQL so the locked rows and the reads after them agree.
            let txn = begin_isolated(store, IsolationLevel::ReadCommitted).await?;
            // Locked so that a message committing meanwhile either shows in the response
            // or flags the thread again after this commit, never is cleared unseen.
            let rows = pm::Entity::find()
                .filter(pm::Column::ChurchId.eq(&me.church_id))
                .filter(
                    Condition::any()
                        .add(pm::Column::FromPersonId.eq(&me.person_id))
                        .add(pm::Column::ToPersonId.eq(&me.person_id)),
                )
                .lock_exclusive()
                .all(&txn)
                .await?;
            let mut views = views_of(&txn, rows).await?;
            views.sort_by(|(a_ms, a), (b_ms, b)| {
                // Descending time, threads without messages last, then by id for stability.
                b_ms.cmp(a_ms)
                    .then_with(|| a.private_message.id.cmp(&b.private_message.id))
            });
            pm::Entity::update_many()
                .col_expr(pm::Column::NotifyPersonId, Expr::value(None::<String>))
                .filter(pm::Column::ChurchId.eq(&me.church_id))
                .filter(pm::Column::NotifyPersonId.eq(&me.person_id))
                .exec(&txn)
                .await?;
            mark_pm_notifications_read(&txn, me, None).await?;
            txn.commit().await?;
            Ok::<_, AppError>(views.into_iter().map(|(_, v)| v).collect::<Vec<_>>())
        })
        .await?;
    Ok(views)
}

/// `GET /privatemessages/{id}`: participants only. Opening a thread flagged for the caller
/// clears the flag and reads its notification; the response shows the cleared value.
pub async fn get(svc: &Services, caller: &Caller, id: &str) -> AppResult<PrivateMessageView> {
    let me = super::person(caller)?;
    let store = svc.store();
    let mut row = load(svc, me, id)
        .await?
        .ok_or(AppError::NotFound("Private message not found"))?;
    if !is_participant(&row, &me.person_id) {
        return Err(AppError::Unauthorized);
    }
    if row.notify_person_id.as_deref() == Some(me.person_id.as_str()) {
        store
            .write(|| async {
                let txn = store.begin_write().await?;
                pm::Entity::update_many()
                    .col_expr(pm::Column::NotifyPersonId, Expr::value(None::<String>))
                    .filter(pm::Column::Id.eq(&row.id))
                    .filter(pm::Column::NotifyPersonId.eq(&me.person_id))
                    .exec(&txn)
                    .await?;
                mark_pm_notifications_read(&txn, me, Some(&row.id)).await?;
                txn.commit().await?;
                Ok::<_, AppError>(())
            })
            .await?;
        row.notify_person_id = None;
    }
    let (_, view) = views_of(&store.db, vec![row])
        .await?
        .pop()
        .ok_or_else(|| AppError::Internal("view of one row is missing".into()))?;
    Ok(view)
}

/// `DELETE /privatemessages/{id}`: participants only; the row, its conversation with the
/// messages and reactions, and the thread's notifications go in one transaction.
pub async fn delete(svc: &Services, caller: &Caller, id: &str) -> AppResult<()> {
    let me = super::person(caller)?;
    let store = svc.store();
    let row = load(svc, me, id)
        .await?
        .ok_or(AppError::NotFound("Conversation not found"))?;
    if !is_participant(&row, &me.person_id) {
        return Err(AppError::Unauthorized);
    }
    store
        .write(|| async {
            let txn = store.begin_write().await?;
            message_reactions::Entity::delete_many()
                .filter(message_reactions::Column::ChurchId.eq(&row.church_id))
                .filter(message_reactions::Column::ConversationId.eq(&row.conversation_id))
                .exec(&txn)
                .await?;
            messages::Entity::delete_many()
                .filter(messages::Column::ChurchId.eq(&row.church_id))
                .filter(messages::Column::ConversationId.eq(&row.conversation_id))
                .exec(&txn)
                .await?;
            conversations::Entity::delete_many()
                .filter(conversations::Column::ChurchId.eq(&row.church_id))
                .filter(conversations::Column::Id.eq(&row.conversation_id))
                .exec(&txn)
                .await?;
            notifications::Entity::delete_many()
                .filter(notifications::Column::ChurchId.eq(&row.church_id))
                .filter(notifications::Column::ContentType.eq(PRIVATE_MESSAGE))
                .filter(notifications::Column::ContentId.eq(&row.id))
                .exec(&txn)
                .await?;
            pm::Entity::delete_by_id(row.id.clone()).exec(&txn).await?;
            txn.commit().await?;
            Ok::<_, AppError>(())
        })
        .await?;
    Ok(())
}

/// A row of the caller's church by id.
async fn load(svc: &Services, me: &Claims, id: &str) -> AppResult<Option<pm::Model>> {
    Ok(pm::Entity::find_by_id(id.to_string())
        .one(&svc.store().db)
        .await?
        .filter(|r| r.church_id == me.church_id))
}

/// Marks the caller's unread private-message notifications read: all of them, or those of
/// one thread.
async fn mark_pm_notifications_read(
    txn: &DatabaseTransaction,
    me: &Claims,
    thread: Option<&str>,
) -> Result<(), DbErr> {
    let mut q = notifications::Entity::update_many()
        .col_expr(notifications::Column::IsNew, Expr::value(false))
        .filter(notifications::Column::ChurchId.eq(&me.church_id))
        .filter(notifications::Column::PersonId.eq(&me.person_id))
        .filter(notifications::Column::ContentType.eq(PRIVATE_MESSAGE))
        .filter(notifications::Column::IsNew.eq(true));
    if let Some(t) = thread {
        q = q.filter(notifications::Column::ContentId.eq(t));
    }
    q.exec(txn).await?;
    Ok(())
}

/// The GET form of rows, each with the epoch-ms `lastMessageTime` for sorting. Three
/// queries whatever the number of rows: rows, their conversations, their last posts.
async fn views_of<C: ConnectionTrait>(
    db: &C,
    rows: Vec<pm::Model>,
) -> Result<Vec<(Option<i64>, PrivateMessageView)>, DbErr> {
    let conv_ids: Vec<String> = rows
        .iter()
        .map(|r| r.conversation_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let convs: HashMap<String, conversations::Model> = if conv_ids.is_empty() {
        HashMap::new()
    } else {
        conversations::Entity::find()
            .filter(conversations::Column::Id.is_in(conv_ids))
            .all(db)
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect()
    };
    let last_ids: Vec<String> = convs
        .values()
        .filter_map(|c| c.last_post_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let lasts: HashMap<String, messages::Model> = if last_ids.is_empty() {
        HashMap::new()
    } else {
        messages::Entity::find()
            .filter(messages::Column::Id.is_in(last_ids))
            .all(db)
            .await?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect()
    };
    Ok(rows
        .into_iter()
        .map(|row| {
            let conv = convs.get(&row.conversation_id).cloned();
            let last = conv
                .as_ref()
                .and_then(|c| c.last_post_id.as_ref())
                .and_then(|id| lasts.get(id))
                .filter(|m| m.conversation_id == row.conversation_id)
                .cloned();
            let last_ms = last.as_ref().map(|m| m.time_sent);
            let view = PrivateMessageView {
                private_message: PrivateMessage::from(row),
                last_message_time: last_ms.map(crate::time::format_ms),
                conversation: conv.map(|c| ConversationWithMessages {
                    conversation: Conversation::from(c),
                    messages: last.map(Message::from).into_iter().collect(),
                }),
            };
            (last_ms, view)
        })
        .collect())
}
