//! The WebSocket API's front: real WebSocket upgrades on `/{stage}`, each socket given a
//! connection id and turned into `CONNECT` / `MESSAGE` / `DISCONNECT` invocations, and the
//! registry the management API delivers frames through.
//!
//! As API Gateway does: the upgrade is answered only after `$connect` returned 200 (otherwise
//! it is refused with the function's status); each text message is one `$default`
//! invocation (a failed one sends the client `{"message":"Internal server error",…}`); a
//! binary frame closes the socket with 1003; messages over 128 KB or frames over 32 KB close
//! it with 1009; the end of a socket is one `$disconnect` invocation (unless disconnects are
//! being lost, as AWS may lose them), after which `@connections` calls for it get 410.
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::events::{self, Peer};
use super::management::error_response;
use super::{HttpResponse, INSTANCE_HEADER, Shared, lock, respond};

/// API Gateway's WebSocket limits: 128 KB per message, 32 KB per frame.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
pub const MAX_FRAME_BYTES: usize = 32 * 1024;

enum Cmd {
    /// One frame; the answer says whether it was written.
    Frame(Bytes, oneshot::Sender<bool>),
    Close(u16, String),
}

struct Conn {
    tx: mpsc::UnboundedSender<Cmd>,
    peer: Peer,
    last_active_at: DateTime<Utc>,
}

/// What `GET @connections/{id}` tells about a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub connected_at: DateTime<Utc>,
    pub last_active_at: DateTime<Utc>,
    pub source_ip: String,
    pub user_agent: String,
}

/// The life of one socket.
#[derive(Debug, Clone)]
pub struct SocketRecord {
    pub connection_id: String,
    pub opened: Instant,
    pub closed: Option<Instant>,
    /// The code `$disconnect` reports (the client's close code, 1005 without one, 1006 for a
    /// dropped connection, the server's code for a close the gateway started).
    pub close_code: Option<u16>,
    pub close_reason: String,
    /// Whether its `$disconnect` was dropped (`lose_disconnects`).
    pub disconnect_lost: bool,
}

#[derive(Default)]
struct Inner {
    open: HashMap<String, Conn>,
    history: Vec<SocketRecord>,
    next_ids: VecDeque<String>,
    routes: HashMap<String, usize>,
    lose_disconnects: bool,
}

/// The open connections, by connection id.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    /// A fresh connection id: the next one set with [`Registry::push_next_id`], else 16
    /// characters of standard base64 ending in `=` (11 random bytes), like the ids AWS hands
    /// out. Random ids avoid `+` and `/` so that runs are alike; give one explicitly to test
    /// them.
    fn new_id(&self) -> String {
        let mut inner = lock(&self.inner);
        if let Some(id) = inner.next_ids.pop_front() {
            return id;
        }
        loop {
            let id = events::random_id(11);
            let taken = inner.history.iter().any(|r| r.connection_id == id);
            if !taken && !id.contains(['+', '/']) {
                return id;
            }
        }
    }

    /// The id the next socket gets.
    pub fn push_next_id(&self, id: String) {
        lock(&self.inner).next_ids.push_back(id);
    }

    fn register(&self, tx: mpsc::UnboundedSender<Cmd>, peer: Peer) {
        let mut inner = lock(&self.inner);
        inner.history.push(SocketRecord {
            connection_id: peer.connection_id.clone(),
            opened: Instant::now(),
            closed: None,
            close_code: None,
            close_reason: String::new(),
            disconnect_lost: false,
        });
        let last_active_at = peer.connected_at;
        inner.open.insert(
            peer.connection_id.clone(),
            Conn {
                tx,
                peer,
                last_active_at,
            },
        );
    }

    /// Queues `body` as one frame; `None` when the connection is not open. The receiver says
    /// whether it was written.
    pub fn send(&self, id: &str, body: Bytes) -> Option<oneshot::Receiver<bool>> {
        let inner = lock(&self.inner);
        let conn = inner.open.get(id)?;
        let (ack, written) = oneshot::channel();
        conn.tx.send(Cmd::Frame(body, ack)).ok()?;
        Some(written)
    }

    pub fn info(&self, id: &str) -> Option<ConnInfo> {
        let inner = lock(&self.inner);
        let conn = inner.open.get(id)?;
        Some(ConnInfo {
            connected_at: conn.peer.connected_at,
            last_active_at: conn.last_active_at,
            source_ip: conn.peer.source_ip.clone(),
            user_agent: conn.peer.user_agent.clone().unwrap_or_default(),
        })
    }

    /// Closes the socket from the gateway's side (`DELETE @connections`, a binary frame, an
    /// oversized message): from now on the connection is gone for `@connections`. False if it
    /// was not open.
    pub fn close(&self, id: &str, code: u16, reason: &str) -> bool {
        let Some(conn) = lock(&self.inner).open.remove(id) else {
            return false;
        };
        let _ = conn.tx.send(Cmd::Close(code, reason.to_string()));
        true
    }

    fn touch(&self, id: &str) {
        if let Some(conn) = lock(&self.inner).open.get_mut(id) {
            conn.last_active_at = Utc::now();
        }
    }

    fn ended(&self, id: &str, code: u16, reason: &str, lost: bool) {
        let mut inner = lock(&self.inner);
        inner.open.remove(id);
        if let Some(r) = inner
            .history
            .iter_mut()
            .rev()
            .find(|r| r.connection_id == id)
        {
            r.closed = Some(Instant::now());
            r.close_code = Some(code);
            r.close_reason = reason.to_string();
            r.disconnect_lost = lost;
        }
    }

    /// The instance this connection's events go to, if one was chosen.
    pub fn route_of(&self, id: &str) -> Option<usize> {
        lock(&self.inner).routes.get(id).copied()
    }

    pub fn set_route(&self, id: &str, instance: Option<usize>) {
        let mut inner = lock(&self.inner);
        match instance {
            Some(i) => inner.routes.insert(id.to_string(), i),
            None => inner.routes.remove(id),
        };
    }

    pub fn set_lose_disconnects(&self, lose: bool) {
        lock(&self.inner).lose_disconnects = lose;
    }

    fn lose_disconnects(&self) -> bool {
        lock(&self.inner).lose_disconnects
    }

    /// Ids of the open connections.
    pub fn open_ids(&self) -> Vec<String> {
        lock(&self.inner).open.keys().cloned().collect()
    }

    /// Every socket accepted so far, in order.
    pub fn history(&self) -> Vec<SocketRecord> {
        lock(&self.inner).history.clone()
    }
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Serves one request on the WebSocket front: an upgrade on `/{stage}` becomes a socket.
pub async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    peer_addr: SocketAddr,
) -> HttpResponse {
    let stage_path = format!("/{}", shared.api.stage);
    let path = req.uri().path();
    if path != stage_path && path != format!("{stage_path}/") {
        return error_response(403, "ForbiddenException", "Forbidden");
    }
    let upgrade = header(&req, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = header(&req, "connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    let version = header(&req, "sec-websocket-version") == Some("13");
    let key = header(&req, "sec-websocket-key").map(str::to_string);
    let (true, true, true, Method::GET, Some(key)) =
        (upgrade, connection, version, req.method().clone(), key)
    else {
        return respond(
            426,
            &[("content-type", "application/json")],
            json!({"message": "Upgrade Required"}).to_string(),
        );
    };
    let requested = header(&req, INSTANCE_HEADER).and_then(|v| v.parse::<usize>().ok());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str() != INSTANCE_HEADER)
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let query = req.uri().query().map(str::to_string);
    let peer = Peer {
        connection_id: shared.sockets.new_id(),
        connected_at: Utc::now(),
        source_ip: peer_addr.ip().to_canonical().to_string(),
        user_agent: header(&req, "user-agent").map(str::to_string),
    };
    if requested.is_some() {
        shared.sockets.set_route(&peer.connection_id, requested);
    }
    let instance = shared.pick(requested);
    let event = events::ws_connect(&shared.api, &peer, &headers, query.as_deref());
    match shared.invoke(instance, event).await {
        Ok(v) if v["statusCode"].as_u64() == Some(200) => {}
        Ok(v) => {
            let status = v["statusCode"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| (400..600).contains(s))
                .unwrap_or(500);
            let body = v["body"].as_str().unwrap_or_default().to_string();
            return respond(status, &[], body);
        }
        Err(_) => {
            return error_response(502, "InternalServerErrorException", "Internal server error");
        }
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (tx, rx) = mpsc::unbounded_channel();
    shared.sockets.register(tx, peer.clone());
    shared.bump();
    tokio::spawn(run_socket(shared.clone(), on_upgrade, peer, rx));
    let accept = derive_accept_key(key.as_bytes());
    respond(
        101,
        &[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", &accept),
        ],
        Bytes::new(),
    )
}

async fn run_socket(
    shared: Arc<Shared>,
    on_upgrade: OnUpgrade,
    peer: Peer,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let id = peer.connection_id.clone();
    let mut shutdown = shared.shutdown.subscribe();
    let Ok(upgraded) = on_upgrade.await else {
        finish(&shared, &peer, 1006, "Upgrade failed").await;
        return;
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let (mut sink, mut stream) = ws.split();
    let (closing_tx, mut closing_rx) = watch::channel::<Option<(u16, String)>>(None);
    let writer = tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Cmd::Frame(body, ack) => {
                    let msg = match String::from_utf8(body.to_vec()) {
                        Ok(text) => Message::text(text),
                        Err(e) => Message::Binary(e.into_bytes().into()),
                    };
                    let ok = sink.send(msg).await.is_ok();
                    let _ = ack.send(ok);
                }
                Cmd::Close(code, reason) => {
                    let _ = closing_tx.send(Some((code, reason.clone())));
                    let frame = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    break;
                }
            }
        }
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            if let Cmd::Frame(_, ack) = cmd {
                let _ = ack.send(false);
            }
        }
    });
    let dropped = || (1006u16, "Going away".to_string());
    // Set once the gateway closes the socket; the client then has a moment to answer.
    let mut server_close: Option<(u16, String)> = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    let (code, reason) = loop {
        let grace = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            m = stream.next() => m,
            changed = closing_rx.changed(), if server_close.is_none() => {
                if changed.is_ok() {
                    server_close = closing_rx.borrow().clone();
                    deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                }
                continue;
            }
            _ = grace => break server_close.clone().unwrap_or_else(dropped),
            _ = shutdown.wait_for(|stop| *stop) => {
                writer.abort();
                return;
            }
        };
        match next {
            None => break server_close.clone().unwrap_or_else(dropped),
            Some(Ok(Message::Text(text))) => {
                if server_close.is_none() {
                    shared.sockets.touch(&id);
                    let (shared, peer, body) = (shared.clone(), peer.clone(), text.to_string());
                    tokio::spawn(async move { message(shared, peer, body).await });
                }
            }
            Some(Ok(Message::Binary(_))) => {
                if server_close.is_none() {
                    let reason = "Binary frames are not supported";
                    server_close = Some((1003, reason.into()));
                    deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                    shared.sockets.close(&id, 1003, reason);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                break server_close.clone().unwrap_or_else(|| match frame {
                    Some(f) => (u16::from(f.code), f.reason.to_string()),
                    None => (1005, "Client-side close frame status not set".into()),
                });
            }
            Some(Ok(_)) => {}
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_)))
                if server_close.is_none() =>
            {
                let reason = "Message too big";
                server_close = Some((1009, reason.into()));
                deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                shared.sockets.close(&id, 1009, reason);
            }
            Some(Err(_)) => break server_close.clone().unwrap_or_else(dropped),
        }
    };
    drop(stream);
    writer.abort();
    finish(&shared, &peer, code, &reason).await;
}

/// One text message: a `$default` invocation. A failed one makes API Gateway tell the client.
async fn message(shared: Arc<Shared>, peer: Peer, body: String) {
    let instance = shared.pick(shared.sockets.route_of(&peer.connection_id));
    let event = events::ws_message(&shared.api, &peer, &body);
    let outcome = shared.invoke(instance, event).await;
    if outcome.is_err() {
        let text = json!({
            "message": "Internal server error",
            "connectionId": peer.connection_id,
            "requestId": events::random_id(11),
        });
        let _ = shared
            .sockets
            .send(&peer.connection_id, Bytes::from(text.to_string()));
    }
}

/// The socket ended: gone for `@connections`, then `$disconnect` (unless lost).
async fn finish(shared: &Arc<Shared>, peer: &Peer, code: u16, reason: &str) {
    let lost = shared.sockets.lose_disconnects();
    shared
        .sockets
        .ended(&peer.connection_id, code, reason, lost);
    shared.bump();
    if lost {
        return;
    }
    let instance = shared.pick(shared.sockets.route_of(&peer.connection_id));
    let event = events::ws_disconnect(&shared.api, peer, code, reason);
    let _ = shared.invoke(instance, event).await;
}
