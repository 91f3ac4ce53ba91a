//! MySQL/MariaDB only: `messaging_append_messages`, the write of a post as one `CALL`.
//!
//! Until now a post's write on MySQL/MariaDB was a text batch inside an explicit
//! transaction (begin, batch, commit: three round trips), with every value written into the
//! SQL as a literal because the text protocol takes no parameters with several statements.
//! This procedure runs the same statements in one prepared call with two parameters: the
//! rows as a JSON array of arrays (`[id, churchId, conversationId, personId, displayName,
//! timeSent, timeUpdated, messageType, content]`, expanded by `JSON_TABLE`) and the
//! conversations as `[[id, added], …]` in the order to lock them. One round trip, and no
//! value is ever part of the SQL text.
//!
//! - It opens and commits its own transaction; on any error it rolls back and re-raises the
//!   same error (driver code and SQLSTATE kept).
//! - The conversations are locked first, in the caller's order (byte order, the same as
//!   every other writer), before anything is read, so the stats are computed from what
//!   every earlier writer committed, as with the separate statements.
//! - Ids are compared as `utf8mb4_bin`, the collation of every table (migration 1): JSON
//!   values never meet a column in a comparison except through those variables.
//! - It runs with the `sql_mode` of its creation (a stored routine's own); the tables'
//!   length limits are enforced by the server's strict mode as before.
//!
//! The column list is this migration's own: a later migration that changes the columns of
//! `messages` must replace the procedure too. It needs `JSON_TABLE` and `JSON_VALUE`:
//! MariaDB 10.6 or later (tested on 10.11) or MySQL 8.0.21 or later (not tested here).
//! SQLite and PostgreSQL are untouched here.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const CREATE: &str = r#"
CREATE PROCEDURE `messaging_append_messages`(
    IN p_rows LONGTEXT CHARACTER SET utf8mb4,
    IN p_convs LONGTEXT CHARACTER SET utf8mb4
)
MODIFIES SQL DATA
SQL SECURITY INVOKER
BEGIN
    DECLARE i INT DEFAULT 0;
    DECLARE n INT DEFAULT JSON_LENGTH(p_convs);
    DECLARE conv VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
    DECLARE locked VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
    DECLARE added INT;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        RESIGNAL;
    END;
    START TRANSACTION;
    WHILE i < n DO
        SET conv = JSON_VALUE(p_convs, CONCAT('$[', i, '][0]'));
        SELECT `id` INTO locked FROM `conversations` WHERE `id` = conv FOR UPDATE;
        SET i = i + 1;
    END WHILE;
    INSERT INTO `messages` (`id`, `churchId`, `conversationId`, `personId`, `displayName`,
                            `timeSent`, `timeUpdated`, `messageType`, `content`)
        SELECT r.id, r.church, r.conv, r.person, r.name, r.sent, r.updated, r.kind, r.content
        FROM JSON_TABLE(p_rows, '$[*]' COLUMNS (
            id LONGTEXT PATH '$[0]',
            church LONGTEXT PATH '$[1]',
            conv LONGTEXT PATH '$[2]',
            person LONGTEXT PATH '$[3]',
            name LONGTEXT PATH '$[4]',
            sent BIGINT PATH '$[5]',
            updated BIGINT PATH '$[6]',
            kind LONGTEXT PATH '$[7]',
            content LONGTEXT PATH '$[8]'
        )) AS r;
    SET i = 0;
    WHILE i < n DO
        SET conv = JSON_VALUE(p_convs, CONCAT('$[', i, '][0]'));
        SET added = JSON_VALUE(p_convs, CONCAT('$[', i, '][1]'));
        UPDATE `conversations` SET
            `postCount` = `postCount` + added,
            `firstPostId` = COALESCE(`firstPostId`, (
                SELECT m.`id` FROM `messages` m WHERE m.`conversationId` = conv
                ORDER BY m.`timeSent` ASC, m.`id` ASC LIMIT 1)),
            `lastPostId` = (
                SELECT m.`id` FROM `messages` m WHERE m.`conversationId` = conv
                ORDER BY m.`timeSent` DESC, m.`id` DESC LIMIT 1)
        WHERE `id` = conv;
        SET i = i + 1;
    END WHILE;
    COMMIT;
END
"#;

const DROP: &str = "DROP PROCEDURE IF EXISTS `messaging_append_messages`";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::MySql {
            // MySQL has no CREATE OR REPLACE PROCEDURE; dropping first keeps `up` re-runnable.
            db.execute_unprepared(DROP).await?;
            db.execute_unprepared(CREATE).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::MySql {
            db.execute_unprepared(DROP).await?;
        }
        Ok(())
    }
}
