//! An index for the queries that address a conversation's messages by id alone (catch-up,
//! stats, pages): `(conversationId, timeSent, id)` is exactly their filter and order.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const NAME: &str = "idx_messages_by_conversation";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // MySQL has no CREATE INDEX IF NOT EXISTS: ask first, so re-running stays harmless.
        if manager.has_index("messages", NAME).await? {
            return Ok(());
        }
        manager
            .create_index(
                Index::create()
                    .name(NAME)
                    .table("messages")
                    .col("conversationId")
                    .col("timeSent")
                    .col("id")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(NAME).table("messages").to_owned())
            .await
    }
}
