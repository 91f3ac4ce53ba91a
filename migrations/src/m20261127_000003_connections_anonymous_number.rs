//! `connections.anonymousNumber`: the N of a row named `Anonymous_<N>`, indexed per room.
//!
//! A join named `"Anonymous "` becomes `Anonymous_{N+1}` for the largest such N in its room
//! (§5.1). Found by reading every name of the room, that was one full scan per join: a
//! storm of 5000 anonymous viewers took 28 s instead of 4. With the number in its own
//! indexed column the largest one is a single index lookup on every backend.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLE: &str = "connections";
const COLUMN: &str = "anonymousNumber";
const INDEX: &str = "idx_connections_room_anonymous";
const PREFIX: &str = "Anonymous_";

/// The N of `Anonymous_<N>`: ASCII digits only, within BIGINT. The service uses the
/// same rule (`store::anonymous_number`); a copy here keeps this migration fixed even if
/// the service's rule changes later.
fn anonymous_number(name: &str) -> Option<i64> {
    let digits = name.strip_prefix(PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !manager.has_column(TABLE, COLUMN).await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(TABLE)
                        .add_column(ColumnDef::new(COLUMN).big_integer().null())
                        .to_owned(),
                )
                .await?;
        }
        // MySQL has no CREATE INDEX IF NOT EXISTS: ask first, so re-running stays harmless.
        if !manager.has_index(TABLE, INDEX).await? {
            manager
                .create_index(
                    Index::create()
                        .name(INDEX)
                        .table(TABLE)
                        .col("churchId")
                        .col("conversationId")
                        .col(COLUMN)
                        .to_owned(),
                )
                .await?;
        }
        // Rows written before this column existed. Rows are short-lived (they go with
        // their socket), so there are few; parsing them here keeps the rule in one
        // language instead of three SQL dialects.
        let db = manager.get_connection();
        let select = Query::select()
            .columns(["id", "displayName"])
            .from(TABLE)
            .and_where(Expr::col("displayName").like(format!("{PREFIX}%")))
            .and_where(Expr::col(COLUMN).is_null())
            .to_owned();
        for row in db.query_all(&select).await? {
            let id: String = row.try_get("", "id")?;
            let name: Option<String> = row.try_get("", "displayName")?;
            let Some(n) = name.as_deref().and_then(anonymous_number) else {
                continue;
            };
            let update = Query::update()
                .table(TABLE)
                .value(COLUMN, n)
                .and_where(Expr::col("id").eq(id))
                .to_owned();
            db.execute(&update).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.has_index(TABLE, INDEX).await? {
            manager
                .drop_index(Index::drop().name(INDEX).table(TABLE).to_owned())
                .await?;
        }
        if manager.has_column(TABLE, COLUMN).await? {
            manager
                .alter_table(Table::alter().table(TABLE).drop_column(COLUMN).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::anonymous_number;

    #[test]
    fn numbers() {
        assert_eq!(anonymous_number("Anonymous_7"), Some(7));
        assert_eq!(anonymous_number("Anonymous_007"), Some(7));
        assert_eq!(anonymous_number("Anonymous_"), None);
        assert_eq!(anonymous_number("Anonymous_+7"), None);
        assert_eq!(anonymous_number("Anonymous_7a"), None);
        assert_eq!(anonymous_number("anonymous_7"), None);
        assert_eq!(anonymous_number("Anonymous_99999999999999999999"), None);
    }
}
