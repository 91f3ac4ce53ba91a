//! Private messages (§10.5): the participants row of a private conversation, the inbox and
//! its side effects (§7), and deleting a whole thread.
use std::collections::HashSet;

use super::Services;
use super::model::{
    Conversation, ConversationWithMessages, Message, PrivateMessage, PrivateMessageView,
};
use crate::auth::{Caller, Claims};
use crate::error::{AppError, AppResult};
use crate::store::entities::private_messages as pm;
use crate::store::{Isolation, Thread};

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
            let tx = store.begin_write().await?;
            let wanted: Vec<String> = items
                .iter()
                .map(|i| i.conversation_id.clone())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let found = tx.conversations_of_church(&me.church_id, wanted).await?;
            if items.iter().any(|i| !found.contains(&i.conversation_id)) {
                return Err(AppError::NotFound("Conversation not found"));
            }
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let row = tx
                    .attach_participants(
                        &me.church_id,
                        &me.person_id,
                        &item.to_person_id,
                        &item.conversation_id,
                    )
                    .await?;
                if !same_pair(&row, &me.person_id, &item.to_person_id) {
                    return Err(AppError::Conflict("Conversation already has participants"));
                }
                out.push(row);
            }
            tx.commit().await?;
            Ok(out)
        })
        .await?;
    Ok(rows.into_iter().map(PrivateMessage::from).collect())
}

/// `GET /privatemessages`: the caller's threads, most recent message first. The response is
/// read before the inbox side effects (§10.5) are applied, in the same transaction.
pub async fn list(svc: &Services, caller: &Caller) -> AppResult<Vec<PrivateMessageView>> {
    let me = super::person(caller)?;
    let store = svc.store();
    let views = store
        .write(|| async {
            // READ COMMITTED on MySQL so the locked rows and the reads after them agree.
            let tx = store.begin_isolated(Isolation::ReadCommitted).await?;
            // Locked so that a message committing meanwhile either shows in the response
            // or flags the thread again after this commit, never is cleared unseen.
            let rows = tx.threads_of(&me.church_id, &me.person_id).await?;
            let mut views: Vec<_> = tx.threads(rows).await?.into_iter().map(view).collect();
            views.sort_by(|(a_ms, a), (b_ms, b)| {
                // Descending time, threads without messages last, then by id for stability.
                b_ms.cmp(a_ms)
                    .then_with(|| a.private_message.id.cmp(&b.private_message.id))
            });
            tx.clear_notify(&me.church_id, &me.person_id, None).await?;
            tx.mark_thread_notifications_read(&me.church_id, &me.person_id, None)
                .await?;
            tx.commit().await?;
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
                let tx = store.begin_write().await?;
                tx.clear_notify(&me.church_id, &me.person_id, Some(&row.id))
                    .await?;
                tx.mark_thread_notifications_read(&me.church_id, &me.person_id, Some(&row.id))
                    .await?;
                tx.commit().await?;
                Ok::<_, AppError>(())
            })
            .await?;
        row.notify_person_id = None;
    }
    let (_, view) = store
        .threads(vec![row])
        .await?
        .pop()
        .map(view)
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
            let tx = store.begin_write().await?;
            tx.delete_thread(&row).await?;
            tx.commit().await?;
            Ok::<_, AppError>(())
        })
        .await?;
    Ok(())
}

/// A row of the caller's church by id.
async fn load(svc: &Services, me: &Claims, id: &str) -> AppResult<Option<pm::Model>> {
    Ok(svc
        .store()
        .private_message(id)
        .await?
        .filter(|r| r.church_id == me.church_id))
}

/// The GET form of a thread, with the epoch-ms `lastMessageTime` for sorting.
fn view(t: Thread) -> (Option<i64>, PrivateMessageView) {
    let last_ms = t.last.as_ref().map(|m| m.time_sent);
    let view = PrivateMessageView {
        private_message: PrivateMessage::from(t.row),
        last_message_time: last_ms.map(crate::time::format_ms),
        conversation: t.conversation.map(|c| ConversationWithMessages {
            conversation: Conversation::from(c),
            messages: t.last.map(Message::from).into_iter().collect(),
        }),
    };
    (last_ms, view)
}
