//! The `privateMessages` table: the participants of a private conversation, the flag that
//! a thread has news for one of them, and deleting a whole thread (§10.5).
use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    QuerySelect,
};

use super::entities::{conversations, message_reactions, messages, private_messages as pm};
use super::{Store, Tx};

/// A thread as its readers see it: the row, its conversation and that conversation's last
/// message (when the conversation and the message still exist).
#[derive(Debug, Clone)]
pub struct Thread {
    pub row: pm::Model,
    pub conversation: Option<conversations::Model>,
    pub last: Option<messages::Model>,
}

impl Store {
    pub async fn private_message(&self, id: &str) -> Result<Option<pm::Model>, DbErr> {
        pm::Entity::find_by_id(id.to_string()).one(&self.db).await
    }

    /// The participants row of a conversation, if it is a private one.
    pub async fn private_message_of(
        &self,
        conversation_id: &str,
    ) -> Result<Option<pm::Model>, DbErr> {
        pm::Entity::find()
            .filter(pm::Column::ConversationId.eq(conversation_id))
            .one(&self.db)
            .await
    }

    /// `rows` with their conversations and last messages.
    pub async fn threads(&self, rows: Vec<pm::Model>) -> Result<Vec<Thread>, DbErr> {
        threads(&self.db, rows).await
    }
}

impl Tx {
    /// Which of `ids` are conversations of `church`.
    pub async fn conversations_of_church(
        &self,
        church: &str,
        ids: Vec<String>,
    ) -> Result<HashSet<String>, DbErr> {
        Ok(conversations::Entity::find()
            .select_only()
            .column(conversations::Column::Id)
            .filter(conversations::Column::ChurchId.eq(church))
            .filter(conversations::Column::Id.is_in(ids))
            .into_tuple::<String>()
            .all(&self.0)
            .await?
            .into_iter()
            .collect())
    }

    /// Inserts the participants row of `conversation` unless it has one, then reads
    /// whichever row won. `conversationId` is unique, so a concurrent create of the same
    /// thread waits on the index instead of failing; the locking read then sees the
    /// committed winner.
    pub async fn attach_participants(
        &self,
        church: &str,
        from: &str,
        to: &str,
        conversation: &str,
    ) -> Result<pm::Model, DbErr> {
        let am = pm::ActiveModel {
            id: Set(crate::ids::new_id()),
            church_id: Set(church.to_string()),
            from_person_id: Set(from.to_string()),
            to_person_id: Set(to.to_string()),
            conversation_id: Set(conversation.to_string()),
            notify_person_id: Set(None),
        };
        pm::Entity::insert(am)
            .on_conflict(
                OnConflict::column(pm::Column::ConversationId)
                    .do_nothing_on([pm::Column::Id])
                    .to_owned(),
            )
            .exec_without_returning(&self.0)
            .await?;
        self.thread_of(conversation)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("private message after insert".into()))
    }

    /// The participants row of a conversation, locked for the rest of the transaction (it
    /// serializes the private-message flow per thread; locking reads also see the latest
    /// committed rows under MySQL's REPEATABLE READ snapshot).
    pub async fn thread_of(&self, conversation: &str) -> Result<Option<pm::Model>, DbErr> {
        pm::Entity::find()
            .filter(pm::Column::ConversationId.eq(conversation))
            .lock_exclusive()
            .one(&self.0)
            .await
    }

    /// A person's threads in a church, locked for the rest of the transaction.
    pub async fn threads_of(&self, church: &str, person: &str) -> Result<Vec<pm::Model>, DbErr> {
        pm::Entity::find()
            .filter(pm::Column::ChurchId.eq(church))
            .filter(
                Condition::any()
                    .add(pm::Column::FromPersonId.eq(person))
                    .add(pm::Column::ToPersonId.eq(person)),
            )
            .lock_exclusive()
            .all(&self.0)
            .await
    }

    /// `rows` with their conversations and last messages, read in this transaction.
    pub async fn threads(&self, rows: Vec<pm::Model>) -> Result<Vec<Thread>, DbErr> {
        threads(&self.0, rows).await
    }

    /// Sets (or clears) who a thread has news for.
    pub async fn set_notify(&self, id: &str, to: Option<String>) -> Result<(), DbErr> {
        pm::Entity::update_many()
            .col_expr(pm::Column::NotifyPersonId, Expr::value(to))
            .filter(pm::Column::Id.eq(id))
            .exec(&self.0)
            .await?;
        Ok(())
    }

    /// Clears the news flag of every thread of `church` flagged for `person`, or of the
    /// one thread `id` if it is flagged for them.
    pub async fn clear_notify(
        &self,
        church: &str,
        person: &str,
        id: Option<&str>,
    ) -> Result<(), DbErr> {
        let mut q = pm::Entity::update_many()
            .col_expr(pm::Column::NotifyPersonId, Expr::value(None::<String>))
            .filter(pm::Column::ChurchId.eq(church))
            .filter(pm::Column::NotifyPersonId.eq(person));
        if let Some(id) = id {
            q = q.filter(pm::Column::Id.eq(id));
        }
        q.exec(&self.0).await?;
        Ok(())
    }

    /// Deletes a thread: its row, its conversation with the messages and reactions, and
    /// its notifications.
    pub async fn delete_thread(&self, row: &pm::Model) -> Result<(), DbErr> {
        let db = &self.0;
        message_reactions::Entity::delete_many()
            .filter(message_reactions::Column::ChurchId.eq(&row.church_id))
            .filter(message_reactions::Column::ConversationId.eq(&row.conversation_id))
            .exec(db)
            .await?;
        messages::Entity::delete_many()
            .filter(messages::Column::ChurchId.eq(&row.church_id))
            .filter(messages::Column::ConversationId.eq(&row.conversation_id))
            .exec(db)
            .await?;
        conversations::Entity::delete_many()
            .filter(conversations::Column::ChurchId.eq(&row.church_id))
            .filter(conversations::Column::Id.eq(&row.conversation_id))
            .exec(db)
            .await?;
        super::notifications::delete_thread_notifications(db, &row.church_id, &row.id).await?;
        pm::Entity::delete_by_id(row.id.clone()).exec(db).await?;
        Ok(())
    }
}

/// Three queries whatever the number of rows: rows, their conversations, their last posts.
async fn threads<C: ConnectionTrait>(db: &C, rows: Vec<pm::Model>) -> Result<Vec<Thread>, DbErr> {
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
            let conversation = convs.get(&row.conversation_id).cloned();
            let last = conversation
                .as_ref()
                .and_then(|c| c.last_post_id.as_ref())
                .and_then(|id| lasts.get(id))
                .filter(|m| m.conversation_id == row.conversation_id)
                .cloned();
            Thread {
                row,
                conversation,
                last,
            }
        })
        .collect())
}
