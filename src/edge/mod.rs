//! The HTTP/WebSocket edge: REST under `/messaging` turned into in-process calls on the
//! service layer, WebSocket upgrades on any path, and the operational endpoints.
pub mod api;
pub mod blocked_ips;
pub mod bodies;
pub mod connections;
pub mod conversations;
mod error;
pub mod input;
pub mod messages;
pub mod notifications;
pub mod openapi;
pub mod ops;
pub mod private_messages;
pub mod routes;
pub mod serve;
pub mod static_files;
pub mod upgrade;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::json;

use crate::auth::{Caller, TokenKeys};
use crate::error::AppError;
use crate::service::Services;
use crate::service::limits::MAX_BODY;
pub use error::error_response;
use routes::Auth;

/// What every request handler can reach.
pub struct EdgeState {
    pub services: Services,
    pub keys: TokenKeys,
    pub trust_proxy: bool,
    /// Development mode (the demo token endpoint).
    pub dev: bool,
    pub ready: Arc<AtomicBool>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The OpenAPI document (`openapi::document`), built once.
    pub openapi: &'static serde_json::Value,
}

/// One REST request, after routing, the body-size check and authentication (an operational
/// endpoint's is empty: it reads nothing of the request).
pub struct Ctx<'a> {
    pub caller: Caller,
    pub client_ip: Option<String>,
    /// Path parameters in path order, percent-decoded.
    pub params: Vec<String>,
    query: Option<String>,
    pub body: Bytes,
    pub state: &'a EdgeState,
}

impl Ctx<'_> {
    /// The service layer the handlers call.
    pub fn svc(&self) -> &Services {
        &self.state.services
    }

    /// The `i`-th path parameter.
    pub fn param(&self, i: usize) -> &str {
        self.params.get(i).map(String::as_str).unwrap_or_default()
    }

    /// The query string as its type (`edge::bodies`); `Invalid query parameter` naming the
    /// first malformed one.
    pub fn query<T: input::Query>(&self) -> Result<T, AppError> {
        input::query(self.query.as_deref())
    }

    /// The body as its type (`edge::bodies`), with the errors of §9.
    pub fn body<T: serde::de::DeserializeOwned>(&self) -> Result<T, AppError> {
        input::parse(&self.body)
    }
}

pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        )],
        bytes,
    )
        .into_response()
}

pub fn ok_json<T: Serialize + ?Sized>(body: &T) -> Response {
    json_response(StatusCode::OK, body)
}

/// The contract's error shape for routing failures and 500s (§9).
fn framework_error(status: u16, message: &str, path: &str) -> Response {
    let body = json!({"error": {
        "message": message,
        "status": status,
        "timestamp": crate::time::format_ms(crate::time::now_ms()),
        "path": path,
    }});
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    )
}

/// The HTTP port's router: every request goes through `dispatch`, behind CORS (§9).
pub fn http_router(state: Arc<EdgeState>) -> axum::Router {
    axum::Router::new()
        .fallback(dispatch)
        .with_state(state)
        .layer(cors())
        .layer(axum::middleware::from_fn(preflight_no_content))
}

/// The dedicated WebSocket port: any path upgrades; anything else gets 426.
pub fn socket_router(state: Arc<EdgeState>) -> axum::Router {
    axum::Router::new()
        .fallback(
            |State(state): State<Arc<EdgeState>>, req: Request| async move {
                if upgrade::is_websocket(req.headers()) {
                    upgrade::upgrade(state.services.hub.clone(), req)
                } else {
                    json_response(
                        StatusCode::UPGRADE_REQUIRED,
                        &json!({"error": "Upgrade Required"}),
                    )
                }
            },
        )
        .with_state(state)
}

/// CORS of §9: `Access-Control-Allow-Origin: *` on every response; any `OPTIONS` is a
/// preflight answered here with the allowed headers and methods, cached for a day.
fn cors() -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .max_age(std::time::Duration::from_secs(86_400))
        // The answer does not depend on the request's origin or preflight headers.
        .vary([])
}

/// `CorsLayer` answers every `OPTIONS` itself, as a preflight, with `200` and an empty body;
/// the contract says `204`.
async fn preflight_no_content(req: Request, next: axum::middleware::Next) -> Response {
    let preflight = req.method() == Method::OPTIONS;
    let mut resp = next.run(req).await;
    if preflight && resp.status() == StatusCode::OK {
        *resp.status_mut() = StatusCode::NO_CONTENT;
    }
    resp
}

/// The client IP (§1 `TRUST_PROXY`); IPv4-mapped IPv6 is written as dotted IPv4.
fn client_ip(headers: &HeaderMap, peer: Option<SocketAddr>, trust_proxy: bool) -> Option<String> {
    let forwarded = trust_proxy
        .then(|| {
            headers
                .get("x-forwarded-for")?
                .to_str()
                .ok()?
                .split(',')
                .next()
        })
        .flatten()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let ip: IpAddr = match forwarded {
        Some(f) => match f.parse() {
            Ok(ip) => ip,
            Err(_) => return Some(f.chars().take(45).collect()),
        },
        None => peer?.ip(),
    };
    Some(match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or_else(|| v6.to_string(), |v4| v4.to_string()),
        v4 => v4.to_string(),
    })
}

async fn dispatch(State(state): State<Arc<EdgeState>>, req: Request) -> Response {
    if upgrade::is_websocket(req.headers()) {
        return upgrade::upgrade(state.services.hub.clone(), req);
    }
    if req.method() == Method::GET
        && let Some(resp) = static_files::serve(&state, req.uri().path(), req.uri().query())
    {
        return resp;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    respond(&state, req, peer).await
}

/// One REST request, whichever door it came through: routing, the checks of §9, the
/// handler, the errors as responses, and the request's metrics. The HTTP port calls it
/// behind CORS; a door without a socket of its own (a Lambda function) gives it the request
/// it was handed and the client's address.
pub async fn respond(state: &EdgeState, req: Request, peer: Option<SocketAddr>) -> Response {
    let path = req.uri().path().to_string();
    let Some(matched) = routes::find(req.method().as_str(), &path) else {
        return unrouted(req.method().as_str(), &path);
    };
    let pattern = matched.route.path;
    let reads_only = matches!(*req.method(), Method::GET | Method::HEAD);
    let started = std::time::Instant::now();
    let resp = handle(state, matched, &path, req, peer).await;
    if !reads_only {
        // The reply must not overtake the frames this call published (order across nodes).
        state.services.settle().await;
    }
    metrics::histogram!("messaging_http_request_seconds", "route" => pattern)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "messaging_http_requests_total",
        "route" => pattern,
        "status" => resp.status().as_str().to_string()
    )
    .increment(1);
    resp
}

/// `404 Endpoint not found` in the shape of §9, with the CORS header every answer carries:
/// for a route a door does not serve (`/metrics` in gateway mode).
pub fn endpoint_not_found(path: &str) -> Response {
    let mut resp = framework_error(404, "Endpoint not found", path);
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}

/// A request no route takes: `405` with `Allow` when another method has a route for the path
/// (§9), else `404`. Preflights never get here: the CORS layer answers every `OPTIONS`.
fn unrouted(method: &str, path: &str) -> Response {
    let allowed = routes::allowed_methods(path);
    // A path this method has a route for got here because a parameter is not valid
    // percent-encoded UTF-8: no object has such an id.
    let status = if allowed.is_empty() || allowed.contains(&method) {
        404
    } else {
        405
    };
    metrics::counter!(
        "messaging_http_requests_total",
        "route" => "unmatched",
        "status" => status.to_string()
    )
    .increment(1);
    if status == 404 {
        return framework_error(404, "Endpoint not found", path);
    }
    let mut resp = framework_error(405, "Method not allowed", path);
    if let Ok(allow) = HeaderValue::from_str(&allowed.join(", ")) {
        resp.headers_mut().insert(header::ALLOW, allow);
    }
    resp
}

async fn read_body(body: Body) -> Result<Bytes, AppError> {
    match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(AppError::PayloadTooLarge),
        Err(_) => Err(AppError::InvalidJson),
    }
}

async fn handle(
    state: &EdgeState,
    matched: routes::Matched,
    path: &str,
    req: Request,
    peer: Option<SocketAddr>,
) -> Response {
    let endpoint = matched.route.endpoint;
    let ctx = if matched.route.auth == Auth::None {
        // The operational endpoints read nothing of the request, neither its body nor its
        // token: a probe or a scrape is answered whatever it holds.
        Ok(Ctx {
            caller: Caller::Anonymous,
            client_ip: None,
            params: matched.params,
            query: None,
            body: Bytes::new(),
            state,
        })
    } else {
        context(state, matched, req, peer).await
    };
    let result = match ctx {
        Ok(ctx) => routes::call(endpoint, &ctx).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(|e| error_response(e, path))
}

/// The request as its handler sees it, after the checks of §9 that come before its input.
async fn context<'a>(
    state: &'a EdgeState,
    matched: routes::Matched,
    req: Request,
    peer: Option<SocketAddr>,
) -> Result<Ctx<'a>, AppError> {
    let (parts, body) = req.into_parts();
    let raw = read_body(body).await?;
    let auth = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = state.keys.caller_from_header(auth);
    // Endpoint-level authentication (check 3 of §9), before the body is looked at.
    let allowed = match matched.route.auth {
        Auth::None | Auth::Optional => true,
        Auth::Token => caller.claims().is_some(),
        Auth::Permission(p) => caller.claims().is_some_and(|c| c.has_permission(p)),
    };
    if !allowed {
        return Err(AppError::Unauthorized);
    }
    // Path parameters are input too (check 4 of §9).
    if let Some(field) = matched.invalid_param() {
        return Err(AppError::InvalidPath { field });
    }
    Ok(Ctx {
        caller,
        client_ip: client_ip(&parts.headers, peer, state.trust_proxy),
        params: matched.params,
        query: parts.uri.query().map(str::to_string),
        body: raw,
        state,
    })
}
