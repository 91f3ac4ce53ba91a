//! What a handler takes and gives, as types. The declaration of an endpoint (`routes`) names
//! its handler's input and output types; dispatch reads the one and sends the other through
//! the traits here, and the OpenAPI document asks the same traits for its schemas, so the
//! document cannot describe another body than the one parsed or sent.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::{Ctx, input, ok_json};
use crate::error::AppResult;

/// A handler's input besides the path parameters (the route checks those, before any input).
pub trait Input: Sized {
    fn read(ctx: &Ctx<'_>) -> AppResult<Self>;

    /// The request body's schema, when the body is read.
    fn body_schema(_: &mut SchemaGenerator) -> Option<Schema> {
        None
    }

    /// The query string's schema (an object: one property per parameter), when it is read.
    fn query_schema(_: &mut SchemaGenerator) -> Option<Schema> {
        None
    }
}

/// No input: the handler is written without one (`handler()` in the declaration).
impl Input for () {
    fn read(_: &Ctx<'_>) -> AppResult<()> {
        Ok(())
    }
}

/// The body as its type (`edge::bodies`), with the errors of §9.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned + JsonSchema> Input for Body<T> {
    fn read(ctx: &Ctx<'_>) -> AppResult<Self> {
        ctx.body().map(Body)
    }

    fn body_schema(g: &mut SchemaGenerator) -> Option<Schema> {
        Some(g.subschema_for::<T>())
    }
}

/// The query string as its type (`edge::bodies`).
pub struct Query<T>(pub T);

impl<T: input::Query> Input for Query<T> {
    fn read(ctx: &Ctx<'_>) -> AppResult<Self> {
        ctx.query().map(Query)
    }

    fn query_schema(g: &mut SchemaGenerator) -> Option<Schema> {
        Some(T::json_schema(g))
    }
}

/// `I`, read only once the caller is known to be a person: check 3 of §9 (401) comes before
/// the body's (400). The service decides it again.
pub struct Person<I>(pub I);

impl<I: Input> Input for Person<I> {
    fn read(ctx: &Ctx<'_>) -> AppResult<Self> {
        crate::service::person(&ctx.caller)?;
        I::read(ctx).map(Person)
    }

    fn body_schema(g: &mut SchemaGenerator) -> Option<Schema> {
        I::body_schema(g)
    }

    fn query_schema(g: &mut SchemaGenerator) -> Option<Schema> {
        I::query_schema(g)
    }
}

/// A handler's output: the success responses the document lists, and the response sent.
pub trait Reply {
    /// OpenAPI response objects by status, in the document's order.
    fn responses(g: &mut SchemaGenerator) -> Map<String, Value>;

    fn into_response(self) -> Response;
}

/// A JSON response object of `schema`.
pub fn json_content(description: &str, schema: impl Serialize) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// Any serializable type is sent as `200` JSON, and its schema is the one documented.
impl<T: Serialize + JsonSchema> Reply for T {
    fn responses(g: &mut SchemaGenerator) -> Map<String, Value> {
        let schema = g.subschema_for::<T>();
        Map::from_iter([("200".into(), json_content("OK", schema))])
    }

    fn into_response(self) -> Response {
        ok_json(&self)
    }
}

/// `204` without a body.
pub struct NoContent;

impl Reply for NoContent {
    fn responses(_: &mut SchemaGenerator) -> Map<String, Value> {
        Map::from_iter([("204".into(), json!({"description": "No content"}))])
    }

    fn into_response(self) -> Response {
        StatusCode::NO_CONTENT.into_response()
    }
}

// The `{"success": true}` of the operations that have nothing else to say (a plain comment:
// a doc comment would be the schema's description).
#[derive(Serialize, JsonSchema)]
pub struct Success {
    success: bool,
}

pub const SUCCESS: Success = Success { success: true };

/// What the document says of an endpoint's input and output: what dispatch reads and sends.
pub struct Doc {
    pub body: Option<Schema>,
    pub query: Option<Schema>,
    /// The success responses (`Reply::responses`).
    pub responses: Map<String, Value>,
}

impl Doc {
    pub fn of<I: Input, O: Reply>(g: &mut SchemaGenerator) -> Doc {
        Doc {
            body: I::body_schema(g),
            query: I::query_schema(g),
            responses: O::responses(g),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The documented response of `O` for the status `reply` was sent with, and its media
    /// type is the one sent. (A `Serialize + JsonSchema` type cannot disagree: the blanket
    /// `Reply` sends the type the schema is of. The hand-written replies could.)
    pub fn documented_as_sent<O: Reply>(reply: O) {
        let documented = O::responses(&mut SchemaGenerator::default());
        let sent = reply.into_response();
        let status = sent.status().as_str().to_string();
        let Some(doc) = documented.get(&status) else {
            panic!("{status} is sent but not documented: {documented:?}")
        };
        let sent_type = sent
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let documented_types: Vec<&String> = doc
            .get("content")
            .and_then(Value::as_object)
            .map(|c| c.keys().collect())
            .unwrap_or_default();
        match documented_types.as_slice() {
            [] => assert!(
                sent_type.is_empty(),
                "{status}: {sent_type} is not documented"
            ),
            [media] => assert!(
                sent_type.starts_with(media.as_str()),
                "{status}: sent {sent_type}, documented {media}"
            ),
            more => panic!("{status}: several media types {more:?}"),
        }
    }

    #[test]
    fn replies_send_what_they_document() {
        documented_as_sent(SUCCESS);
        documented_as_sent(Vec::<String>::new());
        documented_as_sent(NoContent);
    }
}
