//! Database schema migrations for the messaging service.
//!
//! The schema is portable across SQLite, PostgreSQL and MySQL/MariaDB.
//! Table and column names are camelCase; ids are short strings and all
//! timestamps are BIGINT milliseconds since the Unix epoch.

pub use sea_orm_migration;

use sea_orm_migration::prelude::*;

mod m20261127_000001_initial;
mod m20261127_000002_messages_by_conversation;
mod m20261127_000003_connections_anonymous_number;
mod m20261130_000004_append_messages_function;
mod m20261130_000005_append_messages_procedure;

/// Applies every migration of the messaging schema, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_initial::Migration),
            Box::new(m20261127_000002_messages_by_conversation::Migration),
            Box::new(m20261127_000003_connections_anonymous_number::Migration),
            Box::new(m20261130_000004_append_messages_function::Migration),
            Box::new(m20261130_000005_append_messages_procedure::Migration),
        ]
    }
}
