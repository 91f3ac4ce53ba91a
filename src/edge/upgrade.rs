//! The WebSocket handshake (RFC 6455 §4.2) on any path; the upgraded connection is handed
//! to the hub's socket task.
//!
//! Header names are case-insensitive (the `http` crate), and so are the `Upgrade` and
//! `Connection` tokens, which may come in lists (`Connection: keep-alive, Upgrade`, as
//! Firefox sends). Extensions are declined by not answering them: an offered
//! `permessage-deflate` is left out of the response, so the client sends plain frames and
//! any frame with a reserved bit set is a protocol error (1002).
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::hub::{Hub, frame};

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

pub fn is_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, header::UPGRADE, "websocket")
}

/// A refused handshake; `Sec-WebSocket-Version` tells the client the version we speak.
fn refuse(status: StatusCode, why: &'static str) -> Response {
    let mut resp = (status, why).into_response();
    resp.headers_mut().insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    resp
}

/// A `Sec-WebSocket-Key` must be the base64 of 16 bytes (§4.1).
fn valid_key(key: &HeaderValue) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes().trim_ascii())
        .is_ok_and(|k| k.len() == 16)
}

/// `positions=1` in the query opts the socket into positions (§5.6); exactly that value.
fn wants_positions(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|pair| pair == "positions=1"))
}

pub fn upgrade(hub: Arc<Hub>, mut req: Request) -> Response {
    let positions = wants_positions(req.uri().query());
    let headers = req.headers();
    // §4.4: another version gets 426 and the version we speak, so the client may retry.
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"13");
    if !version_ok {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported websocket version",
        );
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| valid_key(k))
        .cloned();
    let (Some(key), true, true) = (
        key,
        req.method() == Method::GET,
        has_token(headers, header::CONNECTION, "upgrade"),
    ) else {
        return refuse(StatusCode::BAD_REQUEST, "bad websocket handshake");
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
            Ok(stream) => hub.spawn_socket(stream, parts.read_buf, permit, positions),
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let accept = frame::accept_key(key.as_bytes().trim_ascii());
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_positions_1_opts_in() {
        use super::wants_positions as w;
        assert!(w(Some("positions=1")));
        assert!(w(Some("a=b&positions=1&c")));
        for q in [
            None,
            Some(""),
            Some("positions=true"),
            Some("positions=10"),
            Some("positions"),
            Some("xpositions=1"),
        ] {
            assert!(!w(q), "{q:?}");
        }
    }
}
