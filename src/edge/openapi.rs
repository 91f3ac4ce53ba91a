//! The OpenAPI 3.1 document of the REST edge, generated at first use from the route table
//! (`routes::ROUTES`: paths, methods, auth, summaries) and from the Rust types the handlers
//! return (JSON Schema 2020-12 through schemars, which OpenAPI 3.1 uses as is).
use std::sync::OnceLock;

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use super::routes::{Auth, Endpoint, ROUTES};
use crate::service::model::*;

/// Request bodies as the edge reads them (documentation of the accepted shapes).
mod req {
    use schemars::JsonSchema;

    #[derive(JsonSchema)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct JoinItem {
        pub conversation_id: String,
        pub socket_id: String,
        pub display_name: Option<String>,
        /// Ignored: the church of a conversation is its own; alerts and content rooms take the token's.
        pub church_id: Option<String>,
    }

    #[derive(JsonSchema)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct SetName {
        pub socket_id: String,
        pub name: String,
    }

    #[derive(JsonSchema)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct MessageItem {
        /// `POST /messages` only: present means an edit of that message.
        pub id: Option<String>,
        pub conversation_id: String,
        /// At most 65 535 UTF-8 bytes.
        pub content: String,
        pub display_name: Option<String>,
        /// Defaults to `comment`.
        pub message_type: Option<String>,
    }

    #[derive(JsonSchema)]
    #[allow(dead_code)]
    pub struct Emoji {
        pub emoji: String,
    }

    #[derive(JsonSchema)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct Ensure {
        /// Must be `streamingLive`.
        pub content_type: String,
        pub content_id: String,
    }

    #[derive(JsonSchema)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct ConversationItem {
        /// Present means an update (Content Edit).
        pub id: Option<String>,
        pub content_type: String,
        pub content_id: String,
        pub title: Option<String>,
        pub group_id: Option<String>,
        pub visibility: Option<String>,
        pub allow_anonymous_posts: Option<bool>,
    }

    #[derive(JsonSchema)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct Start {
        pub group_id: Option<String>,
        pub content_type: String,
        pub content_id: String,
        pub title: Option<String>,
        pub comment: String,
    }

    #[derive(JsonSchema)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct PrivateMessageItem {
        pub to_person_id: String,
        pub conversation_id: String,
    }

    #[derive(JsonSchema)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct NotificationCreate {
        /// At most 100.
        pub people_ids: Vec<String>,
        pub content_type: String,
        pub content_id: String,
        pub message: String,
        pub link: Option<String>,
    }

    #[derive(JsonSchema)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct BlockedIpItem {
        pub conversation_id: String,
        pub ip_address: String,
        pub service_id: Option<String>,
    }

    #[derive(JsonSchema)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct ClearItem {
        pub service_id: String,
    }
}

#[derive(JsonSchema)]
#[allow(dead_code)]
struct Success {
    success: bool,
}

#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct ReactionResult {
    message_id: String,
    emoji: String,
    added: bool,
}

#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct TimelineItem {
    id: String,
    post_count: i32,
    messages: Vec<Message>,
}

/// What one endpoint takes and returns.
struct Doc {
    request: Option<Schema>,
    response: Option<Schema>,
    status: &'static str,
    query: &'static [(&'static str, &'static str)],
}

fn doc(ep: Endpoint, g: &mut SchemaGenerator) -> Doc {
    let mut d = Doc {
        request: None,
        response: None,
        status: "200",
        query: &[],
    };
    macro_rules! set {
        (_, $resp:ty) => {{
            d.response = Some(g.subschema_for::<$resp>());
        }};
        ($req:ty, $resp:ty) => {{
            d.request = Some(g.subschema_for::<$req>());
            d.response = Some(g.subschema_for::<$resp>());
        }};
    }
    use Endpoint::*;
    match ep {
        Health | Ready | Metrics | OpenApi => {}
        ConnectionsList => set!(_, Vec<super::connections::ConnectionJson>),
        ConnectionsJoin => set!(Vec<req::JoinItem>, Vec<super::connections::ConnectionJson>),
        ConnectionsLeave => set!(_, Success),
        ConnectionsSetName => set!(req::SetName, Vec<super::connections::ConnectionJson>),
        MessagesByConversation => set!(_, Vec<Message>),
        MessagesCatchup => {
            set!(_, Vec<Message>);
            d.query = &[("since", "RFC 3339 time; only messages sent at or after it")];
        }
        MessagesSend | MessagesPost => set!(Vec<req::MessageItem>, Vec<Message>),
        MessagesSetCallout => set!(Callout, Callout),
        MessagesGet => set!(_, Message),
        MessagesReact => set!(req::Emoji, ReactionResult),
        MessagesDelete => {
            d.response = Some(
                json!({"type": "object", "properties": {"message": {"type": "string"}}})
                    .try_into()
                    .unwrap_or_default(),
            )
        }
        ConversationsCurrent | ConversationsGet => set!(_, Conversation),
        ConversationsEnsure => set!(req::Ensure, Conversation),
        ConversationsSave => set!(Vec<req::ConversationItem>, Vec<Conversation>),
        ConversationsByContent => set!(_, Vec<Conversation>),
        ConversationsMessagesByContent => {
            set!(_, Vec<ConversationWithMessages<MessageWithReactions>>);
            d.query = &[
                ("page", "page number, from 1"),
                ("limit", "messages per page, at most 100"),
            ];
        }
        ConversationsTimeline => {
            set!(_, Vec<TimelineItem>);
            d.query = &[("ids", "comma-separated conversation ids, at most 100")];
        }
        ConversationsPosts | ConversationsPostsByGroup => {
            set!(_, Vec<ConversationWithMessages<Message>>)
        }
        ConversationsStart => set!(req::Start, Conversation),
        ConversationsDelete | BlockedIpsClear => d.status = "204",
        PrivateMessagesCreate => set!(Vec<req::PrivateMessageItem>, Vec<PrivateMessage>),
        PrivateMessagesList => set!(_, Vec<PrivateMessageView>),
        PrivateMessagesGet => set!(_, PrivateMessageView),
        PrivateMessagesDelete
        | NotificationsMarkRead
        | NotificationsDeleteMy
        | NotificationsDelete => {
            set!(_, Success)
        }
        NotificationsUnreadCount => set!(_, Counts),
        NotificationsMy => set!(_, Vec<Notification>),
        NotificationsCreate => set!(req::NotificationCreate, Vec<Notification>),
        BlockedIpsToggle => set!(Vec<req::BlockedIpItem>, Vec<BlockedIp>),
        BlockedIpsList => set!(_, Vec<String>),
    }
    if ep == BlockedIpsClear {
        d.request = Some(g.subschema_for::<Vec<req::ClearItem>>());
    }
    d
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"error": {}, "field": {"type": "string", "description": "JSON Pointer to the offending value"}},
        "required": ["error"]
    })
}

fn build() -> Value {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let mut paths = Map::new();
    for r in ROUTES {
        let d = doc(r.endpoint, &mut g);
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(
            d.query
                .iter()
                .map(|(name, desc)| json!({"name": name, "in": "query", "required": false, "description": desc, "schema": {"type": "string"}})),
        );
        let mut responses = Map::new();
        let ok = match (&d.response, r.endpoint) {
            (_, Endpoint::Metrics) => {
                json!({"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}})
            }
            (Some(s), _) => {
                json!({"description": "OK", "content": {"application/json": {"schema": s}}})
            }
            (None, _) if d.status == "204" => json!({"description": "No content"}),
            (None, _) => {
                json!({"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}})
            }
        };
        responses.insert(d.status.to_string(), ok);
        let err = |desc: &str| json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        if r.path.starts_with("/messaging/") && r.endpoint != Endpoint::OpenApi {
            responses.insert(
                "400".into(),
                err("Invalid JSON, invalid request body or query parameter"),
            );
            responses.insert("401".into(), err("Unauthorized"));
            responses.insert("404".into(), err("Unknown id or endpoint"));
            responses.insert("413".into(), err("Payload too large"));
        }
        let mut op = json!({
            "operationId": format!("{:?}", r.endpoint),
            "summary": r.summary,
            "tags": [r.path.split('/').nth(2).unwrap_or("operations")],
            "parameters": params,
            "responses": responses,
        });
        match r.auth {
            Auth::None => {}
            Auth::Optional => op["security"] = json!([{}, {"bearer": []}]),
            Auth::Token => op["security"] = json!([{"bearer": []}]),
            Auth::Permission(p) => {
                op["security"] = json!([{"bearer": []}]);
                op["description"] = json!(format!("Requires the `{}` permission.", p.as_str()));
            }
        }
        if let Some(s) = d.request {
            op["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": s}}});
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method.to_lowercase()] = op;
    }
    let mut schemas = g.take_definitions(true);
    schemas.insert("Error".into(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "messaging",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "REST edge of the real-time delivery service. Literal path segments are case-insensitive and a trailing slash is optional."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
        }
    })
}

pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_with_resolvable_refs() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        for r in ROUTES {
            assert!(
                doc["paths"][r.path][r.method.to_lowercase()].is_object(),
                "{} {}",
                r.method,
                r.path
            );
        }
        let text = doc.to_string();
        for name in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = name.split('"').next().unwrap_or_default();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling $ref {name}"
            );
        }
    }
}
