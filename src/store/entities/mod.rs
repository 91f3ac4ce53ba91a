//! sea-orm entities, one module per table of the `migrations` crate.
//!
//! Rust fields are snake_case, database columns camelCase (`rename_all`).
//! Timestamps (`time*`, `date*`, `startedAt`, `leaseUntil`) are `i64`
//! milliseconds since the Unix epoch.

pub mod blocked_ips;
pub mod connections;
pub mod conversations;
pub mod message_reactions;
pub mod messages;
pub mod nodes;
pub mod notifications;
pub mod private_messages;

/// The `Entity` of every table, under the table's name.
pub mod prelude {
    pub use super::blocked_ips::Entity as BlockedIps;
    pub use super::connections::Entity as Connections;
    pub use super::conversations::Entity as Conversations;
    pub use super::message_reactions::Entity as MessageReactions;
    pub use super::messages::Entity as Messages;
    pub use super::nodes::Entity as Nodes;
    pub use super::notifications::Entity as Notifications;
    pub use super::private_messages::Entity as PrivateMessages;
}

#[cfg(test)]
mod tests;
