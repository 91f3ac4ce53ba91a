//! The operational endpoints: liveness, readiness, metrics and the OpenAPI document. They
//! are declared with the REST endpoints (`routes`) but read nothing of the request
//! (`Auth::None`).
use std::sync::atomic::Ordering;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::{JsonSchema, SchemaGenerator};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::api::{Reply, json_content};
use super::{Ctx, json_response, ok_json};
use crate::error::AppResult;

#[derive(Serialize, JsonSchema)]
pub struct Health {
    status: &'static str,
}

pub async fn health(_: &Ctx<'_>) -> AppResult<Health> {
    Ok(Health { status: "ok" })
}

/// `ready`, or `unavailable` with the reason; the HTTP status says the same (200, 503).
#[derive(Serialize, JsonSchema)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Readiness {
    Ready,
    Unavailable { reason: String },
}

/// `/ready`'s answer: `503` while unavailable, so that a probe needs only the status.
pub struct Ready(Readiness);

impl Reply for Ready {
    fn responses(g: &mut SchemaGenerator) -> Map<String, Value> {
        let schema = g.subschema_for::<Readiness>();
        Map::from_iter([
            ("200".into(), json_content("Ready", &schema)),
            ("503".into(), json_content("Not ready", &schema)),
        ])
    }

    fn into_response(self) -> Response {
        let status = match self.0 {
            Readiness::Ready => StatusCode::OK,
            Readiness::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        json_response(status, &self.0)
    }
}

pub async fn ready(ctx: &Ctx<'_>) -> AppResult<Ready> {
    let reason = if !ctx.state.ready.load(Ordering::Acquire) {
        Some("starting".to_string())
    } else if let Some(why) = ctx.svc().unready() {
        Some(why)
    } else {
        ctx.svc().database_unready().await
    };
    Ok(Ready(match reason {
        None => Readiness::Ready,
        Some(reason) => Readiness::Unavailable { reason },
    }))
}

/// The Prometheus text exposition.
pub struct Metrics(String);

impl Reply for Metrics {
    fn responses(_: &mut SchemaGenerator) -> Map<String, Value> {
        let ok = json!({"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}});
        Map::from_iter([("200".into(), ok)])
    }

    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            self.0,
        )
            .into_response()
    }
}

pub async fn metrics(ctx: &Ctx<'_>) -> AppResult<Metrics> {
    Ok(Metrics(ctx.state.metrics.render()))
}

/// The document, as `GET /messaging/openapi.json` sends it. Its schema says only `object`:
/// the document does not describe OpenAPI itself.
pub struct Document(pub &'static Value);

impl Reply for Document {
    fn responses(_: &mut SchemaGenerator) -> Map<String, Value> {
        Map::from_iter([("200".into(), json_content("OK", json!({"type": "object"})))])
    }

    fn into_response(self) -> Response {
        ok_json(self.0)
    }
}

pub async fn openapi(ctx: &Ctx<'_>) -> AppResult<Document> {
    Ok(Document(ctx.state.openapi))
}

#[cfg(test)]
mod tests {
    use super::super::api::tests::documented_as_sent;
    use super::*;

    #[test]
    fn operational_replies_send_what_they_document() {
        documented_as_sent(Health { status: "ok" });
        documented_as_sent(Ready(Readiness::Ready));
        documented_as_sent(Ready(Readiness::Unavailable {
            reason: "starting".into(),
        }));
        documented_as_sent(Metrics(String::new()));
    }

    #[test]
    fn readiness_bodies_are_the_contract_s() {
        let body = |r| serde_json::to_string(&r).unwrap_or_default();
        assert_eq!(body(Readiness::Ready), r#"{"status":"ready"}"#);
        assert_eq!(
            body(Readiness::Unavailable {
                reason: "starting".into()
            }),
            r#"{"status":"unavailable","reason":"starting"}"#
        );
    }
}
