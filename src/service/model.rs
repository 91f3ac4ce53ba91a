//! The JSON objects of §10.1, in their field order. Responses and frame `data` both use
//! these, so a frame and the REST view of the same row are identical.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::store::entities::{
    blocked_ips, connections, conversations, messages, notifications, private_messages,
};
use crate::time::format_ms;

/// The per-person alerts room.
pub const ALERTS: &str = "alerts";

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: String,
    pub church_id: String,
    pub conversation_id: String,
    pub person_id: Option<String>,
    pub display_name: Option<String>,
    pub time_sent: String,
    pub time_updated: Option<String>,
    pub message_type: String,
    pub content: String,
}

impl From<messages::Model> for Message {
    fn from(m: messages::Model) -> Self {
        Self {
            id: m.id,
            church_id: m.church_id,
            conversation_id: m.conversation_id,
            person_id: m.person_id,
            display_name: m.display_name,
            time_sent: format_ms(m.time_sent),
            time_updated: m.time_updated.map(format_ms),
            message_type: m.message_type,
            content: m.content,
        }
    }
}

/// The callout frame and response: Message-shaped, every field nullable.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Callout {
    pub id: Option<String>,
    pub church_id: Option<String>,
    pub conversation_id: Option<String>,
    pub person_id: Option<String>,
    pub display_name: Option<String>,
    pub time_sent: Option<String>,
    pub time_updated: Option<String>,
    pub message_type: Option<String>,
    pub content: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct ReactionSummary {
    pub emoji: String,
    pub count: u64,
    pub mine: bool,
}

/// A message with its reaction summary (listings by content).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct MessageWithReactions {
    #[serde(flatten)]
    pub message: Message,
    pub reactions: Vec<ReactionSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub id: String,
    pub church_id: String,
    pub content_type: Option<String>,
    pub content_id: Option<String>,
    pub title: Option<String>,
    pub date_created: String,
    pub group_id: Option<String>,
    pub visibility: Option<String>,
    pub first_post_id: Option<String>,
    pub last_post_id: Option<String>,
    pub post_count: i32,
    pub allow_anonymous_posts: bool,
}

impl From<conversations::Model> for Conversation {
    fn from(c: conversations::Model) -> Self {
        Self {
            id: c.id,
            church_id: c.church_id,
            content_type: c.content_type,
            content_id: c.content_id,
            title: c.title,
            date_created: format_ms(c.date_created),
            group_id: c.group_id,
            visibility: c.visibility,
            first_post_id: c.first_post_id,
            last_post_id: c.last_post_id,
            post_count: c.post_count,
            allow_anonymous_posts: c.allow_anonymous_posts,
        }
    }
}

/// A conversation followed by some of its messages.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct ConversationWithMessages<M> {
    #[serde(flatten)]
    pub conversation: Conversation,
    pub messages: Vec<M>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrivateMessage {
    pub id: String,
    pub church_id: String,
    pub from_person_id: String,
    pub to_person_id: String,
    pub conversation_id: String,
    pub notify_person_id: Option<String>,
}

impl From<private_messages::Model> for PrivateMessage {
    fn from(p: private_messages::Model) -> Self {
        Self {
            id: p.id,
            church_id: p.church_id,
            from_person_id: p.from_person_id,
            to_person_id: p.to_person_id,
            conversation_id: p.conversation_id,
            notify_person_id: p.notify_person_id,
        }
    }
}

/// The GET form of a private message: with its conversation and last message.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrivateMessageView {
    #[serde(flatten)]
    pub private_message: PrivateMessage,
    pub last_message_time: Option<String>,
    pub conversation: Option<ConversationWithMessages<Message>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub id: String,
    pub church_id: String,
    pub person_id: String,
    pub content_type: String,
    pub content_id: String,
    pub time_sent: String,
    pub is_new: bool,
    pub message: String,
    pub link: Option<String>,
    pub delivery_method: Option<String>,
    pub triggered_by_person_id: Option<String>,
    pub category: Option<String>,
}

impl From<notifications::Model> for Notification {
    fn from(n: notifications::Model) -> Self {
        Self {
            id: n.id,
            church_id: n.church_id,
            person_id: n.person_id,
            content_type: n.content_type,
            content_id: n.content_id,
            time_sent: format_ms(n.time_sent),
            is_new: n.is_new,
            message: n.message,
            link: n.link,
            delivery_method: n.delivery_method,
            triggered_by_person_id: n.triggered_by_person_id,
            category: n.category,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub notification_count: u64,
    pub pm_count: u64,
}

impl From<crate::store::Unread> for Counts {
    fn from(u: crate::store::Unread) -> Self {
        Self {
            notification_count: u.notifications,
            pm_count: u.private_messages,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlockedIp {
    pub id: Option<String>,
    pub church_id: String,
    pub conversation_id: String,
    pub service_id: Option<String>,
    pub ip_address: String,
    pub blocked: bool,
}

impl BlockedIp {
    pub fn from_row(b: blocked_ips::Model, blocked: bool) -> Self {
        Self {
            id: blocked.then_some(b.id),
            church_id: b.church_id,
            conversation_id: b.conversation_id,
            service_id: b.service_id,
            ip_address: b.ip_address,
            blocked,
        }
    }
}

/// One socket joined to one room (§10.1), as the service hands it to its doors. Which
/// callers see `ip_address` is the service's decision (`rooms::visible_to`); `node_id` is
/// the node holding the socket, for the nodes' own calls, never in a REST response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub id: String,
    pub church_id: String,
    pub conversation_id: String,
    pub person_id: Option<String>,
    pub display_name: Option<String>,
    /// Epoch milliseconds.
    pub time_joined: i64,
    pub socket_id: String,
    pub ip_address: Option<String>,
    pub node_id: String,
    /// For a socket with positions (§5.6): the audience's position when it joined.
    pub position: Option<crate::cluster::Position>,
}

impl From<connections::Model> for Connection {
    fn from(r: connections::Model) -> Self {
        Self {
            id: r.id,
            church_id: r.church_id,
            conversation_id: r.conversation_id,
            person_id: r.person_id,
            display_name: r.display_name,
            time_joined: r.time_joined,
            socket_id: r.socket_id,
            ip_address: r.ip_address,
            node_id: r.node_id,
            position: None,
        }
    }
}

impl From<Connection> for connections::Model {
    fn from(c: Connection) -> Self {
        Self {
            anonymous_number: c
                .display_name
                .as_deref()
                .and_then(crate::store::anonymous_number),
            id: c.id,
            church_id: c.church_id,
            conversation_id: c.conversation_id,
            person_id: c.person_id,
            display_name: c.display_name,
            time_joined: c.time_joined,
            socket_id: c.socket_id,
            ip_address: c.ip_address,
            node_id: c.node_id,
        }
    }
}
