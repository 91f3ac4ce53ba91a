//! The third door (§5.5): the process serves AWS Lambda invocations instead of listeners.
//! API Gateway holds the browser sockets and sends every event to this one function:
//!
//! - REST (payload 1.0) and HTTP API (2.0) events run through the HTTP edge's own router
//!   (`edge::http_router`: the same routes, parsing, access checks, CORS and error mapping);
//! - WebSocket `CONNECT` / `MESSAGE` / `DISCONNECT` events: the `getId` reply, the rows of a
//!   closed connection;
//! - EventBridge's schedule: the sweep of rows older than a connection can live;
//! - direct invocations: the gRPC method they name (`invoke`).
//!
//! Frames reach sockets through `@connections` (`cluster::gateway`). Lambda freezes the
//! process once an invocation has replied, so each one ends with
//! `Services::finish_invocation`: attendance due, every post finished.
mod invoke;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, Uri};
use lambda_http::request::RequestContext;
use lambda_http::{RequestExt, service_fn};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::app::HubGuard;
use crate::auth::TokenKeys;
use crate::cluster::Gateway;
use crate::cluster::gateway::{Answer, GATEWAY_NODE, Management};
use crate::config::{Settings, redact_url};
use crate::edge::{self, EdgeState};
use crate::grpc::{ConnectionService, DeliveryService};
use crate::hub::{Action, Hub, HubConfig, encode_frame};
use crate::service::Services;
use crate::store::Store;

/// Each `@connections` call's budget (§5.5).
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// What an invocation keeps of Lambda's deadline for the attendance and the reply after
/// its posts.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// Whether the Lambda runtime started this process (it sets `AWS_LAMBDA_RUNTIME_API`).
pub fn is_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some_and(|v| !v.is_empty())
}

/// Builds the door (a cold start: connect, migrate) and serves invocations until the
/// runtime stops the process.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let door = Arc::new(Door::build(settings).await?);
    lambda_http::run(service_fn(move |req: lambda_http::Request| {
        let door = door.clone();
        async move { Ok::<_, std::convert::Infallible>(door.handle(req).await) }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("the Lambda runtime stopped: {e}"))
}

/// Everything an invocation reaches.
pub struct Door {
    state: Arc<EdgeState>,
    router: axum::Router,
    gateway: Arc<Gateway>,
    delivery: DeliveryService,
    connection: ConnectionService,
    max_connection_age: Duration,
    /// Stops the (idle) socket runtime when the door goes away, as an application's does.
    _hub: HubGuard,
}

impl Door {
    /// The door of a Lambda instance: the management endpoint and credentials from the
    /// settings and the environment Lambda provides.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        refuse_sqlite(&settings)?;
        let g = &settings.gateway;
        let api = Management::from_env(
            g.ws_management_endpoint.as_deref(),
            g.websocket_api_id.as_deref(),
            g.stage.as_deref(),
            POST_TIMEOUT,
        )?;
        Self::build_with(settings, api).await
    }

    /// The door with a management client given (tests run one in-process beside the
    /// instances, as one more of them).
    pub async fn build_with(settings: Settings, api: Management) -> anyhow::Result<Self> {
        refuse_sqlite(&settings)?;
        let metrics = crate::telemetry::metrics_handle();
        let keys = TokenKeys::new(settings.jwt_secret()?);
        let store = Store::connect(&settings.database_url).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot open database {}: {e}",
                redact_url(&settings.database_url)
            )
        })?;
        // Under the migration lock, so that a scale-out of cold starts migrates once.
        store.migrate().await?;
        // Services need a hub for socket events; this one never holds a socket, so one
        // thread of it is plenty.
        let hub = Hub::new(HubConfig {
            socket_threads: 1,
            ..settings.hub_config()
        })
        .map_err(|e| anyhow::anyhow!("cannot start the socket runtime: {e}"))?;
        let gateway = Arc::new(Gateway::new(
            store.clone(),
            api,
            settings.gateway.gateway_concurrency as usize,
        ));
        let services = Services::new(
            GATEWAY_NODE.to_string(),
            store,
            hub.clone(),
            gateway.clone(),
            settings.service_config(),
        );
        let state = Arc::new(EdgeState {
            services: services.clone(),
            keys,
            trust_proxy: false,
            dev: settings.dev,
            ready: Arc::new(AtomicBool::new(true)),
            metrics,
            openapi: edge::openapi::document(),
        });
        tracing::info!(
            management = %gateway.endpoint(),
            database = %redact_url(&settings.database_url),
            concurrency = settings.gateway.gateway_concurrency,
            "serving Lambda invocations"
        );
        Ok(Self {
            router: edge::http_router(state.clone()),
            state,
            gateway,
            delivery: DeliveryService {
                svc: services.clone(),
            },
            connection: ConnectionService { svc: services },
            max_connection_age: Duration::from_secs(settings.gateway.gateway_max_connection_secs),
            _hub: HubGuard(hub),
        })
    }

    /// The domain layer this door serves.
    pub fn services(&self) -> &Services {
        &self.state.services
    }

    /// One invocation, whatever its event; returns once everything it sent has been posted.
    pub async fn handle(&self, req: lambda_http::Request) -> Response<Body> {
        // A fan-out whose posts hang must still reply before Lambda stops the invocation.
        self.gateway
            .set_deadline(req.lambda_context_ref().and_then(|c| {
                let left = i64::try_from(c.deadline).ok()? - crate::time::now_ms();
                let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                Some(std::time::Instant::now() + left.saturating_sub(DEADLINE_MARGIN))
            }));
        let context = req.request_context_ref().cloned();
        let resp = match context {
            Some(RequestContext::WebSocket(ctx)) => {
                let connection = ctx.connection_id.unwrap_or_default();
                let kind = ctx.event_type.unwrap_or_default();
                self.websocket(&kind, &connection).await
            }
            Some(RequestContext::ApiGatewayV1(ctx)) => {
                let ip = ctx.identity.source_ip.clone();
                let path = req.raw_http_path().to_string();
                let query = v1_query(&req.query_string_parameters());
                self.rest(req, path, query, ip).await
            }
            Some(RequestContext::ApiGatewayV2(ctx)) => {
                let ip = ctx.http.source_ip.clone();
                // HTTP API's rawPath carries a named stage; REST's path never does.
                let raw = req.raw_http_path().to_string();
                let path = match ctx.stage.as_deref() {
                    Some(stage) if stage != "$default" => strip_stage(&raw, stage),
                    _ => raw,
                };
                let query = req.uri().query().map(str::to_string);
                self.rest(req, path, query, ip).await
            }
            Some(RequestContext::PassThrough) => self.pass_through(req).await,
            _ => edge::json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "unsupported event"}),
            ),
        };
        let posts = self.services().finish_invocation().await;
        tracing::debug!(posts, status = %resp.status(), "invocation done");
        resp
    }

    /// A REST or HTTP API request: the HTTP edge's router, with the path API Gateway
    /// routed (no stage) and the client's address from the event.
    async fn rest(
        &self,
        req: lambda_http::Request,
        path: String,
        query: Option<String>,
        source_ip: Option<String>,
    ) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path
        };
        if path.eq_ignore_ascii_case("/metrics") {
            // Not in this mode: the platform's logs and metrics serve (§5.5).
            return edge::endpoint_not_found(&path);
        }
        let path_and_query = match query.filter(|q| !q.is_empty()) {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        parts.uri = match path_and_query.parse::<Uri>() {
            Ok(uri) => uri,
            Err(_) => {
                return edge::json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "Invalid path"}),
                );
            }
        };
        let ip = source_ip
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let mut req = Request::from_parts(parts, Body::from(body.to_vec()));
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(ip, 0)));
        match self.router.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }

    /// `CONNECT`: nothing stored. `MESSAGE`: the socket id reply (§2.1), posted before the
    /// invocation returns. `DISCONNECT`: the connection's rows go, attendance follows.
    async fn websocket(&self, kind: &str, connection: &str) -> Response<Body> {
        match kind {
            "MESSAGE" => {
                let frame = encode_frame("", "", Action::SocketId, connection);
                match self.gateway.post_to(connection, frame).await {
                    Answer::Done => {}
                    other => {
                        tracing::warn!(%connection, answer = ?other, "socket id reply not delivered")
                    }
                }
            }
            "DISCONNECT" => {
                if let Err(e) = self.services().connection_gone(connection).await {
                    // The sweep removes them.
                    tracing::warn!(%connection, error = %e, "rows of a closed connection not deleted");
                    return edge::json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"error": "Database unavailable"}),
                    );
                }
            }
            _ => {}
        }
        Response::builder()
            .status(StatusCode::OK)
            .body(Body::empty())
            .unwrap_or_default()
    }

    /// An event lambda_http does not know: EventBridge's schedule, or a direct invocation.
    async fn pass_through(&self, req: lambda_http::Request) -> Response<Body> {
        let event: Value = serde_json::from_slice(req.body().as_ref()).unwrap_or(Value::Null);
        if let Some(inv) = invoke::Invocation::parse(&event) {
            let delivers = inv.method.contains(".Delivery/");
            let mut reply = invoke::call(&self.delivery, &self.connection, inv).await;
            if delivers && reply.get("error").is_none() {
                // The rows the frame reached, known once its posts ran (attendance that a
                // 410 makes due follows in `handle`, and is not this frame).
                let drained = self.services().drain_published().await;
                reply = json!({"delivered": drained.delivered});
            }
            return edge::json_response(StatusCode::OK, &reply);
        }
        if event.get("source").and_then(Value::as_str) == Some("aws.events") {
            return match self
                .services()
                .sweep_joined_before(self.max_connection_age)
                .await
            {
                Ok(rooms) => edge::json_response(StatusCode::OK, &json!({"sweptRooms": rooms})),
                Err(e) => {
                    tracing::warn!(error = %e, "scheduled sweep failed");
                    edge::json_response(StatusCode::OK, &invoke::error(&tonic::Status::from(e)))
                }
            };
        }
        edge::json_response(
            StatusCode::OK,
            &json!({"error": {"code": "INVALID_ARGUMENT", "message":
                "unrecognised event: expected an API Gateway event, a scheduled event \
                 (\"source\":\"aws.events\") or {\"method\",\"request\"}"}}),
        )
    }
}

fn refuse_sqlite(settings: &Settings) -> anyhow::Result<()> {
    if settings.database_url.starts_with("sqlite:") {
        anyhow::bail!(
            "gateway mode (AWS_LAMBDA_RUNTIME_API is set) needs a database every instance \
             shares: set DATABASE_URL to postgres:// or mysql://; SQLite is one process's file"
        );
    }
    Ok(())
}

/// Everything but RFC 3986's unreserved characters and `,`.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b',');

/// A REST (payload 1.0) event's query as a query string. API Gateway hands the parameters
/// over decoded, so `a%2Cb` and `a,b` arrive alike; lambda_http would encode the comma back
/// (`a%2Cb`), which the edge reads as one id. Commas stay commas here: list parameters
/// (`ids=a,b`) mean on this door what they mean on the HTTP edge.
fn v1_query(params: &lambda_http::aws_lambda_events::query_map::QueryMap) -> Option<String> {
    use percent_encoding::utf8_percent_encode as enc;
    let pairs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k, QUERY_VALUE), enc(v, QUERY_VALUE)))
        .collect();
    (!pairs.is_empty()).then(|| pairs.join("&"))
}

/// `/{stage}/rest` → `/rest` (and `/{stage}` → `/`).
fn strip_stage(path: &str, stage: &str) -> String {
    let prefix = format!("/{stage}");
    match path.strip_prefix(&prefix) {
        Some("") => "/".to_string(),
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        _ => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_is_stripped_once() {
        assert_eq!(strip_stage("/dev/messaging/x", "dev"), "/messaging/x");
        assert_eq!(strip_stage("/dev", "dev"), "/");
        assert_eq!(strip_stage("/devices/x", "dev"), "/devices/x");
        assert_eq!(strip_stage("/messaging/x", "dev"), "/messaging/x");
    }
}
