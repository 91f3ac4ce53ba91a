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
    pub use crate::store::entities::blocked_ips::Entity as BlockedIps;
    pub use crate::store::entities::connections::Entity as Connections;
    pub use crate::store::entities::conversations::Entity as Conversations;
    pub use crate::store::entities::message_reactions::Entity as MessageReactions;
    pub use crate::store::entities::messages::Entity as Messages;
    pub use crate::store::entities::nodes::Entity as Nodes;
    pub use crate::store::entities::notifications::Entity as Notifications;
    pub use crate::store::entities::private_messages::Entity as PrivateMessages;
}

#[cfg(test)]
mod tests;
