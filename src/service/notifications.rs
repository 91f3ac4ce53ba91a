//! Notifications (§10.6): counts, the caller's list, creation by a Messaging Admin with its
//! `notification` frames (§7), marking read and deleting.
use std::collections::HashSet;

use super::Services;
use super::alerts;
use super::model::{Counts, Notification};
use crate::auth::{Caller, Claims, Permission};
use crate::error::{AppError, AppResult};
use crate::store::Isolation;
use crate::store::entities::notifications;

/// The body of `POST /notifications/create`, validated.
#[derive(Debug, Clone)]
pub struct NewNotifications {
    pub people_ids: Vec<String>,
    pub content_type: String,
    pub content_id: String,
    pub message: String,
    pub link: Option<String>,
}

/// `GET /notifications/unreadCount`.
pub async fn unread_count(svc: &Services, caller: &Caller) -> AppResult<Counts> {
    let me = super::person(caller)?;
    alerts::counts(svc, &me.church_id, &me.person_id).await
}

/// `GET /notifications/my`: newest first, without private-message notifications; the rows
/// are then marked read, and the response shows them as they were before.
pub async fn my(svc: &Services, caller: &Caller) -> AppResult<Vec<Notification>> {
    let me = super::person(caller)?;
    let store = svc.store();
    let rows = store
        .write(|| async {
            let tx = store.begin_write().await?;
            let rows = tx.notifications_of(&me.church_id, &me.person_id).await?;
            // Only the rows returned: one created meanwhile stays unread until it is seen.
            let unread: Vec<String> = rows
                .iter()
                .filter(|r| r.is_new)
                .map(|r| r.id.clone())
                .collect();
            tx.mark_read(&unread).await?;
            tx.commit().await?;
            Ok::<_, AppError>(rows)
        })
        .await?;
    Ok(rows.into_iter().map(Notification::from).collect())
}

/// `POST /notifications/create`: one notification per person who has no unread one for the
/// same `(contentType, contentId)`, then the frames and `deliveryMethod`.
pub async fn create(
    svc: &Services,
    caller: &Caller,
    input: &NewNotifications,
) -> AppResult<Vec<Notification>> {
    let me = super::person(caller)?;
    if !is_admin(me) {
        return Err(AppError::Unauthorized);
    }
    let mut seen = HashSet::new();
    let people: Vec<String> = input
        .people_ids
        .iter()
        .filter(|p| seen.insert(p.as_str()))
        .cloned()
        .collect();
    if people.is_empty() {
        return Ok(Vec::new());
    }
    let store = svc.store();
    let mut rows = store
        .write(|| async {
            // "At most one unread per (person, contentType, contentId)" has no index behind
            // it (§11): SERIALIZABLE turns two concurrent creates into a conflict that
            // `write` retries, and the retry then sees the other's rows and skips them.
            let tx = store.begin_isolated(Isolation::Serializable).await?;
            let unread = tx
                .with_unread_about(
                    &me.church_id,
                    &people,
                    &input.content_type,
                    &input.content_id,
                )
                .await?;
            let now = crate::time::now_ms();
            let rows: Vec<notifications::Model> = people
                .iter()
                .filter(|p| !unread.contains(*p))
                .map(|p| notifications::Model {
                    id: crate::ids::new_id(),
                    church_id: me.church_id.clone(),
                    person_id: p.clone(),
                    content_type: input.content_type.clone(),
                    content_id: input.content_id.clone(),
                    time_sent: now,
                    is_new: true,
                    message: input.message.clone(),
                    link: input.link.clone(),
                    delivery_method: None,
                    triggered_by_person_id: Some(me.person_id.clone()),
                    category: None,
                })
                .collect();
            tx.insert_notifications(&rows).await?;
            tx.commit().await?;
            Ok::<_, AppError>(rows)
        })
        .await?;
    alerts::deliver_notifications(svc, &mut rows).await?;
    Ok(rows.into_iter().map(Notification::from).collect())
}

fn is_admin(me: &Claims) -> bool {
    me.has_permission(Permission::MessagingAdmin)
}

/// `POST /notifications/markRead/{churchId}/{personId}`: the person themself or a Messaging
/// Admin, in the caller's own church only.
pub async fn mark_read(
    svc: &Services,
    caller: &Caller,
    church: &str,
    person: &str,
) -> AppResult<()> {
    let me = super::person(caller)?;
    if church != me.church_id || (person != me.person_id && !is_admin(me)) {
        return Err(AppError::Unauthorized);
    }
    Ok(svc.store().mark_notifications_read(church, person).await?)
}

/// `DELETE /notifications/my`: the caller's notifications except private-message ones,
/// which belong to their threads.
pub async fn delete_my(svc: &Services, caller: &Caller) -> AppResult<()> {
    let me = super::person(caller)?;
    Ok(svc
        .store()
        .delete_notifications_of(&me.church_id, &me.person_id)
        .await?)
}

/// `DELETE /notifications/{churchId}/{id}`: its owner, or a Messaging Admin of its church.
pub async fn delete(svc: &Services, caller: &Caller, church: &str, id: &str) -> AppResult<()> {
    let me = super::person(caller)?;
    let store = svc.store();
    let row = store
        .notification(id)
        .await?
        .filter(|n| n.church_id == church)
        .ok_or(AppError::NotFound("Notification not found"))?;
    let owner = row.person_id == me.person_id;
    if row.church_id != me.church_id || !(owner || is_admin(me)) {
        return Err(AppError::Unauthorized);
    }
    Ok(store.delete_notification(&row.id).await?)
}
