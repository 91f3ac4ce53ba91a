//! The JSON events API Gateway and EventBridge hand a Lambda function, built the way AWS
//! builds them (shapes checked against `aws_lambda_events` 1.2 and its fixtures):
//!
//! - WebSocket API: `CONNECT` (the upgrade's headers and query), `MESSAGE` (no headers, the
//!   text as `body`), `DISCONNECT` (`disconnectStatusCode`, `disconnectReason`). None of them
//!   has `httpMethod` or `path`, so `lambda_http`, which tries REST v1 first, then HTTP v2,
//!   then ALB, then WebSocket, takes them as WebSocket events.
//! - REST API proxy integration (payload 1.0): `path` without the stage, `requestContext.path`
//!   with it.
//! - HTTP API (payload 2.0): `rawPath` with the stage (a stage other than `$default`).
//! - EventBridge's scheduled event and a direct invocation (`{"method","request"}`).
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

/// The account every event names.
pub const ACCOUNT_ID: &str = "123456789012";

/// What an event is, from its shape (the same order of tests `lambda_http` applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Connect,
    Message,
    Disconnect,
    /// REST API, payload 1.0.
    Rest,
    /// HTTP API, payload 2.0.
    Http,
    Scheduled,
    /// `{"method","request"}`.
    Direct,
    Other,
}

impl EventKind {
    pub fn of(event: &Value) -> Self {
        let ctx = &event["requestContext"];
        match ctx["eventType"].as_str() {
            Some("CONNECT") => return Self::Connect,
            Some("MESSAGE") => return Self::Message,
            Some("DISCONNECT") => return Self::Disconnect,
            _ => {}
        }
        if event["httpMethod"].is_string() {
            Self::Rest
        } else if event["version"] == "2.0" && ctx["http"].is_object() {
            Self::Http
        } else if event["source"] == "aws.events" {
            Self::Scheduled
        } else if event["method"].is_string() {
            Self::Direct
        } else {
            Self::Other
        }
    }
}

/// Where the events come from: the API, its stage and the host the client used.
#[derive(Debug, Clone)]
pub struct ApiContext {
    pub api_id: String,
    pub stage: String,
    /// `requestContext.domainName` (the host, without port, as the brief's examples show).
    pub domain_name: String,
}

/// A random id of API Gateway's look: standard base64 of `bytes` random bytes.
pub fn random_id(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// A request id in UUID form.
pub fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `requestTime`: `07/Dec/2026:19:00:00 +0000`.
pub fn request_time(at: DateTime<Utc>) -> String {
    at.format("%d/%b/%Y:%H:%M:%S +0000").to_string()
}

/// Headers as API Gateway passes them: `headers` (the last value of each name) and
/// `multiValueHeaders` (every value), or `null` for both when there are none.
pub fn header_maps(headers: &[(String, String)]) -> (Value, Value) {
    if headers.is_empty() {
        return (Value::Null, Value::Null);
    }
    let mut single = Map::new();
    let mut multi: Map<String, Value> = Map::new();
    for (name, value) in headers {
        single.insert(name.clone(), Value::String(value.clone()));
        match multi.get_mut(name) {
            Some(Value::Array(values)) => values.push(Value::String(value.clone())),
            _ => {
                multi.insert(name.clone(), json!([value]));
            }
        }
    }
    (Value::Object(single), Value::Object(multi))
}

/// A raw query string as `(name, value)` pairs, percent-decoded (`+` kept, as API Gateway
/// keeps it in path-style decoding).
pub fn query_pairs(raw_query: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = raw_query.filter(|q| !q.is_empty()) else {
        return Vec::new();
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `queryStringParameters` (last value) and `multiValueQueryStringParameters` for payload 1.0
/// and WebSocket events, `null` when there is no query.
pub fn query_maps(pairs: &[(String, String)]) -> (Value, Value) {
    header_maps(pairs)
}

/// A body as API Gateway passes it: text as is, anything else base64 (and the flag set).
pub fn body_field(body: &[u8]) -> (Option<String>, bool) {
    if body.is_empty() {
        return (None, false);
    }
    match std::str::from_utf8(body) {
        Ok(text) => (Some(text.to_string()), false),
        Err(_) => (
            Some(base64::engine::general_purpose::STANDARD.encode(body)),
            true,
        ),
    }
}

/// Who is on the other end of a WebSocket connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub connection_id: String,
    pub connected_at: DateTime<Utc>,
    pub source_ip: String,
    pub user_agent: Option<String>,
}

fn ws_context(api: &ApiContext, peer: &Peer, route_key: &str, event_type: &str) -> Value {
    let now = Utc::now();
    let request_id = random_id(11);
    json!({
        "routeKey": route_key,
        "eventType": event_type,
        "extendedRequestId": request_id,
        "requestTime": request_time(now),
        "messageDirection": "IN",
        "stage": api.stage,
        "connectedAt": peer.connected_at.timestamp_millis(),
        "requestTimeEpoch": now.timestamp_millis(),
        "identity": {"sourceIp": peer.source_ip, "userAgent": peer.user_agent},
        "requestId": request_id,
        "domainName": api.domain_name,
        "connectionId": peer.connection_id,
        "apiId": api.api_id,
    })
}

/// `$connect`: the upgrade request's headers (plus the `X-Forwarded-*` API Gateway adds) and
/// its query.
pub fn ws_connect(
    api: &ApiContext,
    peer: &Peer,
    headers: &[(String, String)],
    raw_query: Option<&str>,
) -> Value {
    let mut headers = headers.to_vec();
    headers.push(("X-Forwarded-For".into(), peer.source_ip.clone()));
    headers.push(("X-Forwarded-Proto".into(), "http".into()));
    let (single, multi) = header_maps(&headers);
    let (query, multi_query) = query_maps(&query_pairs(raw_query));
    let mut event = json!({
        "headers": single,
        "multiValueHeaders": multi,
        "requestContext": ws_context(api, peer, "$connect", "CONNECT"),
        "isBase64Encoded": false,
    });
    if !query.is_null() {
        event["queryStringParameters"] = query;
        event["multiValueQueryStringParameters"] = multi_query;
    }
    event
}

/// `$default`: one text message from the client, as `body`. AWS sends no headers here.
pub fn ws_message(api: &ApiContext, peer: &Peer, body: &str) -> Value {
    let mut ctx = ws_context(api, peer, "$default", "MESSAGE");
    ctx["messageId"] = Value::String(random_id(11));
    json!({
        "requestContext": ctx,
        "body": body,
        "isBase64Encoded": false,
    })
}

/// `$disconnect`, with the close code and reason API Gateway reports.
pub fn ws_disconnect(api: &ApiContext, peer: &Peer, code: u16, reason: &str) -> Value {
    let mut ctx = ws_context(api, peer, "$disconnect", "DISCONNECT");
    ctx["disconnectStatusCode"] = json!(code);
    ctx["disconnectReason"] = json!(reason);
    let headers = [
        ("Host".to_string(), api.domain_name.clone()),
        ("x-api-key".to_string(), String::new()),
        ("X-Forwarded-For".to_string(), String::new()),
        ("x-restapi".to_string(), String::new()),
    ];
    let (single, multi) = header_maps(&headers);
    json!({
        "headers": single,
        "multiValueHeaders": multi,
        "requestContext": ctx,
        "isBase64Encoded": false,
    })
}

/// One HTTP request as a REST or HTTP API front received it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    /// The path as received, percent-encoded, stage included (`/dev/messaging/...`).
    pub raw_path: String,
    pub raw_query: Option<String>,
    /// Names as received (lower case from hyper), in order, repeated names repeated.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub source_ip: String,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the stage prefix: `/messaging/...`, or `/` for the stage root.
    pub fn path_without_stage(&self, stage: &str) -> String {
        let prefix = format!("/{stage}");
        let rest = self
            .raw_path
            .strip_prefix(&prefix)
            .unwrap_or(&self.raw_path);
        if rest.is_empty() {
            "/".into()
        } else {
            rest.into()
        }
    }
}

/// A REST API (payload 1.0) proxy event for a `/{proxy+}` resource.
pub fn rest_v1(api: &ApiContext, req: &HttpRequest) -> Value {
    let now = Utc::now();
    let path = req.path_without_stage(&api.stage);
    let (resource, path_parameters) = if path == "/" {
        ("/".to_string(), Value::Null)
    } else {
        (
            "/{proxy+}".to_string(),
            json!({"proxy": decode(path.trim_start_matches('/'))}),
        )
    };
    // API Gateway appends the caller to X-Forwarded-For.
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("x-forwarded-for"))
        .cloned()
        .collect();
    let forwarded = match req.header("x-forwarded-for") {
        Some(prior) => format!("{prior}, {}", req.source_ip),
        None => req.source_ip.clone(),
    };
    headers.push(("X-Forwarded-For".into(), forwarded));
    headers.push(("X-Forwarded-Proto".into(), "http".into()));
    let (single, multi) = header_maps(&headers);
    let (query, multi_query) = query_maps(&query_pairs(req.raw_query.as_deref()));
    let (body, base64) = body_field(&req.body);
    let request_id = uuid();
    json!({
        "resource": resource,
        "path": path,
        "httpMethod": req.method,
        "headers": single,
        "multiValueHeaders": multi,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": path_parameters,
        "stageVariables": null,
        "requestContext": {
            "resourceId": "proxy1",
            "resourcePath": resource,
            "httpMethod": req.method,
            "extendedRequestId": random_id(11),
            "requestTime": request_time(now),
            "path": format!("/{}{}", api.stage, path),
            "accountId": ACCOUNT_ID,
            "protocol": "HTTP/1.1",
            "stage": api.stage,
            "domainPrefix": api.api_id,
            "requestTimeEpoch": now.timestamp_millis(),
            "requestId": request_id,
            "identity": {
                "cognitoIdentityPoolId": null,
                "accountId": null,
                "cognitoIdentityId": null,
                "caller": null,
                "sourceIp": req.source_ip,
                "principalOrgId": null,
                "accessKey": null,
                "cognitoAuthenticationType": null,
                "cognitoAuthenticationProvider": null,
                "userArn": null,
                "userAgent": req.header("user-agent"),
                "user": null,
            },
            "domainName": api.domain_name,
            "apiId": api.api_id,
        },
        "body": body,
        "isBase64Encoded": base64,
    })
}

/// An HTTP API (payload 2.0) event for the `$default` route of a named stage: `rawPath`
/// keeps the stage, cookies move out of the headers, repeated headers and query values are
/// joined with commas.
pub fn http_v2(api: &ApiContext, req: &HttpRequest) -> Value {
    let now = Utc::now();
    let mut cookies: Vec<String> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut values: Map<String, Value> = Map::new();
    for (name, value) in &req.headers {
        let name = name.to_ascii_lowercase();
        if name == "cookie" {
            cookies.extend(
                value
                    .split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(String::from),
            );
            continue;
        }
        match values.get_mut(&name) {
            Some(Value::String(joined)) => {
                joined.push(',');
                joined.push_str(value);
            }
            _ => {
                names.push(name.clone());
                values.insert(name, Value::String(value.clone()));
            }
        }
    }
    let forwarded = match values.get("x-forwarded-for").and_then(Value::as_str) {
        Some(prior) => format!("{prior}, {}", req.source_ip),
        None => req.source_ip.clone(),
    };
    values.insert("x-forwarded-for".into(), Value::String(forwarded));
    values.insert("x-forwarded-proto".into(), Value::String("http".into()));
    let mut query: Map<String, Value> = Map::new();
    for (k, v) in query_pairs(req.raw_query.as_deref()) {
        match query.get_mut(&k) {
            Some(Value::String(joined)) => {
                joined.push(',');
                joined.push_str(&v);
            }
            _ => {
                query.insert(k, Value::String(v));
            }
        }
    }
    let (body, base64) = body_field(&req.body);
    let request_id = random_id(11);
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": req.raw_path,
        "rawQueryString": req.raw_query.clone().unwrap_or_default(),
        "headers": values,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": api.api_id,
            "domainName": api.domain_name,
            "domainPrefix": api.api_id,
            "http": {
                "method": req.method,
                "path": req.raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": req.source_ip,
                "userAgent": req.header("user-agent").unwrap_or_default(),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": api.stage,
            "time": request_time(now),
            "timeEpoch": now.timestamp_millis(),
        },
        "isBase64Encoded": base64,
    });
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    if !query.is_empty() {
        event["queryStringParameters"] = Value::Object(query);
    }
    if let Some(body) = body {
        event["body"] = Value::String(body);
    }
    event
}

/// EventBridge's scheduled event (`rate(...)` or `cron(...)` rule).
pub fn scheduled(region: &str) -> Value {
    json!({
        "version": "0",
        "id": uuid(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "region": region,
        "resources": [format!("arn:aws:events:{region}:{ACCOUNT_ID}:rule/messaging-sweep")],
        "detail": {},
    })
}

/// A direct invocation of one gRPC method (§5.5): `{"method": "messaging.v1.Delivery/...",
/// "request": {...}}`, the request in protobuf's JSON mapping.
pub fn direct(method: &str, request: Value) -> Value {
    json!({"method": method, "request": request})
}
