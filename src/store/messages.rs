//! The `messages` and `messageReactions` tables, and the conversation stats that follow
//! every write of a message.
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnAcquireErr, ConnectionTrait, DbBackend,
    DbErr, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, Statement,
};

use super::entities::{conversations, message_reactions, messages};
use super::{Store, Tx};

impl Store {
    /// A conversation's messages by `(timeSent, id)`, optionally from `since` (inclusive).
    pub async fn messages_of(
        &self,
        conversation: &str,
        since: Option<i64>,
    ) -> Result<Vec<messages::Model>, DbErr> {
        let mut q =
            messages::Entity::find().filter(messages::Column::ConversationId.eq(conversation));
        if let Some(t) = since {
            q = q.filter(messages::Column::TimeSent.gte(t));
        }
        q.order_by_asc(messages::Column::TimeSent)
            .order_by_asc(messages::Column::Id)
            .all(&self.db)
            .await
    }

    pub async fn message(&self, id: &str) -> Result<Option<messages::Model>, DbErr> {
        messages::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
    }

    /// New messages and their conversations' stats, in one transaction: either all of
    /// them are stored or none. Conversations are locked first, in id order (so that
    /// concurrent batches cannot deadlock, and the stats are read from what every earlier
    /// writer committed); rows are inserted with one statement. One round trip on every
    /// database: a function call on PostgreSQL, a procedure call on MySQL/MariaDB, a batch
    /// on SQLite.
    pub async fn append_messages(&self, rows: &[messages::Model]) -> Result<(), DbErr> {
        if rows.is_empty() {
            return Ok(());
        }
        let be = self.db.get_database_backend();
        if be == DbBackend::Postgres {
            // The function counts the rows of each conversation itself.
            return self.append_postgres(rows).await;
        }
        let mut added: std::collections::BTreeMap<&str, u64> = Default::default();
        for m in rows {
            *added.entry(m.conversation_id.as_str()).or_default() += 1;
        }
        if be == DbBackend::MySql {
            return self.append_mysql(rows, &added).await;
        }
        // SQLite needs no lock: its write transactions are already serialized (IMMEDIATE).
        let mut statements = Vec::with_capacity(added.len() + 1);
        statements.push(
            messages::Entity::insert_many(rows.iter().map(|m| m.clone().into_active_model()))
                .build(be),
        );
        statements.extend(added.iter().map(|(conv, n)| stats_statement(be, conv, *n)));
        self.append_batch_sqlite(statements).await
    }

    /// SQLite: the transaction of `append_messages` as one multi-statement batch. Each
    /// statement is a round trip to the connection's worker thread, and while a fan-out
    /// keeps the cores busy every round trip waits for one; sent as separate statements
    /// (begin, inserts, stats, commit), most of a post's latency was spent there.
    async fn append_batch_sqlite(&self, statements: Vec<Statement>) -> Result<(), DbErr> {
        let mut sql = String::from("BEGIN IMMEDIATE;");
        let mut values = Vec::new();
        for stmt in statements {
            sql.push_str(&stmt.sql);
            sql.push(';');
            values.extend(stmt.values.map(|v| v.0).unwrap_or_default());
        }
        sql.push_str("COMMIT;");
        self.sqlite_batch(sql, values).await.map(drop)
    }

    /// PostgreSQL: one call of `messaging_append_messages` (migration
    /// `m20261130_000004`), which runs the statements of `append_messages` with plans it
    /// keeps for the session. The call is a prepared statement with one array per column:
    /// one round trip, and nothing parsed or planned per post (a multi-statement text batch
    /// parses and plans every time: BENCHMARKS.md, "Design decisions and their
    /// measurements"). A single statement is its own transaction: all of it is stored or
    /// none.
    async fn append_postgres(&self, rows: &[messages::Model]) -> Result<(), DbErr> {
        use sea_orm::sqlx;
        fn text<'a>(
            rows: &'a [messages::Model],
            f: fn(&'a messages::Model) -> &'a str,
        ) -> Vec<&'a str> {
            rows.iter().map(f).collect()
        }
        let db = self.post_db.as_ref().unwrap_or(&self.db);
        sqlx::query(r#"SELECT "messaging_append_messages"($1, $2, $3, $4, $5, $6, $7, $8, $9)"#)
            .bind(text(rows, |m| &m.id))
            .bind(text(rows, |m| &m.church_id))
            .bind(text(rows, |m| &m.conversation_id))
            .bind(
                rows.iter()
                    .map(|m| m.person_id.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                rows.iter()
                    .map(|m| m.display_name.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(rows.iter().map(|m| m.time_sent).collect::<Vec<_>>())
            .bind(rows.iter().map(|m| m.time_updated).collect::<Vec<_>>())
            .bind(text(rows, |m| &m.message_type))
            .bind(text(rows, |m| &m.content))
            .execute(db.get_postgres_connection_pool())
            .await
            .map(drop)
            .map_err(|e| match e {
                sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
                sqlx::Error::PoolClosed => {
                    DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed)
                }
                e => DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e.into())),
            })
    }

    /// MySQL/MariaDB: one prepared call of `messaging_append_messages` (migration
    /// `m20261130_000005`) with the rows and the conversations (in lock order, with how many
    /// rows each gets) as two JSON arrays. The procedure runs the statements of
    /// `append_messages` in a transaction of its own: one round trip instead of the three of
    /// an explicit transaction around a text batch, and no value is written into SQL text.
    async fn append_mysql(
        &self,
        rows: &[messages::Model],
        added: &std::collections::BTreeMap<&str, u64>,
    ) -> Result<(), DbErr> {
        let json = |e: serde_json::Error| DbErr::Custom(format!("rows as JSON: {e}"));
        let rows_json = serde_json::to_string(
            &rows
                .iter()
                .map(|m| {
                    (
                        &m.id,
                        &m.church_id,
                        &m.conversation_id,
                        &m.person_id,
                        &m.display_name,
                        m.time_sent,
                        m.time_updated,
                        &m.message_type,
                        &m.content,
                    )
                })
                .collect::<Vec<_>>(),
        )
        .map_err(json)?;
        let convs_json = serde_json::to_string(&added.iter().collect::<Vec<_>>()).map_err(json)?;
        let db = self.post_db.as_ref().unwrap_or(&self.db);
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::MySql,
            "CALL `messaging_append_messages`(?, ?)",
            [rows_json.into(), convs_json.into()],
        ))
        .await
        .map(drop)
    }

    /// Reactions of some messages, oldest first.
    pub async fn reactions_of(
        &self,
        message_ids: Vec<String>,
    ) -> Result<Vec<message_reactions::Model>, DbErr> {
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        message_reactions::Entity::find()
            .filter(message_reactions::Column::MessageId.is_in(message_ids))
            .order_by_asc(message_reactions::Column::TimeAdded)
            .order_by_asc(message_reactions::Column::Id)
            .all(&self.db)
            .await
    }

    pub async fn messages_by_ids(&self, ids: Vec<String>) -> Result<Vec<messages::Model>, DbErr> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        messages::Entity::find()
            .filter(messages::Column::Id.is_in(ids))
            .all(&self.db)
            .await
    }

    /// One page of a conversation's messages, newest first.
    pub async fn message_page(
        &self,
        conversation: &str,
        page: u64,
        limit: u64,
    ) -> Result<Vec<messages::Model>, DbErr> {
        messages::Entity::find()
            .filter(messages::Column::ConversationId.eq(conversation))
            .order_by_desc(messages::Column::TimeSent)
            .order_by_desc(messages::Column::Id)
            .offset((page - 1) * limit)
            .limit(limit)
            .all(&self.db)
            .await
    }
}

impl Tx {
    /// Locks a conversation row for the rest of the transaction, so that concurrent writers
    /// of one conversation update its stats one after the other. SQLite needs no lock: its
    /// write transactions are already serialized (IMMEDIATE), so no statement is sent.
    pub async fn lock_conversation(&self, id: &str) -> Result<(), DbErr> {
        let db = &self.0;
        if db.get_database_backend() != DbBackend::Sqlite {
            conversations::Entity::find_by_id(id.to_string())
                .lock_exclusive()
                .one(db)
                .await?;
        }
        Ok(())
    }

    /// Stats after `added` messages were inserted (with the row locked): one statement.
    /// The count is incremented; first and last come from the `(conversationId, timeSent,
    /// id)` index, so this stays cheap however long the conversation is.
    pub async fn bump_stats(&self, conversation: &str, added: u64) -> Result<(), DbErr> {
        let db = &self.0;
        db.execute_raw(stats_statement(
            db.get_database_backend(),
            conversation,
            added,
        ))
        .await?;
        Ok(())
    }

    /// Recomputes `postCount`, `firstPostId` and `lastPostId` from the messages themselves.
    pub async fn refresh_stats(&self, conversation: &str) -> Result<(), DbErr> {
        let db = &self.0;
        let of_conv =
            || messages::Entity::find().filter(messages::Column::ConversationId.eq(conversation));
        let count = of_conv().count(db).await?;
        let id_by = |desc: bool| {
            let q = of_conv().select_only().column(messages::Column::Id);
            if desc {
                q.order_by_desc(messages::Column::TimeSent)
                    .order_by_desc(messages::Column::Id)
            } else {
                q.order_by_asc(messages::Column::TimeSent)
                    .order_by_asc(messages::Column::Id)
            }
        };
        let first: Option<String> = id_by(false).into_tuple().one(db).await?;
        let last: Option<String> = id_by(true).into_tuple().one(db).await?;
        conversations::Entity::update_many()
            .col_expr(conversations::Column::PostCount, Expr::value(count as i32))
            .col_expr(conversations::Column::FirstPostId, Expr::value(first))
            .col_expr(conversations::Column::LastPostId, Expr::value(last))
            .filter(conversations::Column::Id.eq(conversation))
            .exec(db)
            .await?;
        Ok(())
    }

    /// Toggles the reaction `(message, person, emoji)`; returns whether it now exists.
    pub async fn toggle_reaction(
        &self,
        msg: &messages::Model,
        person: &str,
        emoji: &str,
        now: i64,
    ) -> Result<bool, DbErr> {
        let db = &self.0;
        let removed = message_reactions::Entity::delete_many()
            .filter(message_reactions::Column::MessageId.eq(&msg.id))
            .filter(message_reactions::Column::PersonId.eq(person))
            .filter(message_reactions::Column::Emoji.eq(emoji))
            .exec(db)
            .await?
            .rows_affected;
        if removed > 0 {
            return Ok(false);
        }
        message_reactions::Entity::insert(message_reactions::ActiveModel {
            id: Set(crate::ids::new_id()),
            church_id: Set(msg.church_id.clone()),
            message_id: Set(msg.id.clone()),
            conversation_id: Set(msg.conversation_id.clone()),
            person_id: Set(person.to_string()),
            emoji: Set(emoji.to_string()),
            time_added: Set(now),
        })
        .exec_without_returning(db)
        .await?;
        Ok(true)
    }

    /// Deletes messages (and their reactions) by id.
    pub async fn delete_messages(&self, ids: Vec<String>) -> Result<(), DbErr> {
        let db = &self.0;
        if ids.is_empty() {
            return Ok(());
        }
        message_reactions::Entity::delete_many()
            .filter(message_reactions::Column::MessageId.is_in(ids.clone()))
            .exec(db)
            .await?;
        messages::Entity::delete_many()
            .filter(messages::Column::Id.is_in(ids))
            .exec(db)
            .await?;
        Ok(())
    }

    pub async fn insert_message(&self, m: &messages::Model) -> Result<(), DbErr> {
        messages::Entity::insert(active(m))
            .exec_without_returning(&self.0)
            .await?;
        Ok(())
    }

    /// Rewrites every column of an existing message.
    pub async fn update_message(&self, m: &messages::Model) -> Result<(), DbErr> {
        messages::Entity::update(active(m)).exec(&self.0).await?;
        Ok(())
    }
}

/// A message row as an insert or an update of every column.
fn active(m: &messages::Model) -> messages::ActiveModel {
    m.clone().into_active_model().reset_all()
}

/// The stats statement of `bump_stats` (placeholders of `backend`).
fn stats_statement(backend: DbBackend, conversation: &str, added: u64) -> Statement {
    let (q, p) = match backend {
        DbBackend::MySql => ('`', ["?", "?", "?", "?"]),
        DbBackend::Postgres => ('"', ["$1", "$2", "$3", "$4"]),
        _ => ('"', ["?", "?", "?", "?"]),
    };
    let pick = |param: &str, dir: &str| {
        format!(
            "(SELECT {q}id{q} FROM {q}messages{q} WHERE {q}conversationId{q} = {param} \
             ORDER BY {q}timeSent{q} {dir}, {q}id{q} {dir} LIMIT 1)"
        )
    };
    let sql = format!(
        "UPDATE {q}conversations{q} SET {q}postCount{q} = {q}postCount{q} + {p0}, \
         {q}firstPostId{q} = COALESCE({q}firstPostId{q}, {first}), {q}lastPostId{q} = {last} \
         WHERE {q}id{q} = {p3}",
        p0 = p[0],
        first = pick(p[1], "ASC"),
        last = pick(p[2], "DESC"),
        p3 = p[3],
    );
    let values: Vec<sea_orm::Value> = vec![
        (added as i32).into(),
        conversation.into(),
        conversation.into(),
        conversation.into(),
    ];
    Statement::from_sql_and_values(backend, sql, values)
}
