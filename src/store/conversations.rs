//! The `conversations` table.
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter, QueryOrder,
};

use super::entities::{blocked_ips, conversations, message_reactions, messages};
use super::{Store, Tx};

impl Store {
    pub async fn conversation(&self, id: &str) -> Result<Option<conversations::Model>, DbErr> {
        conversations::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
    }

    pub async fn insert_conversation(&self, c: conversations::Model) -> Result<(), DbErr> {
        let am: conversations::ActiveModel = c.into();
        conversations::Entity::insert(am)
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Conversations of a content item in a church, newest first.
    pub async fn conversations_by_content(
        &self,
        church: &str,
        content_type: &str,
        content_id: &str,
        created_since: Option<i64>,
    ) -> Result<Vec<conversations::Model>, DbErr> {
        let mut q = conversations::Entity::find()
            .filter(conversations::Column::ChurchId.eq(church))
            .filter(conversations::Column::ContentType.eq(content_type))
            .filter(conversations::Column::ContentId.eq(content_id));
        if let Some(t) = created_since {
            q = q.filter(conversations::Column::DateCreated.gte(t));
        }
        q.order_by_desc(conversations::Column::DateCreated)
            .order_by_desc(conversations::Column::Id)
            .all(&self.db)
            .await
    }

    pub async fn church_known(&self, church: &str) -> Result<bool, DbErr> {
        Ok(conversations::Entity::find()
            .filter(conversations::Column::ChurchId.eq(church))
            .count(&self.db)
            .await?
            > 0)
    }

    pub async fn conversations_by_ids(
        &self,
        ids: Vec<String>,
    ) -> Result<Vec<conversations::Model>, DbErr> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        conversations::Entity::find()
            .filter(conversations::Column::Id.is_in(ids))
            .all(&self.db)
            .await
    }

    /// Group conversations of a church that have posts.
    pub async fn group_conversations(
        &self,
        church: &str,
        groups: Vec<String>,
    ) -> Result<Vec<conversations::Model>, DbErr> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        conversations::Entity::find()
            .filter(conversations::Column::ChurchId.eq(church))
            .filter(conversations::Column::GroupId.is_in(groups))
            .filter(conversations::Column::LastPostId.is_not_null())
            .all(&self.db)
            .await
    }
}

impl Tx {
    pub async fn insert_conversation(&self, c: &conversations::Model) -> Result<(), DbErr> {
        let am: conversations::ActiveModel = c.clone().into();
        conversations::Entity::insert(am)
            .exec_without_returning(&self.0)
            .await?;
        Ok(())
    }

    /// Rewrites every column of an existing conversation.
    pub async fn update_conversation(&self, c: &conversations::Model) -> Result<(), DbErr> {
        conversations::Entity::update(c.clone().into_active_model().reset_all())
            .exec(&self.0)
            .await?;
        Ok(())
    }

    /// Deletes conversations with their messages and reactions.
    pub async fn delete_conversations(&self, ids: Vec<String>) -> Result<(), DbErr> {
        let db = &self.0;
        if ids.is_empty() {
            return Ok(());
        }
        message_reactions::Entity::delete_many()
            .filter(message_reactions::Column::ConversationId.is_in(ids.clone()))
            .exec(db)
            .await?;
        messages::Entity::delete_many()
            .filter(messages::Column::ConversationId.is_in(ids.clone()))
            .exec(db)
            .await?;
        blocked_ips::Entity::delete_many()
            .filter(blocked_ips::Column::ConversationId.is_in(ids.clone()))
            .exec(db)
            .await?;
        conversations::Entity::delete_many()
            .filter(conversations::Column::Id.is_in(ids))
            .exec(db)
            .await?;
        Ok(())
    }
}
