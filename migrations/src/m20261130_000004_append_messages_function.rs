//! PostgreSQL only: `messaging_append_messages`, the write of a post as one function call.
//!
//! A post's write is three statements (lock the conversations, insert the messages, update
//! each conversation's stats). Sent as one text batch they are parsed and planned again
//! for every post, and that was most of PostgreSQL's CPU per post. A PL/pgSQL function
//! keeps the plans of its statements for the session, and its call is an ordinary
//! prepared statement with array parameters: one round trip, nothing parsed or planned
//! per post. Each statement in it still takes a fresh snapshot (the function is VOLATILE),
//! so the stats read the messages that concurrent writers committed while this one waited
//! for the lock, as the separate statements did.
//!
//! The column list is this migration's own: a later migration that changes the columns
//! of `messages` must replace the function too. MySQL/MariaDB get a procedure of their own
//! (`m20261130_000005`); SQLite writes posts as before (`store::chat`). This migration does
//! nothing on either.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const CREATE: &str = r#"
CREATE OR REPLACE FUNCTION "messaging_append_messages"(
    p_id text[], p_church text[], p_conversation text[], p_person text[], p_name text[],
    p_sent int8[], p_updated int8[], p_type text[], p_content text[]
) RETURNS void LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    c record;
BEGIN
    -- In id order, so that two batches sharing conversations never deadlock.
    PERFORM 1 FROM "conversations" WHERE "id" = ANY (p_conversation) ORDER BY "id" FOR UPDATE;
    INSERT INTO "messages" ("id", "churchId", "conversationId", "personId", "displayName",
                            "timeSent", "timeUpdated", "messageType", "content")
        SELECT * FROM unnest(p_id, p_church, p_conversation, p_person, p_name,
                             p_sent, p_updated, p_type, p_content);
    FOR c IN SELECT u.conv, count(*)::int AS n FROM unnest(p_conversation) AS u(conv)
             GROUP BY u.conv ORDER BY u.conv LOOP
        UPDATE "conversations" SET
            "postCount" = "postCount" + c.n,
            "firstPostId" = COALESCE("firstPostId", (
                SELECT m."id" FROM "messages" m WHERE m."conversationId" = c.conv
                ORDER BY m."timeSent" ASC, m."id" ASC LIMIT 1)),
            "lastPostId" = (
                SELECT m."id" FROM "messages" m WHERE m."conversationId" = c.conv
                ORDER BY m."timeSent" DESC, m."id" DESC LIMIT 1)
        WHERE "id" = c.conv;
    END LOOP;
END
$fn$
"#;

const DROP: &str = r#"DROP FUNCTION IF EXISTS "messaging_append_messages"(
    text[], text[], text[], text[], text[], int8[], int8[], text[], text[])"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(CREATE).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(DROP).await?;
        }
        Ok(())
    }
}
