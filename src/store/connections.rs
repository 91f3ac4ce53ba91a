//! The `connections` table: the rows of joined sockets (§5.1).
use std::collections::BTreeSet;

use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};

use super::Store;
use super::entities::connections;

/// A row to upsert into `connections`.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub church_id: String,
    pub room: String,
    pub socket_id: String,
    pub person_id: Option<String>,
    pub display_name: String,
    pub ip_address: Option<String>,
}

impl Store {
    /// Upserts rows on `(churchId, conversationId, socketId)` inside `txn` and returns
    /// them as stored. An existing row keeps its `id` and `timeJoined`.
    pub async fn upsert_rows(
        txn: &DatabaseTransaction,
        node_id: &str,
        rows: &[NewRow],
        now: i64,
    ) -> Result<Vec<connections::Model>, DbErr> {
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let display_name = if r.display_name == "Anonymous " {
                // In u64: the largest BIGINT plus one must not overflow.
                let next = Self::max_anonymous(txn, &r.church_id, &r.room).await? as u64 + 1;
                format!("Anonymous_{next}")
            } else {
                r.display_name.clone()
            };
            let am = connections::ActiveModel {
                id: Set(crate::ids::new_id()),
                church_id: Set(r.church_id.clone()),
                conversation_id: Set(r.room.clone()),
                person_id: Set(r.person_id.clone()),
                anonymous_number: Set(anonymous_number(&display_name)),
                display_name: Set(Some(display_name)),
                time_joined: Set(now),
                socket_id: Set(r.socket_id.clone()),
                ip_address: Set(r.ip_address.clone()),
                node_id: Set(node_id.to_string()),
            };
            connections::Entity::insert(am)
                .on_conflict(
                    OnConflict::columns([
                        connections::Column::ChurchId,
                        connections::Column::ConversationId,
                        connections::Column::SocketId,
                    ])
                    .update_columns([
                        connections::Column::PersonId,
                        connections::Column::DisplayName,
                        connections::Column::AnonymousNumber,
                        connections::Column::IpAddress,
                        connections::Column::NodeId,
                    ])
                    .to_owned(),
                )
                .exec_without_returning(txn)
                .await?;
            let row = connections::Entity::find()
                .filter(connections::Column::ChurchId.eq(&r.church_id))
                .filter(connections::Column::ConversationId.eq(&r.room))
                .filter(connections::Column::SocketId.eq(&r.socket_id))
                .one(txn)
                .await?
                .ok_or_else(|| DbErr::RecordNotFound("upserted connection".into()))?;
            out.push(row);
        }
        Ok(out)
    }

    /// Upserts join rows as one write unit (retried on transient conflicts).
    pub async fn upsert_connections(
        &self,
        node_id: &str,
        rows: &[NewRow],
    ) -> Result<Vec<connections::Model>, DbErr> {
        self.write(|| async {
            let now = crate::time::now_ms();
            if self.is_sqlite() {
                return self.upsert_rows_sqlite(node_id, rows, now).await;
            }
            let txn = self.begin_raw().await?;
            let stored = Store::upsert_rows(&txn, node_id, rows, now).await?;
            txn.commit().await?;
            Ok(stored)
        })
        .await
    }

    /// Writes rows back as they were (same ids, `timeJoined` and names) under `node_id`;
    /// a row whose `(churchId, conversationId, socketId)` exists already is left alone.
    /// The caller holds the sockets' membership locks, so nothing else writes these keys.
    pub async fn restore_rows(
        &self,
        node_id: &str,
        rows: &[connections::Model],
    ) -> Result<(), DbErr> {
        if rows.is_empty() {
            return Ok(());
        }
        self.write(|| async {
            let txn = self.begin_raw().await?;
            for r in rows {
                let exists = connections::Entity::find()
                    .filter(connections::Column::ChurchId.eq(&r.church_id))
                    .filter(connections::Column::ConversationId.eq(&r.conversation_id))
                    .filter(connections::Column::SocketId.eq(&r.socket_id))
                    .one(&txn)
                    .await?
                    .is_some();
                if !exists {
                    let mut am: connections::ActiveModel = r.clone().into();
                    am.node_id = Set(node_id.to_string());
                    connections::Entity::insert(am)
                        .exec_without_returning(&txn)
                        .await?;
                }
            }
            txn.commit().await
        })
        .await
    }

    /// SQLite: `upsert_rows` in its own transaction as one batch: one
    /// `INSERT … ON CONFLICT DO UPDATE … RETURNING` per row. An `"Anonymous "` row is
    /// numbered by a subquery of the same statement, so it sees the rows of the
    /// statements before it exactly as the general path does.
    pub async fn upsert_rows_sqlite(
        &self,
        node_id: &str,
        rows: &[NewRow],
        now: i64,
    ) -> Result<Vec<connections::Model>, DbErr> {
        use sea_orm::{FromQueryResult, Value};
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        const COLS: &str = r#""id", "churchId", "conversationId", "personId", "displayName", "anonymousNumber", "timeJoined", "socketId", "ipAddress", "nodeId""#;
        const UPSERT: &str = r#"ON CONFLICT ("churchId", "conversationId", "socketId") DO UPDATE SET "personId" = excluded."personId", "displayName" = excluded."displayName", "anonymousNumber" = excluded."anonymousNumber", "ipAddress" = excluded."ipAddress", "nodeId" = excluded."nodeId""#;
        // The largest BIGINT has no successor in SQLite's integers: that name is spelled
        // out and left unnumbered, as `anonymous_number` does. MAX stays a scalar
        // subquery on its own: as the aggregate of a FROM subquery SQLite scanned the
        // whole room instead of seeking the index's end (BENCHMARKS.md, "Design decisions
        // and their measurements").
        const NUMBERED: &str = r#"SELECT ?, ?, ?, ?, CASE WHEN m = 9223372036854775807 THEN 'Anonymous_9223372036854775808' ELSE 'Anonymous_' || (m + 1) END, CASE WHEN m = 9223372036854775807 THEN NULL ELSE m + 1 END, ?, ?, ?, ? FROM (SELECT COALESCE((SELECT MAX("anonymousNumber") FROM "connections" WHERE "churchId" = ? AND "conversationId" = ?), 0) AS m) WHERE true"#;
        let mut sql = String::from("BEGIN IMMEDIATE;");
        let mut values: Vec<Value> = Vec::new();
        for r in rows {
            let head = [
                Value::from(crate::ids::new_id()),
                r.church_id.clone().into(),
                r.room.clone().into(),
                r.person_id.clone().into(),
            ];
            let tail = [
                Value::from(now),
                r.socket_id.clone().into(),
                r.ip_address.clone().into(),
                node_id.to_string().into(),
            ];
            values.extend(head);
            if r.display_name == "Anonymous " {
                sql.push_str(&format!(
                    r#"INSERT INTO "connections" ({COLS}) {NUMBERED} "#
                ));
                values.extend(tail);
                values.extend([r.church_id.clone().into(), r.room.clone().into()]);
            } else {
                sql.push_str(&format!(
                    r#"INSERT INTO "connections" ({COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "#
                ));
                values.push(r.display_name.clone().into());
                values.push(anonymous_number(&r.display_name).into());
                values.extend(tail);
            }
            sql.push_str(UPSERT);
            sql.push_str(&format!(" RETURNING {COLS};"));
        }
        sql.push_str("COMMIT;");
        let got = self.sqlite_batch(sql, values).await?;
        got.into_iter()
            .map(|row| connections::Model::from_query_result(&row.into(), ""))
            .collect()
    }

    /// The largest N among the room's `Anonymous_N` names (0 when none): one lookup in
    /// the `(churchId, conversationId, anonymousNumber)` index.
    async fn max_anonymous<C: ConnectionTrait>(
        db: &C,
        church: &str,
        room: &str,
    ) -> Result<i64, DbErr> {
        let max: Option<Option<i64>> = connections::Entity::find()
            .select_only()
            .column_as(connections::Column::AnonymousNumber.max(), "n")
            .filter(connections::Column::ChurchId.eq(church))
            .filter(connections::Column::ConversationId.eq(room))
            .into_tuple()
            .one(db)
            .await?;
        Ok(max.flatten().unwrap_or(0))
    }

    pub async fn room_rows(
        &self,
        church: &str,
        room: &str,
    ) -> Result<Vec<connections::Model>, DbErr> {
        connections::Entity::find()
            .filter(connections::Column::ChurchId.eq(church))
            .filter(connections::Column::ConversationId.eq(room))
            .order_by_asc(connections::Column::TimeJoined)
            .order_by_asc(connections::Column::Id)
            .all(&self.db)
            .await
    }

    pub async fn person_rows(
        &self,
        church: &str,
        room: &str,
        person: &str,
    ) -> Result<Vec<connections::Model>, DbErr> {
        connections::Entity::find()
            .filter(connections::Column::ChurchId.eq(church))
            .filter(connections::Column::ConversationId.eq(room))
            .filter(connections::Column::PersonId.eq(person))
            .order_by_asc(connections::Column::TimeJoined)
            .order_by_asc(connections::Column::Id)
            .all(&self.db)
            .await
    }

    pub async fn row(
        &self,
        church: &str,
        room: &str,
        socket: &str,
    ) -> Result<Option<connections::Model>, DbErr> {
        connections::Entity::find()
            .filter(connections::Column::ChurchId.eq(church))
            .filter(connections::Column::ConversationId.eq(room))
            .filter(connections::Column::SocketId.eq(socket))
            .one(&self.db)
            .await
    }

    pub async fn delete_row(&self, id: &str) -> Result<bool, DbErr> {
        let r = connections::Entity::delete_by_id(id.to_string())
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected > 0)
    }

    pub async fn socket_rows(&self, socket: &str) -> Result<Vec<connections::Model>, DbErr> {
        connections::Entity::find()
            .filter(connections::Column::SocketId.eq(socket))
            .order_by_asc(connections::Column::TimeJoined)
            .order_by_asc(connections::Column::Id)
            .all(&self.db)
            .await
    }

    pub async fn rename_rows(&self, ids: &[String], name: &str) -> Result<(), DbErr> {
        if ids.is_empty() {
            return Ok(());
        }
        connections::Entity::update_many()
            .col_expr(
                connections::Column::DisplayName,
                sea_orm::sea_query::Expr::value(name.to_string()),
            )
            .col_expr(
                connections::Column::AnonymousNumber,
                sea_orm::sea_query::Expr::value(anonymous_number(name)),
            )
            .filter(connections::Column::Id.is_in(ids.to_vec()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Deletes every row of a socket; returns the distinct rooms that lost a row.
    pub async fn delete_socket_rows(&self, socket: &str) -> Result<Vec<(String, String)>, DbErr> {
        let rows = self.socket_rows(socket).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        connections::Entity::delete_many()
            .filter(connections::Column::SocketId.eq(socket))
            .exec(&self.db)
            .await?;
        Ok(distinct_rooms(rows))
    }
}

impl Store {
    /// Deletes every row joined before `before` (epoch ms): the scheduled sweep of gateway
    /// mode (§5.5), where no node lease tells a dead connection from a live one. Returns the
    /// distinct rooms that lost a row.
    pub async fn delete_rows_joined_before(
        &self,
        before: i64,
    ) -> Result<Vec<(String, String)>, DbErr> {
        let rows = connections::Entity::find()
            .filter(connections::Column::TimeJoined.lt(before))
            .all(&self.db)
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // By id and age: a row joined again meanwhile is not swept.
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        for chunk in ids.chunks(500) {
            connections::Entity::delete_many()
                .filter(connections::Column::Id.is_in(chunk.to_vec()))
                .filter(connections::Column::TimeJoined.lt(before))
                .exec(&self.db)
                .await?;
        }
        Ok(distinct_rooms(rows))
    }
}

/// The N of a display name `Anonymous_<N>`: ASCII digits only, within BIGINT. Anything
/// else (`Anonymous_x`, `Anonymous_+1`, a number past BIGINT) takes no part in numbering.
pub fn anonymous_number(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("Anonymous_")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn distinct_rooms(rows: Vec<connections::Model>) -> Vec<(String, String)> {
    rows.into_iter()
        .map(|r| (r.church_id, r.conversation_id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}
