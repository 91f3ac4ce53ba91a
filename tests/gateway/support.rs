//! What the gateway tests share: starting the binary behind the emulator on a test database,
//! a REST client for the fronts, SigV4-signed calls, and reading a socket's frames up to a
//! marker (frames on one socket arrive in order, so everything sent before the marker has
//! arrived once the marker has).
#![allow(dead_code)]

use std::time::Duration;

use futures::SinkExt;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::emulator::{AwsCredentials, Gateway, GatewayOptions, INSTANCE_HEADER, Payload};
use crate::helpers::{SECRET, TestDb, Ws, claims};

/// How long a test waits for anything.
pub const WAIT: Duration = Duration::from_secs(15);

pub const CE: &str = "Content__Edit";

/// Everything but RFC 3986's unreserved characters.
pub const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_messaging")
}

pub fn options(db_url: &str, extra_env: &[(&str, &str)]) -> GatewayOptions {
    let mut o = GatewayOptions::new(binary(), db_url, SECRET);
    o.instances = 2;
    o.extra_env = extra_env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    o
}

/// Two instances of the binary behind the emulator, on `db`.
pub async fn start(db: &TestDb, extra_env: &[(&str, &str)]) -> Gateway {
    Gateway::start(options(&db.url, extra_env))
        .await
        .expect("gateway starts")
}

pub fn token(church: &str, person: &str, perms: &[&str]) -> String {
    messaging::auth::TokenKeys::new(SECRET)
        .mint(&claims(church, person, perms))
        .expect("mint")
}

/// A REST client for one front of a gateway.
pub struct Rest {
    pub base: String,
    pub http: reqwest::Client,
}

impl Rest {
    pub fn new(gateway: &Gateway, payload: Payload) -> Self {
        Self {
            base: gateway.rest_url_for(payload),
            http: reqwest::Client::new(),
        }
    }

    /// Status, headers and body (JSON, or a string if it is not JSON, or null if empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        instance: Option<usize>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(i) = instance {
            req = req.header(INSTANCE_HEADER, i.to_string());
        }
        read(req.send().await.expect("request")).await
    }

    pub async fn raw(
        &self,
        req: reqwest::RequestBuilder,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        read(req.send().await.expect("request")).await
    }

    pub async fn get(
        &self,
        path: &str,
        token: Option<&str>,
        instance: Option<usize>,
    ) -> (u16, Value) {
        let (s, _, b) = self
            .call(reqwest::Method::GET, path, token, None, instance)
            .await;
        (s, b)
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        instance: Option<usize>,
    ) -> (u16, Value) {
        let (s, _, b) = self
            .call(reqwest::Method::POST, path, token, Some(body), instance)
            .await;
        (s, b)
    }

    pub async fn delete(
        &self,
        path: &str,
        token: Option<&str>,
        instance: Option<usize>,
    ) -> (u16, Value) {
        let (s, _, b) = self
            .call(reqwest::Method::DELETE, path, token, None, instance)
            .await;
        (s, b)
    }

    /// An anonymous-public conversation (`streamingLive`), created by a Content Edit holder
    /// of `church`.
    pub async fn public_conversation(&self, church: &str) -> String {
        let admin = token(church, "ADMIN", &[CE]);
        let (s, body) = self
            .post(
                "/messaging/conversations",
                Some(&admin),
                &json!([{"contentType": "streamingLive", "contentId": "S1", "visibility": "public", "allowAnonymousPosts": true}]),
                None,
            )
            .await;
        assert_eq!(s, 200, "create conversation: {body}");
        body[0]["id"].as_str().expect("conversation id").to_string()
    }

    /// Joins one socket to a room; panics unless 200. Returns the row.
    pub async fn join(
        &self,
        room: &str,
        socket: &str,
        name: &str,
        instance: Option<usize>,
    ) -> Value {
        let (s, body) = self
            .post(
                "/messaging/connections",
                None,
                &json!([{"conversationId": room, "socketId": socket, "displayName": name}]),
                instance,
            )
            .await;
        assert_eq!(s, 200, "join {socket}: {body}");
        body[0].clone()
    }

    /// The rows of a room (its `socketId`s).
    pub async fn room_sockets(&self, church: &str, room: &str) -> Vec<String> {
        let (s, body) = self
            .get(
                &format!("/messaging/connections/{church}/{room}"),
                None,
                None,
            )
            .await;
        assert_eq!(s, 200, "list room: {body}");
        body.as_array()
            .expect("array")
            .iter()
            .map(|r| r["socketId"].as_str().expect("socketId").to_string())
            .collect()
    }
}

pub async fn read(resp: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, headers, body)
}

/// A socket through the gateway, past `getId` (its `id` is the connection id).
pub async fn socket(gateway: &Gateway) -> Ws {
    let mut ws = Ws::connect(&gateway.ws_url()).await;
    ws.get_id().await;
    ws
}

/// The frames the socket received before a marker the emulator writes to it now.
pub async fn drain(gateway: &Gateway, ws: &mut Ws) -> Vec<Value> {
    let marker = format!("marker-{}", crate::emulator::events::random_id(6));
    let text = json!({"churchId": "", "conversationId": "", "action": "__marker", "data": marker});
    assert!(
        gateway.push(&ws.id, &text.to_string()).await,
        "socket {} is open",
        ws.id
    );
    let mut frames = Vec::new();
    loop {
        let f = ws.frame().await;
        if f["action"] == "__marker" && f["data"] == marker.as_str() {
            return frames;
        }
        frames.push(f);
    }
}

/// Frames with this action.
pub fn with_action<'a>(frames: &'a [Value], action: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["action"] == action).collect()
}

/// Reads until the server's close frame and answers it, as a browser does at once
/// (tungstenite queues its answer until the stream is polled again); returns the code.
pub async fn closed_by_server(ws: &mut Ws) -> Option<u16> {
    let code = ws.close_code().await;
    let _ = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut ws.stream)).await;
    code
}

/// Closes a client socket with a close frame (code 1000).
pub async fn close(ws: &mut Ws) {
    ws.stream
        .send(Message::Close(None))
        .await
        .expect("send close");
}

/// The management URL of one connection, its id percent-encoded.
pub fn connection_url(gateway: &Gateway, connection_id: &str) -> String {
    format!(
        "{}/@connections/{}",
        gateway.management_url(),
        utf8_percent_encode(connection_id, PATH_SEGMENT)
    )
}

/// Sends a request signed with `aws_sigv4` as a client would, with these settings and
/// credentials, at `time`; `body_sent` may differ from `body_signed` (tampering).
pub async fn signed(
    method: &str,
    url: &str,
    body_signed: &[u8],
    body_sent: &[u8],
    creds: &AwsCredentials,
    settings: aws_sigv4::http_request::SigningSettings,
    time: std::time::SystemTime,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let headers =
        crate::emulator::management::sign_headers(creds, method, url, body_signed, settings, time)
            .expect("sign");
    let mut req = reqwest::Client::new().request(method.parse().expect("method"), url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    read(req.body(body_sent.to_vec()).send().await.expect("request")).await
}

/// A signed POST with the default settings, now.
pub async fn signed_post(url: &str, body: &[u8], creds: &AwsCredentials) -> u16 {
    signed(
        "POST",
        url,
        body,
        body,
        creds,
        aws_sigv4::http_request::SigningSettings::default(),
        std::time::SystemTime::now(),
    )
    .await
    .0
}

/// The TCP ports a process listens on (its sockets in `/proc/{pid}/fd` that
/// `/proc/net/tcp{,6}` lists in state LISTEN).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy().to_string();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A = LISTEN), inode
            let (Some(local), Some(&"0A"), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            if !inodes.contains(*inode) {
                continue;
            }
            if let Some(port) = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}
