//! The `notifications` table: a person's alerts, their unread counts and the private-message
//! flow's one unread notification per thread (§7).
use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::entities::{notifications, private_messages as pm};
use super::{Store, Tx};

/// `contentType` of the notifications that belong to private-message threads: they are
/// counted as `pmCount`, never listed among a person's notifications (§7). The service's
/// `ContentType::PrivateMessage` names the same string (a unit test holds them together).
pub const PRIVATE_MESSAGE: &str = "privateMessage";

/// Ids per `IN (…)` list when marking a whole listing read, well under every backend's
/// bind-parameter limit.
const IDS_PER_STATEMENT: usize = 500;

/// What a person has not seen: unread notifications (private-message ones excepted) and
/// threads flagged for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unread {
    pub notifications: u64,
    pub private_messages: u64,
}

impl Store {
    /// `notificationCount` and `pmCount` of `(church, person)` as committed (§7).
    pub async fn unread(&self, church: &str, person: &str) -> Result<Unread, DbErr> {
        let notifications = notifications::Entity::find()
            .filter(notifications::Column::ChurchId.eq(church))
            .filter(notifications::Column::PersonId.eq(person))
            .filter(notifications::Column::IsNew.eq(true))
            .filter(notifications::Column::ContentType.ne(PRIVATE_MESSAGE))
            .count(&self.db)
            .await?;
        let private_messages = pm::Entity::find()
            .filter(pm::Column::ChurchId.eq(church))
            .filter(pm::Column::NotifyPersonId.eq(person))
            .count(&self.db)
            .await?;
        Ok(Unread {
            notifications,
            private_messages,
        })
    }

    /// The counts of several people of one church in two grouped queries, so a fan-out costs
    /// the same number of round trips whatever its size. People with nothing get zeros.
    pub async fn unread_many(
        &self,
        church: &str,
        people: &[String],
    ) -> Result<HashMap<String, Unread>, DbErr> {
        let mut out: HashMap<String, Unread> = people
            .iter()
            .map(|p| (p.clone(), Unread::default()))
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
            .all(&self.db)
            .await?;
        for (person, n) in unread {
            if let Some(c) = out.get_mut(&person) {
                c.notifications = u64::try_from(n).unwrap_or_default();
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
            .all(&self.db)
            .await?;
        for (person, n) in flagged {
            if let Some(c) = out.get_mut(&person) {
                c.private_messages = u64::try_from(n).unwrap_or_default();
            }
        }
        Ok(out)
    }

    /// Sets `deliveryMethod` of some notifications.
    pub async fn set_delivery_method(
        &self,
        ids: Vec<String>,
        method: Option<&str>,
    ) -> Result<(), DbErr> {
        if ids.is_empty() {
            return Ok(());
        }
        notifications::Entity::update_many()
            .col_expr(
                notifications::Column::DeliveryMethod,
                Expr::value(method.map(str::to_string)),
            )
            .filter(notifications::Column::Id.is_in(ids))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Marks every unread notification of a person read.
    pub async fn mark_notifications_read(&self, church: &str, person: &str) -> Result<(), DbErr> {
        notifications::Entity::update_many()
            .col_expr(notifications::Column::IsNew, Expr::value(false))
            .filter(notifications::Column::ChurchId.eq(church))
            .filter(notifications::Column::PersonId.eq(person))
            .filter(notifications::Column::IsNew.eq(true))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Deletes a person's notifications except private-message ones, which belong to their
    /// threads.
    pub async fn delete_notifications_of(&self, church: &str, person: &str) -> Result<(), DbErr> {
        notifications::Entity::delete_many()
            .filter(notifications::Column::ChurchId.eq(church))
            .filter(notifications::Column::PersonId.eq(person))
            .filter(notifications::Column::ContentType.ne(PRIVATE_MESSAGE))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    pub async fn notification(&self, id: &str) -> Result<Option<notifications::Model>, DbErr> {
        notifications::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
    }

    pub async fn delete_notification(&self, id: &str) -> Result<(), DbErr> {
        notifications::Entity::delete_by_id(id.to_string())
            .exec(&self.db)
            .await?;
        Ok(())
    }
}

impl Tx {
    /// A person's notifications, newest first, without private-message ones.
    pub async fn notifications_of(
        &self,
        church: &str,
        person: &str,
    ) -> Result<Vec<notifications::Model>, DbErr> {
        notifications::Entity::find()
            .filter(notifications::Column::ChurchId.eq(church))
            .filter(notifications::Column::PersonId.eq(person))
            .filter(notifications::Column::ContentType.ne(PRIVATE_MESSAGE))
            .order_by_desc(notifications::Column::TimeSent)
            .order_by_desc(notifications::Column::Id)
            .all(&self.0)
            .await
    }

    /// Marks these notifications read, a bounded number of ids per statement.
    pub async fn mark_read(&self, ids: &[String]) -> Result<(), DbErr> {
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            notifications::Entity::update_many()
                .col_expr(notifications::Column::IsNew, Expr::value(false))
                .filter(notifications::Column::Id.is_in(chunk.to_vec()))
                .exec(&self.0)
                .await?;
        }
        Ok(())
    }

    /// Which of `people` have an unread notification about `(content_type, content_id)`.
    pub async fn with_unread_about(
        &self,
        church: &str,
        people: &[String],
        content_type: &str,
        content_id: &str,
    ) -> Result<HashSet<String>, DbErr> {
        Ok(notifications::Entity::find()
            .select_only()
            .column(notifications::Column::PersonId)
            .filter(notifications::Column::ChurchId.eq(church))
            .filter(notifications::Column::PersonId.is_in(people.iter().cloned()))
            .filter(notifications::Column::ContentType.eq(content_type))
            .filter(notifications::Column::ContentId.eq(content_id))
            .filter(notifications::Column::IsNew.eq(true))
            .into_tuple::<String>()
            .all(&self.0)
            .await?
            .into_iter()
            .collect())
    }

    pub async fn insert_notifications(&self, rows: &[notifications::Model]) -> Result<(), DbErr> {
        if rows.is_empty() {
            return Ok(());
        }
        notifications::Entity::insert_many(
            rows.iter()
                .cloned()
                .map(|n| n.into_active_model().reset_all()),
        )
        .exec_without_returning(&self.0)
        .await?;
        Ok(())
    }

    /// The newest unread notification of `person` about a private-message thread, locked
    /// for the rest of the transaction.
    pub async fn unread_thread_notification(
        &self,
        church: &str,
        person: &str,
        thread: &str,
    ) -> Result<Option<notifications::Model>, DbErr> {
        notifications::Entity::find()
            .filter(notifications::Column::ChurchId.eq(church))
            .filter(notifications::Column::PersonId.eq(person))
            .filter(notifications::Column::ContentType.eq(PRIVATE_MESSAGE))
            .filter(notifications::Column::ContentId.eq(thread))
            .filter(notifications::Column::IsNew.eq(true))
            .order_by_desc(notifications::Column::TimeSent)
            .lock_exclusive()
            .one(&self.0)
            .await
    }

    /// Rewrites a notification's message and time.
    pub async fn renotify(&self, id: &str, message: String, now: i64) -> Result<(), DbErr> {
        notifications::Entity::update_many()
            .col_expr(notifications::Column::Message, Expr::value(message))
            .col_expr(notifications::Column::TimeSent, Expr::value(now))
            .filter(notifications::Column::Id.eq(id))
            .exec(&self.0)
            .await?;
        Ok(())
    }

    /// Marks a person's unread private-message notifications read: all of them, or those
    /// of one thread.
    pub async fn mark_thread_notifications_read(
        &self,
        church: &str,
        person: &str,
        thread: Option<&str>,
    ) -> Result<(), DbErr> {
        let mut q = notifications::Entity::update_many()
            .col_expr(notifications::Column::IsNew, Expr::value(false))
            .filter(notifications::Column::ChurchId.eq(church))
            .filter(notifications::Column::PersonId.eq(person))
            .filter(notifications::Column::ContentType.eq(PRIVATE_MESSAGE))
            .filter(notifications::Column::IsNew.eq(true));
        if let Some(t) = thread {
            q = q.filter(notifications::Column::ContentId.eq(t));
        }
        q.exec(&self.0).await?;
        Ok(())
    }
}

/// Deletes the notifications of one private-message thread.
pub(super) async fn delete_thread_notifications<C: ConnectionTrait>(
    db: &C,
    church: &str,
    thread: &str,
) -> Result<(), DbErr> {
    notifications::Entity::delete_many()
        .filter(notifications::Column::ChurchId.eq(church))
        .filter(notifications::Column::ContentType.eq(PRIVATE_MESSAGE))
        .filter(notifications::Column::ContentId.eq(thread))
        .exec(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_private_message_type_is_the_services() {
        assert_eq!(
            super::PRIVATE_MESSAGE,
            crate::auth::access::ContentType::PrivateMessage.as_str()
        );
    }
}
