//! The WebSocket handshake (RFC 6455 §4.2) on any path; the upgraded connection is handed
//! to the hub's socket task.
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::hub::{Hub, ws};

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

pub fn is_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, header::UPGRADE, "websocket")
}

pub fn upgrade(hub: Arc<Hub>, mut req: Request) -> Response {
    let headers = req.headers();
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let (Some(key), true, true) = (
        key,
        version_ok,
        has_token(headers, header::CONNECTION, "upgrade"),
    ) else {
        let mut resp = (StatusCode::BAD_REQUEST, "bad websocket handshake").into_response();
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return resp;
    };
    // Refused before the handshake: past the cap, an accepted socket would run the
    // process out of file descriptors and fail everyone's next accept or query.
    let Some(permit) = hub.try_reserve() else {
        metrics::counter!("messaging_sockets_refused_total").increment(1);
        let mut resp = super::json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "Too many sockets"}),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
        };
        // Our HTTP/1 server hands hyper a plain `TcpStream`, so this cannot fail.
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            return tracing::error!("websocket upgrade on an unexpected transport");
        };
        // Moved to the socket runtime's reactor by `spawn_socket`.
        match parts.io.into_inner().into_std() {
            Ok(stream) => hub.spawn_socket(stream, parts.read_buf, permit),
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let accept = ws::accept_key(key.as_bytes());
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}
