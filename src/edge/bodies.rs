//! Every request body and query string of the REST edge (§10), declared once: the handlers
//! parse requests into these types (`edge::body` gives the contract's errors) and the
//! OpenAPI document (`edge::openapi`) is generated from them.
//!
//! Field order matters: when several required fields are missing, the first one declared is
//! the one reported. Fields documented as "type-checked only" are read so that a wrong type
//! or an over-long value is still a 400, and then ignored: the server sets them.
use schemars::JsonSchema;
use serde::Deserialize;

use super::input::{Batch, Content, Flag, NonEmpty, Number, Obj, Query, Rules, Text};
use crate::service::limits::{
    DEFAULT_PAGE_SIZE, MAX_BATCH, MAX_CONTENT_ID, MAX_DISPLAY_NAME, MAX_EMOJI, MAX_EPOCH, MAX_ID,
    MAX_IP, MAX_LABEL, MAX_LINK, MAX_PAGE, MAX_PAGE_SIZE, MAX_ROOM_ID, MAX_SEQ, MAX_SOCKET_ID,
    MAX_TIMESTAMP, MAX_TITLE,
};

/// An id-typed field (§9: 64 characters).
pub type Id = Text<MAX_ID>;
/// contentType, messageType, visibility.
pub type Label = Text<MAX_LABEL>;

/// `true` when an optional string field is given and not empty.
fn given<const MAX: usize>(s: &Option<Text<MAX>>) -> bool {
    s.as_deref().is_some_and(|s| !s.is_empty())
}

/// The longest value of a path parameter, by its name in the route table (§9 field limits:
/// ids 64, room ids 64, `contentType` 45, `contentId` 255). A longer one is `400 Invalid path
/// parameter`: no such object can exist, and letting it through would store an over-long
/// `contentId` (`/conversations/current/…` creates its conversation).
pub fn path_param_max(name: &str) -> usize {
    match name {
        "roomId" => MAX_ROOM_ID,
        "socketId" => MAX_SOCKET_ID,
        "contentType" => MAX_LABEL,
        "contentId" => MAX_CONTENT_ID,
        _ => MAX_ID,
    }
}

// --- /connections ---------------------------------------------------------------------------

/// `POST /messaging/connections`.
pub type JoinBody = Batch<Obj<JoinItem>>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinItem {
    /// Type-checked only: the server takes it from the token.
    pub person_id: Option<Id>,
    /// Type-checked only: the server takes the client's address.
    pub ip_address: Option<Text<MAX_IP>>,
    /// Type-checked only: the server sets the row id.
    pub id: Option<Id>,
    /// Ignored for conversation rooms (the conversation's church wins) and for alerts and
    /// content rooms (the token's church).
    pub church_id: Option<Id>,
    /// The room: a conversation id, `alerts` or `content-{type}-{id}`.
    pub conversation_id: NonEmpty<MAX_ROOM_ID>,
    pub socket_id: NonEmpty<MAX_SOCKET_ID>,
    pub display_name: Option<Text<MAX_DISPLAY_NAME>>,
    /// Resume from this position (§5.6): honoured for a socket with positions only.
    pub since: Option<Obj<SincePosition>>,
}
impl Rules for JoinItem {}

/// A position a socket had in a room's stream (§5.6), as a join's `since`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SincePosition {
    pub epoch: NonEmpty<MAX_EPOCH>,
    pub seq: Seq,
}
impl Rules for SincePosition {}

/// A `seq`: a JSON integer from 0 to 2^53 - 1 (no text, unlike a query's `Number`).
#[derive(Debug, Clone, Copy)]
pub struct Seq(pub u64);

impl<'de> Deserialize<'de> for Seq {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, Unexpected, Visitor};
        struct V;
        impl Visitor<'_> for V {
            type Value = Seq;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a whole number from 0 to {MAX_SEQ}")
            }
            fn visit_u64<E: Error>(self, n: u64) -> Result<Seq, E> {
                if n <= MAX_SEQ {
                    Ok(Seq(n))
                } else {
                    Err(E::invalid_value(Unexpected::Unsigned(n), &self))
                }
            }
            fn visit_i64<E: Error>(self, n: i64) -> Result<Seq, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(n), &self)),
                }
            }
            // JSON Schema counts `5.0` as an integer, so it is one here too.
            fn visit_f64<E: Error>(self, n: f64) -> Result<Seq, E> {
                if n.fract() == 0.0 && (0.0..=MAX_SEQ as f64).contains(&n) {
                    Ok(Seq(n as u64))
                } else {
                    Err(E::invalid_value(Unexpected::Float(n), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Seq {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Seq".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "integer", "minimum": 0, "maximum": MAX_SEQ})
    }
}

/// `POST /messaging/connections/setName`.
pub type SetNameBody = Obj<SetName>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetName {
    pub socket_id: NonEmpty<MAX_SOCKET_ID>,
    pub name: Text<MAX_DISPLAY_NAME>,
}
impl Rules for SetName {}

// --- /messages ------------------------------------------------------------------------------

/// `POST /messaging/messages/send`.
pub type SendBody = Batch<Obj<SendItem>>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SendItem {
    /// Type-checked only: the conversation's church is used.
    pub church_id: Option<Id>,
    /// Type-checked only: the token decides.
    pub person_id: Option<Id>,
    /// Type-checked only: `/send` always creates a message.
    pub id: Option<Id>,
    pub conversation_id: NonEmpty<MAX_ID>,
    pub content: Content,
    pub display_name: Option<Text<MAX_DISPLAY_NAME>>,
    /// Defaults to `comment`.
    pub message_type: Option<Label>,
}
impl Rules for SendItem {}

/// `POST /messaging/messages`.
pub type PostBody = Batch<Obj<PostItem>>;

/// A new message, or with `id` an edit of that message's `content`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("anyOf" = [
    {"required": ["id"], "properties": {"id": {"type": "string", "minLength": 1}}},
    {"required": ["conversationId"], "properties": {"conversationId": {"type": "string", "minLength": 1}}},
]))]
pub struct PostItem {
    /// Type-checked only: the token's church is used.
    pub church_id: Option<Id>,
    /// Type-checked only: the token decides.
    pub person_id: Option<Id>,
    /// Present (and not empty): an edit of that message.
    pub id: Option<Id>,
    /// Required (not empty) unless `id` is given; an edit keeps the message's own.
    pub conversation_id: Option<Id>,
    pub content: Content,
    pub display_name: Option<Text<MAX_DISPLAY_NAME>>,
    /// Defaults to `comment`.
    pub message_type: Option<Label>,
}

impl Rules for PostItem {
    fn check(&self) -> Result<(), &'static str> {
        if given(&self.id) || given(&self.conversation_id) {
            Ok(())
        } else {
            Err("conversationId")
        }
    }
}

/// `POST /messaging/messages/setCallout`: a Message-shaped object.
pub type CalloutBody = Obj<CalloutItem>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CalloutItem {
    pub id: Option<Id>,
    pub conversation_id: NonEmpty<MAX_ID>,
    pub person_id: Option<Id>,
    pub display_name: Option<Text<MAX_DISPLAY_NAME>>,
    pub time_sent: Option<Text<MAX_TIMESTAMP>>,
    pub time_updated: Option<Text<MAX_TIMESTAMP>>,
    pub message_type: Option<Label>,
    pub content: Option<Content>,
}
impl Rules for CalloutItem {}

/// `POST /messaging/messages/{messageId}/reactions`. A missing, empty or non-string `emoji`
/// is `400 {"error":"emoji is required"}`; an over-long one points at `/emoji`.
pub type ReactBody = Obj<Reaction>;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Reaction {
    pub emoji: NonEmpty<MAX_EMOJI>,
}
impl Rules for Reaction {}

/// `GET /messaging/messages/catchup/…`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct CatchupQuery {
    /// RFC 3339 time: only messages sent at or after it. Empty is the same as absent.
    #[serde(default)]
    pub since: Since,
}

impl Query for CatchupQuery {
    const NAMES: &'static [&'static str] = &["since"];
}

/// An RFC 3339 time in milliseconds; `None` when absent or empty.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Since(pub Option<i64>);

impl<'de> Deserialize<'de> for Since {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(Since(None));
        }
        crate::time::parse_rfc3339_ms(&s)
            .map(|ms| Since(Some(ms)))
            .ok_or_else(|| serde::de::Error::custom("not an RFC 3339 time"))
    }
}

impl JsonSchema for Since {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Since".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Empty is accepted too, as absent.
        schemars::json_schema!({
            "type": "string",
            "anyOf": [{"format": "date-time"}, {"maxLength": 0}],
        })
    }
}

// --- /conversations -------------------------------------------------------------------------

/// `POST /messaging/conversations/ensure`. Any `contentType` but `streamingLive`, or an
/// empty `contentId`, is a 401.
pub type EnsureBody = Obj<Ensure>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ensure {
    /// Must be `streamingLive`.
    pub content_type: Option<Label>,
    pub content_id: Option<Text<MAX_CONTENT_ID>>,
}
impl Rules for Ensure {}

/// `POST /messaging/conversations`.
pub type SaveBody = Batch<Obj<ConversationItem>>;

/// A new conversation, or with `id` an update (Content Edit).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("anyOf" = [
    {"required": ["id"], "properties": {"id": {"type": "string", "minLength": 1}}},
    {
        "required": ["contentType", "contentId"],
        "properties": {
            "contentType": {"type": "string", "minLength": 1},
            "contentId": {"type": "string", "minLength": 1},
        },
    },
]))]
pub struct ConversationItem {
    /// Type-checked only: the token's church is used.
    pub church_id: Option<Id>,
    /// Present (and not empty): an update of that conversation.
    pub id: Option<Id>,
    /// Required (not empty) unless `id` is given.
    pub content_type: Option<Label>,
    /// Required (not empty) unless `id` is given.
    pub content_id: Option<Text<MAX_CONTENT_ID>>,
    pub title: Option<Text<MAX_TITLE>>,
    pub group_id: Option<Id>,
    pub visibility: Option<Label>,
    /// `0` and `1` are accepted too; defaults to `false` on create.
    pub allow_anonymous_posts: Option<Flag>,
}

impl Rules for ConversationItem {
    fn check(&self) -> Result<(), &'static str> {
        if given(&self.id) {
            Ok(())
        } else if !given(&self.content_type) {
            Err("contentType")
        } else if !given(&self.content_id) {
            Err("contentId")
        } else {
            Ok(())
        }
    }
}

/// `POST /messaging/conversations/start`.
pub type StartBody = Obj<Start>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Start {
    /// With a group: the caller must be a member or have Content Edit.
    pub group_id: Option<Id>,
    pub content_type: NonEmpty<MAX_LABEL>,
    pub content_id: NonEmpty<MAX_CONTENT_ID>,
    pub title: Option<Text<MAX_TITLE>>,
    /// The first message's content.
    pub comment: Content,
}
impl Rules for Start {}

/// `GET /messaging/conversations/messages/{contentType}/{contentId}`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct PageQuery {
    /// Page number, from 1.
    #[serde(default = "first_page")]
    pub page: Number<1, MAX_PAGE>,
    /// Messages per page.
    #[serde(default = "default_page_size")]
    pub limit: Number<1, MAX_PAGE_SIZE>,
}

fn first_page() -> Number<1, MAX_PAGE> {
    Number(1)
}

fn default_page_size() -> Number<1, MAX_PAGE_SIZE> {
    Number(DEFAULT_PAGE_SIZE)
}

impl Query for PageQuery {
    const NAMES: &'static [&'static str] = &["page", "limit"];
}

/// `GET /messaging/conversations/timeline/ids`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct TimelineQuery {
    /// Conversation ids, comma-separated (`ids=a,b,c`).
    #[serde(default)]
    pub ids: IdList,
}

impl Query for TimelineQuery {
    const NAMES: &'static [&'static str] = &["ids"];
    const LISTS: &'static [&'static str] = &["ids"];
}

/// Comma-separated ids: 1 to `MAX_BATCH` entries of 1 to `MAX_ID` characters, as the
/// document says. An empty entry (`ids=a,,b`, `ids=,`, `ids=`) is malformed: a client
/// generated from the document never sends one, and dropping it would hide a client's bug.
/// Blanks around an id are then dropped (`a, b`); an id of blanks only names nothing.
/// Without `ids` the answer is `[]`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IdList(pub Vec<String>);

impl<'de> Deserialize<'de> for IdList {
    /// From the entries of the list (see `Query::LISTS`), already split and decoded.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(d)?;
        let bad = |i: &String| i.is_empty() || i.chars().count() > MAX_ID || i.contains('\0');
        if entries.len() > MAX_BATCH || entries.iter().any(bad) {
            return Err(serde::de::Error::custom(
                "too many, empty, too long or U+0000-holding ids",
            ));
        }
        Ok(IdList(
            entries
                .iter()
                .map(|i| i.trim())
                .filter(|i| !i.is_empty())
                .map(str::to_string)
                .collect(),
        ))
    }
}

impl JsonSchema for IdList {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IdList".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "array",
            "items": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_ID,
                "pattern": crate::edge::input::NO_NUL_PATTERN,
            },
            "minItems": 1,
            "maxItems": MAX_BATCH,
        })
    }
}

// --- /privatemessages, /notifications, /blockedips ------------------------------------------

/// `POST /messaging/privatemessages`.
pub type PrivateMessagesBody = Batch<Obj<PrivateMessageItem>>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateMessageItem {
    pub to_person_id: NonEmpty<MAX_ID>,
    pub conversation_id: NonEmpty<MAX_ID>,
}
impl Rules for PrivateMessageItem {}

/// `POST /messaging/notifications/create`.
pub type NotificationsBody = Obj<NewNotifications>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewNotifications {
    /// The recipients.
    pub people_ids: Batch<NonEmpty<MAX_ID>>,
    pub content_type: NonEmpty<MAX_LABEL>,
    pub content_id: NonEmpty<MAX_CONTENT_ID>,
    pub message: Content,
    pub link: Option<Text<MAX_LINK>>,
}
impl Rules for NewNotifications {}

/// `POST /messaging/blockedips`.
pub type BlockedIpsBody = Batch<Obj<BlockedIpItem>>;

/// Toggles the entry of `(conversationId, ipAddress)` in the caller's church.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockedIpItem {
    pub conversation_id: NonEmpty<MAX_ID>,
    pub ip_address: NonEmpty<MAX_IP>,
    pub service_id: Option<Id>,
}
impl Rules for BlockedIpItem {}

/// `POST /messaging/blockedips/clear`.
pub type ClearBody = Batch<Obj<ClearItem>>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClearItem {
    /// Type-checked only: the token's church is used.
    pub church_id: Option<Id>,
    pub service_id: NonEmpty<MAX_ID>,
}
impl Rules for ClearItem {}

#[cfg(test)]
mod tests {
    use schemars::SchemaGenerator;

    use super::*;
    use crate::error::AppError;

    /// `Query::NAMES` are the parameters serde reads, so an error can always name one.
    fn names_match<T: Query>() {
        let schema = T::json_schema(&mut SchemaGenerator::default());
        let props: Vec<&str> = schema
            .get("properties")
            .and_then(|p| p.as_object())
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(props, T::NAMES);
    }

    #[test]
    fn query_names_and_errors() {
        names_match::<CatchupQuery>();
        names_match::<PageQuery>();
        names_match::<TimelineQuery>();
        let q = |raw: &str| super::super::input::query::<PageQuery>(Some(raw));
        let p = q("limit=5&page=2&limit=500").expect("first occurrence wins");
        assert_eq!((p.page.0, p.limit.0), (2, 5));
        let p = q("").expect("defaults");
        assert_eq!((p.page.0, p.limit.0), (1, DEFAULT_PAGE_SIZE));
        for (raw, field) in [
            ("page=0", "page"),
            ("page=", "page"),
            ("limit=101", "limit"),
        ] {
            assert!(
                matches!(q(raw), Err(AppError::InvalidQuery { field: f }) if f == field),
                "{raw}"
            );
        }
        let since = super::super::input::query::<CatchupQuery>(Some("since="));
        assert_eq!(since.map(|s| s.since).ok(), Some(Since(None)));
        let ids = |raw: &str| super::super::input::query::<TimelineQuery>(Some(raw));
        assert_eq!(
            ids("ids=a,%20b,c+").map(|t| t.ids.0).ok(),
            Some(vec!["a".to_string(), "b".into(), "c".into()])
        );
        assert_eq!(ids("").map(|t| t.ids.0).ok(), Some(Vec::new()));
        // Found by Schemathesis: a one-character id that is a blank is schema-valid.
        assert_eq!(
            ids("ids=a,%20,%0B").map(|t| t.ids.0).ok(),
            Some(vec!["a".to_string()])
        );
        // Found by Schemathesis: an id's own comma is sent encoded and stays in the id; only
        // the literal commas separate entries.
        assert_eq!(
            ids("ids=x%2C,%2Cy,a%2Cb").map(|t| t.ids.0).ok(),
            Some(vec!["x,".to_string(), ",y".into(), "a,b".into()])
        );
        for raw in ["ids=,,,", "ids=a,,b", "ids=a,", "ids="] {
            assert!(
                matches!(ids(raw), Err(AppError::InvalidQuery { field: "ids" })),
                "{raw}"
            );
        }
    }
}
