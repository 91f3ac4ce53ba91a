//! Conversations and the rows that hang off one: its private-message pair, its blocked IPs.
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder};

use super::Store;
use super::entities::{blocked_ips, conversations, private_messages};

impl Store {
    pub async fn conversation(&self, id: &str) -> Result<Option<conversations::Model>, DbErr> {
        conversations::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
    }

    pub async fn private_message_of(
        &self,
        conversation_id: &str,
    ) -> Result<Option<private_messages::Model>, DbErr> {
        private_messages::Entity::find()
            .filter(private_messages::Column::ConversationId.eq(conversation_id))
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

    pub async fn blocked_ips(
        &self,
        church: &str,
        conversation: &str,
    ) -> Result<Vec<String>, DbErr> {
        let rows = blocked_ips::Entity::find()
            .filter(blocked_ips::Column::ChurchId.eq(church))
            .filter(blocked_ips::Column::ConversationId.eq(conversation))
            .order_by_asc(blocked_ips::Column::IpAddress)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|r| r.ip_address).collect())
    }
}
