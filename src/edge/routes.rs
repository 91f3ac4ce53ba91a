//! Every endpoint the HTTP port serves, declared once (`endpoints!` below): its route, who may
//! call it, the error statuses it adds to the ones every operation shares, its handler, and
//! the handler's input and output types. Dispatch (`call`) and the OpenAPI document
//! (`edge::openapi`) are both generated from the declaration, so neither can drift from the
//! handlers: `call` gives the handler the declared input and takes the declared output.
//!
//! The matcher: literal segments match case-insensitively, a trailing `/` is optional,
//! parameters are percent-decoded and keep their case, and a literal segment wins over a
//! parameter in the same position (§9).
use axum::response::Response;
use schemars::SchemaGenerator;

use super::api::{Body, Doc, Input, NoContent, Person, Query, Reply, Success};
use super::bodies::*;
use super::connections::{self, ConnectionJson};
use super::conversations::{self, GroupPost, TimelineItem};
use super::messages::{self, Deleted, Emoji, ReactionResult};
use super::{Ctx, blocked_ips, notifications, ops, private_messages};
use crate::error::AppResult;
use crate::service::model::*;

/// Who may call an endpoint (§8, §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No token involved (operational endpoints): nothing of the request is read, neither
    /// its token nor its body.
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
    /// The error statuses it answers besides the ones every `/messaging` operation shares
    /// (§9, §10): 400 when it reads a body, a query or a path parameter, 401 unless it is
    /// open, 413 with a body, 503 (the database).
    pub extra_errors: &'static [u16],
    /// Its input and output as the document shows them: the handler's own types.
    pub doc: fn(&mut SchemaGenerator) -> Doc,
}

/// `()` for a handler that takes no input.
macro_rules! input_type {
    () => {
        ()
    };
    ($input:ty) => {
        $input
    };
}

/// One line per endpoint: `/// summary`, then
/// `Variant: METHOD "path", auth, [extra error statuses], handler(Input) -> Output;`
/// where a handler without input is written `handler()`. Generates `Endpoint`, `ROUTES` and
/// `call`.
macro_rules! endpoints {
    ($(
        #[doc = $summary:literal]
        $endpoint:ident: $method:ident $path:literal, $auth:expr, [$($extra:literal),*],
            $($handler:ident)::+($($input:ty)?) -> $output:ty;
    )*) => {
        /// Every endpoint the HTTP port serves.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Endpoint {
            $(#[doc = $summary] $endpoint,)*
        }

        pub const ROUTES: &[Route] = &[$(
            Route {
                method: stringify!($method),
                path: $path,
                endpoint: Endpoint::$endpoint,
                auth: $auth,
                summary: $summary.trim_ascii(),
                extra_errors: &[$($extra),*],
                doc: Doc::of::<input_type!($($input)?), $output>,
            },
        )*];

        /// Runs `endpoint`'s handler on its input read from the request, and sends its output.
        pub async fn call(endpoint: Endpoint, ctx: &Ctx<'_>) -> AppResult<Response> {
            match endpoint {
                $(Endpoint::$endpoint => {
                    let output: $output =
                        $($handler)::+(ctx $(, <$input as Input>::read(ctx)?)?).await?;
                    Ok(Reply::into_response(output))
                })*
            }
        }
    };
}

use crate::auth::Permission::{ContentEdit, MessagingAdmin};
use Auth::{None as Open, Optional, Permission as Perm, Token};

endpoints! {
    /// Liveness: 200 while the process runs
    Health: GET "/health", Open, [], ops::health() -> ops::Health;
    /// Readiness: migrations done, listeners up, database answering
    Ready: GET "/ready", Open, [], ops::ready() -> ops::Ready;
    /// Prometheus metrics
    Metrics: GET "/metrics", Open, [], ops::metrics() -> ops::Metrics;
    /// This OpenAPI 3.1 document
    OpenApi: GET "/messaging/openapi.json", Open, [], ops::openapi() -> ops::Document;

    /// Rows of a room by timeJoined (alerts: only the caller's own)
    ConnectionsList: GET "/messaging/connections/{churchId}/{roomId}", Optional, [404],
        connections::list() -> Vec<ConnectionJson>;
    /// Join sockets to rooms (upsert); attendance and blockedIp follow
    ConnectionsJoin: POST "/messaging/connections", Optional, [404],
        connections::join(Body<JoinBody>) -> Vec<ConnectionJson>;
    /// Remove a socket from a room
    ConnectionsLeave: DELETE "/messaging/connections/{churchId}/{roomId}/{socketId}", Optional, [404],
        connections::leave() -> Success;
    /// Rename a socket in every room it is in (not alerts)
    ConnectionsSetName: POST "/messaging/connections/setName", Optional, [],
        connections::set_name(Body<SetNameBody>) -> Vec<ConnectionJson>;

    /// Messages of a conversation of the caller's church, ascending
    MessagesByConversation: GET "/messaging/messages/conversation/{conversationId}", Token, [404],
        messages::by_conversation() -> Vec<Message>;
    /// Messages since a time (inclusive), ascending
    MessagesCatchup: GET "/messaging/messages/catchup/{churchId}/{conversationId}", Optional, [404],
        messages::catchup(Query<CatchupQuery>) -> Vec<Message>;
    /// Post messages (authenticated, or anonymous in anonymous-public rooms)
    MessagesSend: POST "/messaging/messages/send", Optional, [403, 404],
        messages::send(Body<SendBody>) -> Vec<Message>;
    /// Create messages, or edit them (items with id)
    MessagesPost: POST "/messaging/messages", Token, [403, 404],
        messages::post(Body<PostBody>) -> Vec<Message>;
    /// Broadcast a callout to a conversation room (not stored)
    MessagesSetCallout: POST "/messaging/messages/setCallout", Perm(ContentEdit), [404],
        messages::set_callout(Body<CalloutBody>) -> Callout;
    /// One message
    MessagesGet: GET "/messaging/messages/{churchId}/{id}", Optional, [404],
        messages::get() -> Message;
    /// Toggle a reaction
    MessagesReact: POST "/messaging/messages/{messageId}/reactions", Token, [404],
        messages::react(Emoji) -> ReactionResult;
    /// Delete a message (author or moderator)
    MessagesDelete: DELETE "/messaging/messages/{id}", Token, [404],
        messages::delete() -> Deleted;

    /// The conversation of the last 24 hours for a content item, created if needed
    ConversationsCurrent: GET "/messaging/conversations/current/{churchId}/{contentType}/{contentId}", Optional, [404],
        conversations::current() -> Conversation;
    /// Get or create the current streamingLive conversation
    ConversationsEnsure: POST "/messaging/conversations/ensure", Token, [],
        conversations::ensure(Body<EnsureBody>) -> Conversation;
    /// Create conversations, or update them (items with id, Content Edit)
    ConversationsSave: POST "/messaging/conversations", Token, [404],
        conversations::save(Body<SaveBody>) -> Vec<Conversation>;
    /// One conversation
    ConversationsGet: GET "/messaging/conversations/{churchId}/{id}", Optional, [404],
        conversations::get() -> Conversation;
    /// Conversations of a content item, newest first
    ConversationsByContent: GET "/messaging/conversations/{churchId}/{contentType}/{contentId}", Optional, [],
        conversations::by_content() -> Vec<Conversation>;
    /// Conversations of a content item with a page of their messages
    ConversationsMessagesByContent: GET "/messaging/conversations/messages/{contentType}/{contentId}", Token, [],
        conversations::messages_by_content(Query<PageQuery>)
            -> Vec<ConversationWithMessages<MessageWithReactions>>;
    /// First and last message of up to 100 conversations
    ConversationsTimeline: GET "/messaging/conversations/timeline/ids", Token, [],
        conversations::timeline(Query<TimelineQuery>) -> Vec<TimelineItem>;
    /// The caller's recent group conversations
    ConversationsPosts: GET "/messaging/conversations/posts", Token, [],
        conversations::posts() -> Vec<GroupPost>;
    /// Recent conversations of one group
    ConversationsPostsByGroup: GET "/messaging/conversations/posts/group/{groupId}", Token, [],
        conversations::posts_by_group() -> Vec<GroupPost>;
    /// Create a conversation with its first message
    ConversationsStart: POST "/messaging/conversations/start", Token, [],
        conversations::start(Body<StartBody>) -> Conversation;
    /// Delete a conversation with its messages
    ConversationsDelete: DELETE "/messaging/conversations/{churchId}/{id}", Perm(ContentEdit), [404],
        conversations::delete() -> NoContent;

    /// Attach private-message participants to conversations
    PrivateMessagesCreate: POST "/messaging/privatemessages", Token, [404, 409],
        private_messages::create(Person<Body<PrivateMessagesBody>>) -> Vec<PrivateMessage>;
    /// The caller's private messages (marks them seen)
    PrivateMessagesList: GET "/messaging/privatemessages", Token, [],
        private_messages::list() -> Vec<PrivateMessageView>;
    /// One private message
    PrivateMessagesGet: GET "/messaging/privatemessages/{id}", Token, [404],
        private_messages::get() -> PrivateMessageView;
    /// Delete a private message thread
    PrivateMessagesDelete: DELETE "/messaging/privatemessages/{id}", Token, [404],
        private_messages::delete() -> Success;

    /// Unread notification and private-message counts
    NotificationsUnreadCount: GET "/messaging/notifications/unreadCount", Token, [],
        notifications::unread_count() -> Counts;
    /// The caller's notifications (then marked read)
    NotificationsMy: GET "/messaging/notifications/my", Token, [],
        notifications::my() -> Vec<Notification>;
    /// Create notifications for people
    NotificationsCreate: POST "/messaging/notifications/create", Perm(MessagingAdmin), [],
        notifications::create(Person<Body<NotificationsBody>>) -> Vec<Notification>;
    /// Mark all of a person's notifications read
    NotificationsMarkRead: POST "/messaging/notifications/markRead/{churchId}/{personId}", Token, [],
        notifications::mark_read() -> Success;
    /// Delete the caller's notifications
    NotificationsDeleteMy: DELETE "/messaging/notifications/my", Token, [],
        notifications::delete_my() -> Success;
    /// Delete one notification (owner or Messaging Admin)
    NotificationsDelete: DELETE "/messaging/notifications/{churchId}/{id}", Token, [404],
        notifications::delete() -> Success;

    /// Toggle blocked IPs of conversations
    BlockedIpsToggle: POST "/messaging/blockedips", Perm(ContentEdit), [404],
        blocked_ips::toggle(Body<BlockedIpsBody>) -> Vec<BlockedIp>;
    /// Blocked IPs of a conversation
    BlockedIpsList: GET "/messaging/blockedips/{churchId}/{conversationId}", Optional, [404],
        blocked_ips::list() -> Vec<String>;
    /// Clear the blocked IPs of a service
    BlockedIpsClear: POST "/messaging/blockedips/clear", Perm(ContentEdit), [],
        blocked_ips::clear(Body<ClearBody>) -> NoContent;
}

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
