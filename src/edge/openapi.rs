//! The OpenAPI 3.1 document of the REST edge, generated once (at start, into `EdgeState`,
//! which `ops::openapi` serves) from the endpoint
//! declaration (`routes::ROUTES`: paths, methods, auth, summaries, extra error statuses) and
//! from the types its handlers take and return (`edge::api`): the request types
//! (`edge::bodies`: bodies and query strings, with their limits) and the response types, as
//! JSON Schema 2020-12 through schemars, which OpenAPI 3.1 uses as is.
use std::sync::OnceLock;

use schemars::Schema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::bodies;
use super::routes::{Auth, Endpoint, ROUTES};

/// One `in: query` parameter per property of a query type's schema; its `description`
/// moves to the parameter. An array is written `name=a,b,c` (form style, not exploded).
fn query_parameters(q: &Schema) -> Vec<Value> {
    let required: Vec<&str> = q
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = q.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, schema)| {
            let mut schema = schema.clone();
            let description = schema.as_object_mut().and_then(|s| s.remove("description"));
            let mut p = json!({
                "name": name,
                "in": "query",
                "required": required.contains(&name.as_str()),
                "schema": schema,
            });
            if let Some(desc) = description {
                p["description"] = desc;
            }
            if p["schema"]["type"] == "array" {
                p["style"] = json!("form");
                p["explode"] = json!(false);
            }
            p
        })
        .collect()
}

/// OpenAPI links: which value of an endpoint's `200` response feeds which parameter of
/// another endpoint (parameter name, response field), so a stateful client (or fuzzer) can
/// chain calls. A batch response links from its first item.
fn links(ep: Endpoint) -> &'static [(Endpoint, &'static [(&'static str, &'static str)])] {
    use Endpoint::*;
    const CONVERSATION: &[(Endpoint, &[(&str, &str)])] = &[
        (ConversationsGet, &[("churchId", "churchId"), ("id", "id")]),
        (MessagesByConversation, &[("conversationId", "id")]),
        (
            MessagesCatchup,
            &[("churchId", "churchId"), ("conversationId", "id")],
        ),
        (
            BlockedIpsList,
            &[("churchId", "churchId"), ("conversationId", "id")],
        ),
        (
            ConnectionsList,
            &[("churchId", "churchId"), ("roomId", "id")],
        ),
        (
            ConversationsByContent,
            &[
                ("churchId", "churchId"),
                ("contentType", "contentType"),
                ("contentId", "contentId"),
            ],
        ),
        (
            ConversationsDelete,
            &[("churchId", "churchId"), ("id", "id")],
        ),
    ];
    const MESSAGE: &[(Endpoint, &[(&str, &str)])] = &[
        (MessagesGet, &[("churchId", "churchId"), ("id", "id")]),
        (MessagesReact, &[("messageId", "id")]),
        (MessagesDelete, &[("id", "id")]),
        (
            MessagesByConversation,
            &[("conversationId", "conversationId")],
        ),
    ];
    match ep {
        ConversationsCurrent | ConversationsEnsure | ConversationsStart | ConversationsGet
        | ConversationsSave => CONVERSATION,
        MessagesSend | MessagesPost | MessagesGet => MESSAGE,
        PrivateMessagesCreate => &[
            (PrivateMessagesGet, &[("id", "id")]),
            (PrivateMessagesDelete, &[("id", "id")]),
        ],
        NotificationsCreate => &[
            (
                NotificationsDelete,
                &[("churchId", "churchId"), ("id", "id")],
            ),
            (
                NotificationsMarkRead,
                &[("churchId", "churchId"), ("personId", "personId")],
            ),
        ],
        ConnectionsJoin | ConnectionsSetName => &[
            (
                ConnectionsList,
                &[("churchId", "churchId"), ("roomId", "conversationId")],
            ),
            (
                ConnectionsLeave,
                &[
                    ("churchId", "churchId"),
                    ("roomId", "conversationId"),
                    ("socketId", "socketId"),
                ],
            ),
        ],
        BlockedIpsToggle => &[(
            BlockedIpsList,
            &[
                ("churchId", "churchId"),
                ("conversationId", "conversationId"),
            ],
        )],
        _ => &[],
    }
}

/// The `links` object of an endpoint's `200` response; `batch` when it returns an array.
fn links_of(ep: Endpoint, batch: bool) -> Map<String, Value> {
    let base = if batch {
        "$response.body#/0"
    } else {
        "$response.body#"
    };
    links(ep)
        .iter()
        .map(|(target, params)| {
            let params: Map<String, Value> = params
                .iter()
                .map(|(name, field)| (name.to_string(), json!(format!("{base}/{field}"))))
                .collect();
            let id = format!("{target:?}");
            (id.clone(), json!({"operationId": id, "parameters": params}))
        })
        .collect()
}

/// The two error shapes of §9 and the responses built on them.
fn error_components() -> (Map<String, Value>, Value) {
    let mut schemas = Map::new();
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "properties": {
                "error": {"type": "string"},
                "field": {"type": "string", "description": "JSON Pointer to the offending value of the body, or the name of the offending query or path parameter"}
            },
            "required": ["error"]
        }),
    );
    schemas.insert(
        "FrameworkError".into(),
        json!({
            "type": "object",
            "properties": {"error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "status": {"type": "integer"},
                    "timestamp": {"type": "string", "format": "date-time"},
                    "path": {"type": "string"}
                },
                "required": ["message", "status", "timestamp", "path"]
            }},
            "required": ["error"]
        }),
    );
    let plain = |desc: &str| json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let responses = json!({
        "400": plain("Invalid JSON, invalid request body, too many items, or an invalid query or path parameter"),
        "401": plain("Unauthorized: no valid token, a missing permission, or access denied"),
        "403": plain("IP address blocked"),
        "404": {"description": "Unknown id (a named error), or no endpoint for the path (the framework shape)", "content": {"application/json": {"schema": {"anyOf": [
            {"$ref": "#/components/schemas/Error"},
            {"$ref": "#/components/schemas/FrameworkError"}
        ]}}}},
        "405": {
            "description": "Known path, other method. Not listed per operation: any method an operation is not documented for gets it.",
            "headers": {"Allow": {"description": "The methods the path has", "required": true, "schema": {"type": "string"}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FrameworkError"}}}
        },
        "409": plain("Conversation already has participants"),
        "413": plain("Payload too large (over 1 MiB)"),
        "503": {
            "description": "Database unavailable; nothing was written. Retry after the given seconds.",
            "headers": {"Retry-After": {"required": true, "schema": {"type": "integer", "minimum": 1}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        }
    });
    (schemas, responses)
}

fn build() -> Value {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let mut paths = Map::new();
    for r in ROUTES {
        let d = (r.doc)(&mut g);
        let mut params: Vec<Value> = r
            .param_names()
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": bodies::path_param_max(name), "pattern": super::input::NO_NUL_PATTERN}}))
            .collect();
        let has_path_params = !params.is_empty();
        if let Some(q) = &d.query {
            params.extend(query_parameters(q));
        }
        let mut responses = d.responses;
        if let Some(ok) = responses.get_mut("200")
            && let Some(schema) = ok.pointer("/content/application~1json/schema")
        {
            let batch = schema.get("type").and_then(Value::as_str) == Some("array");
            let links = links_of(r.endpoint, batch);
            if !links.is_empty() {
                ok["links"] = Value::Object(links);
            }
        }
        let err = |status: &str| json!({"$ref": format!("#/components/responses/{status}")});
        // The operational endpoints answer none of the errors of §9.
        if r.auth != Auth::None {
            let mut statuses: Vec<String> = Vec::new();
            if d.body.is_some() || d.query.is_some() || has_path_params {
                statuses.push("400".into());
            }
            statuses.push("401".into());
            statuses.extend(r.extra_errors.iter().map(u16::to_string));
            if d.body.is_some() {
                statuses.push("413".into());
            }
            statuses.push("503".into());
            for status in statuses {
                responses.insert(status.clone(), err(&status));
            }
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
        if let Some(s) = d.body {
            op["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": s}}});
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method.to_lowercase()] = op;
    }
    let mut schemas = g.take_definitions(true);
    let (errors, responses) = error_components();
    schemas.extend(errors);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "messaging",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "REST edge of the real-time delivery service. Literal path segments are case-insensitive and a trailing slash is optional. Bodies are read as JSON whatever their Content-Type. A known path called with a method it has no operation for answers 405 with an Allow header (components/responses/405); an unknown path answers 404 in the framework error shape."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
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
    fn the_document_is_sent_as_documented() {
        super::super::api::tests::documented_as_sent(super::super::ops::Document(document()));
    }

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
        assert!(
            !text.contains("Nullable_"),
            "a nullable schema was referenced"
        );
        for name in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = name.split('"').next().unwrap_or_default();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling $ref {name}"
            );
        }
    }

    /// A `$ref` to a component schema, resolved.
    fn resolve<'a>(doc: &'a Value, s: &'a Value) -> &'a Value {
        match s["$ref"].as_str() {
            Some(r) => &doc["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
            None => s,
        }
    }

    fn request<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
        resolve(
            doc,
            &doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"],
        )
    }

    #[test]
    fn limits_and_required_fields_come_from_the_parsing_types() {
        use crate::service::limits::*;
        let doc = document();
        let join = request(doc, "post", "/messaging/connections");
        assert_eq!(join["type"], "array");
        assert_eq!(join["maxItems"], MAX_BATCH);
        let item = resolve(doc, &join["items"]);
        assert_eq!(item["properties"]["socketId"]["maxLength"], MAX_SOCKET_ID);
        assert_eq!(item["properties"]["socketId"]["minLength"], 1);
        assert_eq!(
            item["properties"]["conversationId"]["maxLength"],
            MAX_ROOM_ID
        );
        assert_eq!(item["required"], json!(["conversationId", "socketId"]));
        assert_eq!(
            item["properties"]["displayName"],
            json!({"type": ["string", "null"], "maxLength": MAX_DISPLAY_NAME, "pattern": "^[^\\u0000]*$"})
        );
        let set_name = request(doc, "post", "/messaging/connections/setName");
        assert_eq!(set_name["required"], json!(["socketId", "name"]));
        assert_eq!(
            set_name["properties"]["name"]["maxLength"],
            MAX_DISPLAY_NAME
        );
        assert!(set_name["properties"]["name"].get("minLength").is_none());
        let send = resolve(
            doc,
            &request(doc, "post", "/messaging/messages/send")["items"],
        );
        assert_eq!(send["required"], json!(["conversationId", "content"]));
        assert_eq!(
            send["properties"]["content"]["maxLength"],
            MAX_CONTENT_BYTES
        );
        let post = resolve(doc, &request(doc, "post", "/messaging/messages")["items"]);
        assert_eq!(post["required"], json!(["content"]));
        let conv = resolve(
            doc,
            &request(doc, "post", "/messaging/conversations")["items"],
        );
        assert!(
            conv["properties"]["allowAnonymousPosts"]["enum"]
                .as_array()
                .is_some_and(|e| e.contains(&json!(1)))
        );
        let create = request(doc, "post", "/messaging/notifications/create");
        assert_eq!(create["properties"]["peopleIds"]["maxItems"], MAX_BATCH);
        assert_eq!(
            create["properties"]["peopleIds"]["items"]["maxLength"],
            MAX_ID
        );
        let react = request(doc, "post", "/messaging/messages/{messageId}/reactions");
        assert_eq!(react["properties"]["emoji"]["maxLength"], MAX_EMOJI);
        // Query strings: one parameter per field, with its limits.
        let params = |path: &str| doc["paths"][path]["get"]["parameters"].clone();
        let page = params("/messaging/conversations/messages/{contentType}/{contentId}");
        let limit = page
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "limit"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(limit["in"], "query");
        assert_eq!(limit["schema"]["maximum"], MAX_PAGE_SIZE);
        assert_eq!(limit["schema"]["default"], DEFAULT_PAGE_SIZE);
        let ids = params("/messaging/conversations/timeline/ids");
        assert_eq!(ids[0]["name"], "ids");
        assert_eq!(ids[0]["schema"]["maxItems"], MAX_BATCH);
        assert_eq!(ids[0]["explode"], false);
        let since = params("/messaging/messages/catchup/{churchId}/{conversationId}");
        assert_eq!(since[2]["name"], "since");
    }

    #[test]
    fn statuses_security_links_and_path_limits() {
        use crate::service::limits::*;
        let doc = document();
        let op = |method: &str, path: &str| doc["paths"][path][method].clone();
        let codes = |method: &str, path: &str| {
            let mut c: Vec<String> = op(method, path)["responses"]
                .as_object()
                .map(|r| r.keys().cloned().collect())
                .unwrap_or_default();
            c.sort();
            c
        };
        assert_eq!(
            codes("post", "/messaging/privatemessages"),
            ["200", "400", "401", "404", "409", "413", "503"]
        );
        assert_eq!(
            codes("post", "/messaging/messages/send"),
            ["200", "400", "401", "403", "404", "413", "503"]
        );
        assert_eq!(
            codes("get", "/messaging/privatemessages"),
            ["200", "401", "503"]
        );
        assert_eq!(codes("get", "/health"), ["200"]);
        assert_eq!(codes("get", "/ready"), ["200", "503"]);
        let unavailable = &doc["components"]["responses"]["503"];
        assert_eq!(unavailable["headers"]["Retry-After"]["required"], true);
        assert_eq!(
            doc["components"]["responses"]["405"]["headers"]["Allow"]["required"],
            true
        );
        // Bearer where a token is needed or accepted.
        assert_eq!(
            op("get", "/messaging/privatemessages")["security"],
            json!([{"bearer": []}])
        );
        assert_eq!(
            op("post", "/messaging/messages/send")["security"],
            json!([{}, {"bearer": []}])
        );
        assert!(op("get", "/health").get("security").is_none());
        // Path parameters carry the limits the server enforces.
        let params = op(
            "delete",
            "/messaging/connections/{churchId}/{roomId}/{socketId}",
        )["parameters"]
            .clone();
        let max: Vec<&Value> = params
            .as_array()
            .map(|p| p.iter().map(|p| &p["schema"]["maxLength"]).collect())
            .unwrap_or_default();
        assert_eq!(
            max,
            [&json!(MAX_ID), &json!(MAX_ROOM_ID), &json!(MAX_SOCKET_ID)]
        );
        // Links: a created conversation's id feeds the operations that take it, and every
        // link names a real operation and its real parameters.
        let links = &op("post", "/messaging/conversations/start")["responses"]["200"]["links"];
        assert_eq!(
            links["ConversationsGet"]["parameters"],
            json!({"churchId": "$response.body#/churchId", "id": "$response.body#/id"})
        );
        let batch = &op("post", "/messaging/conversations")["responses"]["200"]["links"];
        assert_eq!(
            batch["MessagesByConversation"]["parameters"]["conversationId"],
            "$response.body#/0/id"
        );
        let ops: Vec<&Value> = doc["paths"]
            .as_object()
            .map(|p| {
                p.values()
                    .flat_map(|o| o.as_object().into_iter().flat_map(|o| o.values()))
                    .collect()
            })
            .unwrap_or_default();
        let mut seen = 0;
        for o in &ops {
            let Some(links) = o["responses"]["200"]["links"].as_object() else {
                continue;
            };
            for link in links.values() {
                let target = ops
                    .iter()
                    .find(|t| t["operationId"] == link["operationId"])
                    .unwrap_or_else(|| panic!("no operation {}", link["operationId"]));
                for name in link["parameters"]
                    .as_object()
                    .into_iter()
                    .flat_map(|p| p.keys())
                {
                    assert!(
                        target["parameters"]
                            .as_array()
                            .is_some_and(|p| p.iter().any(|p| p["name"] == *name)),
                        "{} has no parameter {name}",
                        link["operationId"]
                    );
                }
                seen += 1;
            }
        }
        assert!(seen >= 20, "{seen} links");
    }

    #[test]
    fn no_schema_is_declared_twice() {
        let doc = document();
        let schemas = doc["components"]["schemas"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        // schemars names a second type with a taken name `Name2`, `Name3`, …: a request type
        // must have one name only. (`ConversationWithMessages2` is the same generic response
        // type over another message type: a different schema.)
        for name in schemas.keys() {
            let base = name.trim_end_matches(|c: char| c.is_ascii_digit());
            assert!(
                base == name || schemas[base] != schemas[name],
                "{name} duplicates {base}"
            );
        }
        let bodies: Vec<&Value> = schemas.values().collect();
        for (i, a) in bodies.iter().enumerate() {
            for b in &bodies[i + 1..] {
                assert_ne!(a, b, "the same schema is declared under two names");
            }
        }
        // The request types are the only declarations of the bodies.
        for name in [
            "JoinItem",
            "SetName",
            "PostItem",
            "SendItem",
            "NewNotifications",
        ] {
            assert!(schemas.contains_key(name), "{name}");
        }
    }
}
