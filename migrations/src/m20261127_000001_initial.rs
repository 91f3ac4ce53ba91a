//! Initial schema: every table of the messaging service and its indexes.
//!
//! Portability notes:
//! * Names are camelCase and always quoted by sea-query, so they keep their case
//!   on PostgreSQL too.
//! * MySQL/MariaDB tables are created as InnoDB, `utf8mb4` with the binary
//!   collation `utf8mb4_bin`: ids are case-sensitive and emoji reactions must not
//!   be folded together by a Unicode collation.
//! * sea-query emits `CREATE INDEX IF NOT EXISTS` on SQLite and PostgreSQL but
//!   not on MySQL (which has no such syntax). On MySQL the indexes are therefore
//!   declared inside `CREATE TABLE IF NOT EXISTS`, which keeps re-running the
//!   statements harmless on every backend.
//! * Index names are unique database-wide (PostgreSQL requires it): each one is
//!   prefixed with its table's name.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Length of every table's own `id`.
const ID_LEN: u32 = 11;
/// Length of columns referring to an id of another service (`…Id`).
const REF_LEN: u32 = 64;

/// One table: its `CREATE TABLE` statement and its secondary indexes.
struct TableDef {
    name: &'static str,
    create: TableCreateStatement,
    indexes: Vec<IndexCreateStatement>,
}

impl TableDef {
    fn new(name: &'static str) -> Self {
        let mut create = Table::create();
        create.table(name).if_not_exists().col(pk());
        Self {
            name,
            create,
            indexes: Vec::new(),
        }
    }

    fn col(mut self, column: ColumnDef) -> Self {
        self.create.col(column);
        self
    }

    fn index(mut self, name: &'static str, cols: &[&'static str]) -> Self {
        let index = index_stmt(self.name, name, cols);
        self.indexes.push(index);
        self
    }

    fn unique(mut self, name: &'static str, cols: &[&'static str]) -> Self {
        let mut index = index_stmt(self.name, name, cols);
        index.unique();
        self.indexes.push(index);
        self
    }
}

fn index_stmt(
    table: &'static str,
    name: &'static str,
    cols: &[&'static str],
) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(name).table(table).if_not_exists();
    for col in cols {
        index.col(*col);
    }
    index
}

/// `id varchar(11) NOT NULL PRIMARY KEY`
fn pk() -> ColumnDef {
    string_len("id", ID_LEN).primary_key().take()
}

/// `<name> varchar(64) NOT NULL`
fn ref_id(name: &'static str) -> ColumnDef {
    string_len(name, REF_LEN)
}

/// `<name> varchar(64) NULL`
fn ref_id_null(name: &'static str) -> ColumnDef {
    string_len_null(name, REF_LEN)
}

fn tables() -> Vec<TableDef> {
    vec![
        TableDef::new("connections")
            .col(ref_id("churchId"))
            .col(ref_id("conversationId"))
            .col(ref_id_null("personId"))
            .col(string_len_null("displayName", 45))
            .col(big_integer("timeJoined"))
            .col(string_len("socketId", 45))
            .col(string_len_null("ipAddress", 45))
            .col(string_len("nodeId", ID_LEN))
            .unique(
                "uq_connections_room_socket",
                &["churchId", "conversationId", "socketId"],
            )
            .index(
                "idx_connections_room_person",
                &["churchId", "conversationId", "personId"],
            )
            .index("idx_connections_socket", &["socketId"])
            .index("idx_connections_node", &["nodeId"]),
        TableDef::new("conversations")
            .col(ref_id("churchId"))
            .col(string_len_null("contentType", 45))
            .col(string_len_null("contentId", 255))
            .col(string_len_null("title", 255))
            .col(big_integer("dateCreated"))
            .col(ref_id_null("groupId"))
            .col(string_len_null("visibility", 45))
            .col(string_len_null("firstPostId", ID_LEN))
            .col(string_len_null("lastPostId", ID_LEN))
            .col(integer("postCount").default(0).take())
            .col(boolean("allowAnonymousPosts").default(false).take())
            .index(
                "idx_conversations_content",
                &["churchId", "contentType", "contentId", "dateCreated"],
            )
            .index("idx_conversations_group", &["churchId", "groupId"]),
        TableDef::new("messages")
            .col(ref_id("churchId"))
            .col(ref_id("conversationId"))
            .col(ref_id_null("personId"))
            .col(string_len_null("displayName", 45))
            .col(big_integer("timeSent"))
            .col(big_integer_null("timeUpdated"))
            .col(string_len("messageType", 45))
            .col(text("content"))
            .index(
                "idx_messages_conversation_time",
                &["churchId", "conversationId", "timeSent"],
            )
            .index("idx_messages_person", &["personId"]),
        TableDef::new("messageReactions")
            .col(ref_id("churchId"))
            .col(ref_id("messageId"))
            .col(ref_id("conversationId"))
            .col(ref_id("personId"))
            .col(string_len("emoji", 64))
            .col(big_integer("timeAdded"))
            .unique(
                "uq_message_reactions_message_person_emoji",
                &["messageId", "personId", "emoji"],
            )
            .index("idx_message_reactions_message", &["churchId", "messageId"]),
        TableDef::new("privateMessages")
            .col(ref_id("churchId"))
            .col(ref_id("fromPersonId"))
            .col(ref_id("toPersonId"))
            .col(ref_id("conversationId"))
            .col(ref_id_null("notifyPersonId"))
            .unique("uq_private_messages_conversation", &["conversationId"])
            .index("idx_private_messages_from", &["churchId", "fromPersonId"])
            .index("idx_private_messages_to", &["churchId", "toPersonId"])
            .index(
                "idx_private_messages_notify",
                &["churchId", "notifyPersonId"],
            ),
        TableDef::new("notifications")
            .col(ref_id("churchId"))
            .col(ref_id("personId"))
            .col(string_len("contentType", 45))
            .col(string_len("contentId", 255))
            .col(big_integer("timeSent"))
            .col(boolean("isNew"))
            .col(text("message"))
            .col(string_len_null("link", 100))
            .col(string_len_null("deliveryMethod", 10))
            .col(ref_id_null("triggeredByPersonId"))
            .col(string_len_null("category", 40))
            .index(
                "idx_notifications_person_time",
                &["churchId", "personId", "timeSent"],
            )
            .index(
                "idx_notifications_person_new",
                &["churchId", "personId", "isNew"],
            )
            .index("idx_notifications_content", &["contentType", "contentId"]),
        TableDef::new("blockedIps")
            .col(ref_id("churchId"))
            .col(ref_id("conversationId"))
            .col(ref_id_null("serviceId"))
            .col(string_len("ipAddress", 45))
            .unique(
                "uq_blocked_ips_room_ip",
                &["churchId", "conversationId", "ipAddress"],
            )
            .index("idx_blocked_ips_service", &["churchId", "serviceId"]),
        TableDef::new("nodes")
            .col(string_len_null("grpcAddress", 255))
            .col(big_integer("startedAt"))
            .col(big_integer("leaseUntil"))
            .index("idx_nodes_lease", &["leaseUntil"]),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mysql = manager.get_database_backend() == sea_orm::DbBackend::MySql;
        for TableDef {
            mut create,
            indexes,
            ..
        } in tables()
        {
            if mysql {
                create
                    .engine("InnoDB")
                    .character_set("utf8mb4")
                    .collate("utf8mb4_bin");
                for mut index in indexes {
                    create.index(&mut index);
                }
                manager.create_table(create).await?;
            } else {
                manager.create_table(create).await?;
                for index in indexes {
                    manager.create_index(index).await?;
                }
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Indexes are dropped together with their tables.
        for table in tables().into_iter().rev() {
            manager
                .drop_table(Table::drop().table(table.name).if_exists().take())
                .await?;
        }
        Ok(())
    }
}
