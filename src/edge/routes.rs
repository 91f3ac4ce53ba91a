//! The REST route table and its matcher. Literal segments match case-insensitively, a
//! trailing `/` is optional, parameters are percent-decoded and keep their case, and a
//! literal segment wins over a parameter in the same position (§9).
//!
//! The table is also the source of the OpenAPI document (`edge::openapi`).

/// Every endpoint the HTTP port serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
    Metrics,
    OpenApi,
    ConnectionsList,
    ConnectionsJoin,
    ConnectionsLeave,
    ConnectionsSetName,
    MessagesByConversation,
    MessagesCatchup,
    MessagesSend,
    MessagesPost,
    MessagesSetCallout,
    MessagesGet,
    MessagesReact,
    MessagesDelete,
    ConversationsCurrent,
    ConversationsEnsure,
    ConversationsSave,
    ConversationsGet,
    ConversationsByContent,
    ConversationsMessagesByContent,
    ConversationsTimeline,
    ConversationsPosts,
    ConversationsPostsByGroup,
    ConversationsStart,
    ConversationsDelete,
    PrivateMessagesCreate,
    PrivateMessagesList,
    PrivateMessagesGet,
    PrivateMessagesDelete,
    NotificationsUnreadCount,
    NotificationsMy,
    NotificationsCreate,
    NotificationsMarkRead,
    NotificationsDeleteMy,
    NotificationsDelete,
    BlockedIpsToggle,
    BlockedIpsList,
    BlockedIpsClear,
}

/// Who may call an endpoint (§8, §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No token involved (operational endpoints).
    None,
    /// Token optional: anonymous callers allowed (per-object rules may still need one).
    Optional,
    /// A valid token is required.
    Token,
    /// A token with this permission is required.
    Permission(crate::auth::Permission),
}

pub struct Route {
    pub method: &'static str,
    /// The path; `{name}` segments are parameters.
    pub path: &'static str,
    pub endpoint: Endpoint,
    pub auth: Auth,
    pub summary: &'static str,
}

macro_rules! routes {
    ($( $method:literal $path:literal => $endpoint:ident, $auth:expr, $summary:literal; )*) => {
        &[$( Route { method: $method, path: $path, endpoint: Endpoint::$endpoint, auth: $auth, summary: $summary }, )*]
    };
}

use crate::auth::Permission::{ContentEdit, MessagingAdmin};
use Auth::{None as Open, Optional, Permission as Perm, Token};

pub const ROUTES: &[Route] = routes! {
    "GET" "/health" => Health, Open, "Liveness: 200 while the process runs";
    "GET" "/ready" => Ready, Open, "Readiness: migrations done, listeners up, database answering";
    "GET" "/metrics" => Metrics, Open, "Prometheus metrics";
    "GET" "/messaging/openapi.json" => OpenApi, Open, "This OpenAPI 3.1 document";
    "GET" "/messaging/connections/{churchId}/{roomId}" => ConnectionsList, Optional, "Rows of a room by timeJoined (alerts: only the caller's own)";
    "POST" "/messaging/connections" => ConnectionsJoin, Optional, "Join sockets to rooms (upsert); attendance and blockedIp follow";
    "DELETE" "/messaging/connections/{churchId}/{roomId}/{socketId}" => ConnectionsLeave, Optional, "Remove a socket from a room";
    "POST" "/messaging/connections/setName" => ConnectionsSetName, Optional, "Rename a socket in every room it is in (not alerts)";
    "GET" "/messaging/messages/conversation/{conversationId}" => MessagesByConversation, Token, "Messages of a conversation of the caller's church, ascending";
    "GET" "/messaging/messages/catchup/{churchId}/{conversationId}" => MessagesCatchup, Optional, "Messages since a time (inclusive), ascending";
    "POST" "/messaging/messages/send" => MessagesSend, Optional, "Post messages (authenticated, or anonymous in anonymous-public rooms)";
    "POST" "/messaging/messages" => MessagesPost, Token, "Create messages, or edit them (items with id)";
    "POST" "/messaging/messages/setCallout" => MessagesSetCallout, Perm(ContentEdit), "Broadcast a callout to a conversation room (not stored)";
    "GET" "/messaging/messages/{churchId}/{id}" => MessagesGet, Optional, "One message";
    "POST" "/messaging/messages/{messageId}/reactions" => MessagesReact, Token, "Toggle a reaction";
    "DELETE" "/messaging/messages/{id}" => MessagesDelete, Token, "Delete a message (author or moderator)";
    "GET" "/messaging/conversations/current/{churchId}/{contentType}/{contentId}" => ConversationsCurrent, Optional, "The conversation of the last 24 hours for a content item, created if needed";
    "POST" "/messaging/conversations/ensure" => ConversationsEnsure, Token, "Get or create the current streamingLive conversation";
    "POST" "/messaging/conversations" => ConversationsSave, Token, "Create conversations, or update them (items with id, Content Edit)";
    "GET" "/messaging/conversations/{churchId}/{id}" => ConversationsGet, Optional, "One conversation";
    "GET" "/messaging/conversations/{churchId}/{contentType}/{contentId}" => ConversationsByContent, Optional, "Conversations of a content item, newest first";
    "GET" "/messaging/conversations/messages/{contentType}/{contentId}" => ConversationsMessagesByContent, Token, "Conversations of a content item with a page of their messages";
    "GET" "/messaging/conversations/timeline/ids" => ConversationsTimeline, Token, "First and last message of up to 100 conversations";
    "GET" "/messaging/conversations/posts" => ConversationsPosts, Token, "The caller's recent group conversations";
    "GET" "/messaging/conversations/posts/group/{groupId}" => ConversationsPostsByGroup, Token, "Recent conversations of one group";
    "POST" "/messaging/conversations/start" => ConversationsStart, Token, "Create a conversation with its first message";
    "DELETE" "/messaging/conversations/{churchId}/{id}" => ConversationsDelete, Perm(ContentEdit), "Delete a conversation with its messages";
    "POST" "/messaging/privatemessages" => PrivateMessagesCreate, Token, "Attach private-message participants to conversations";
    "GET" "/messaging/privatemessages" => PrivateMessagesList, Token, "The caller's private messages (marks them seen)";
    "GET" "/messaging/privatemessages/{id}" => PrivateMessagesGet, Token, "One private message";
    "DELETE" "/messaging/privatemessages/{id}" => PrivateMessagesDelete, Token, "Delete a private message thread";
    "GET" "/messaging/notifications/unreadCount" => NotificationsUnreadCount, Token, "Unread notification and private-message counts";
    "GET" "/messaging/notifications/my" => NotificationsMy, Token, "The caller's notifications (then marked read)";
    "POST" "/messaging/notifications/create" => NotificationsCreate, Perm(MessagingAdmin), "Create notifications for people";
    "POST" "/messaging/notifications/markRead/{churchId}/{personId}" => NotificationsMarkRead, Token, "Mark all of a person's notifications read";
    "DELETE" "/messaging/notifications/my" => NotificationsDeleteMy, Token, "Delete the caller's notifications";
    "DELETE" "/messaging/notifications/{churchId}/{id}" => NotificationsDelete, Token, "Delete one notification (owner or Messaging Admin)";
    "POST" "/messaging/blockedips" => BlockedIpsToggle, Perm(ContentEdit), "Toggle blocked IPs of conversations";
    "GET" "/messaging/blockedips/{churchId}/{conversationId}" => BlockedIpsList, Optional, "Blocked IPs of a conversation";
    "POST" "/messaging/blockedips/clear" => BlockedIpsClear, Perm(ContentEdit), "Clear the blocked IPs of a service";
};

impl Route {
    /// The names of the path's `{name}` parameters, in path order.
    pub fn param_names(&self) -> impl Iterator<Item = &'static str> {
        self.path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
    }
}

/// A matched route with its parameters, in path order.
pub struct Matched {
    pub route: &'static Route,
    pub params: Vec<String>,
}

fn segments(path: &str) -> Vec<&str> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    trimmed.split('/').skip(1).collect()
}

fn is_param(seg: &str) -> bool {
    seg.starts_with('{') && seg.ends_with('}')
}

/// Which of `route`'s segments are parameters, when its pattern matches the segments `segs`.
fn shape(route: &Route, segs: &[&str]) -> Option<Vec<bool>> {
    let pattern = segments(route.path);
    if pattern.len() != segs.len() {
        return None;
    }
    let ok = pattern.iter().zip(segs).all(|(p, s)| {
        if is_param(p) {
            !s.is_empty()
        } else {
            p.eq_ignore_ascii_case(s)
        }
    });
    ok.then(|| pattern.iter().map(|p| is_param(p)).collect())
}

/// Finds the route for `method` and a raw (still percent-encoded) `path`.
pub fn find(method: &str, path: &str) -> Option<Matched> {
    let segs = segments(path);
    let mut best: Option<(Vec<bool>, &'static Route)> = None;
    for route in ROUTES.iter().filter(|r| r.method == method) {
        // `false` (literal) sorts before `true` (parameter): the most literal match wins.
        if let Some(shape) = shape(route, &segs)
            && best.as_ref().is_none_or(|(b, _)| shape < *b)
        {
            best = Some((shape, route));
        }
    }
    let (shape, route) = best?;
    let params = segs
        .iter()
        .zip(shape)
        .filter(|(_, is_param)| *is_param)
        .map(|(s, _)| super::input::percent_decode(s))
        .collect::<Option<Vec<_>>>()?;
    Some(Matched { route, params })
}

impl Matched {
    /// The first parameter longer than its kind allows (`bodies::path_param_max`), or
    /// holding U+0000, which no id holds and PostgreSQL cannot even be asked about (see
    /// `body::NO_NUL`).
    pub fn invalid_param(&self) -> Option<&'static str> {
        self.route
            .param_names()
            .zip(&self.params)
            .find(|(name, value)| {
                value.chars().count() > super::bodies::path_param_max(name) || value.contains('\0')
            })
            .map(|(name, _)| name)
    }
}

/// The methods some route serves at `path` (for `405` and its `Allow` header); empty for an
/// unknown path. Any route matching counts, so a path another method would route to a
/// more literal pattern still reports every method that has a route for it.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let segs = segments(path);
    let mut methods: Vec<&'static str> = Vec::new();
    for route in ROUTES {
        if shape(route, &segs).is_some() && !methods.contains(&route.method) {
            methods.push(route.method);
        }
    }
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_decode_strictly() {
        use super::super::input::percent_decode;
        assert_eq!(percent_decode("caf%C3%A9%20x").as_deref(), Some("café x"));
        assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
        // Malformed escapes and non-UTF-8 bytes match no route.
        for bad in ["%", "%4", "%zz", "%+1", "%-1", "%FF", "x%C3"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn literal_segments_ignore_case_and_trailing_slash() {
        let m = find("POST", "/MESSAGING/Connections/SETNAME/").unwrap();
        assert_eq!(m.route.endpoint, Endpoint::ConnectionsSetName);
        let m = find("GET", "/messaging/connections/Ch%20urch/Room1").unwrap();
        assert_eq!(m.params, ["Ch urch", "Room1"]);
        assert!(find("PUT", "/messaging/connections").is_none());
        assert!(find("GET", "/messaging/connections//x").is_none());
        assert!(find("POST", "/messaging/privateMessages").is_some());
        assert!(find("POST", "/MESSAGING/blockedIps/clear/").is_some());
    }

    #[test]
    fn literals_win_over_parameters() {
        let ep = |m, p| find(m, p).unwrap().route.endpoint;
        assert_eq!(
            ep("GET", "/messaging/messages/conversation/X"),
            Endpoint::MessagesByConversation
        );
        assert_eq!(ep("GET", "/messaging/messages/C/X"), Endpoint::MessagesGet);
        assert_eq!(
            ep("GET", "/messaging/conversations/posts/group/G"),
            Endpoint::ConversationsPostsByGroup
        );
        assert_eq!(
            ep("GET", "/messaging/conversations/C/sermon/S"),
            Endpoint::ConversationsByContent
        );
        assert_eq!(
            ep("GET", "/messaging/conversations/timeline/ids"),
            Endpoint::ConversationsTimeline
        );
        assert_eq!(
            ep("GET", "/messaging/conversations/C/X"),
            Endpoint::ConversationsGet
        );
        assert_eq!(
            ep("DELETE", "/messaging/notifications/my"),
            Endpoint::NotificationsDeleteMy
        );
        assert_eq!(
            ep("DELETE", "/messaging/notifications/C/N"),
            Endpoint::NotificationsDelete
        );
    }
}
