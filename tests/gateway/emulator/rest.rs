//! The REST front: plain HTTP/1.1 requests under `/{stage}` turned into REST API (payload
//! 1.0) or HTTP API (payload 2.0) proxy events, and the function's answer turned back into
//! the HTTP response, as API Gateway does:
//!
//! - payload 1.0: `statusCode`, `headers` and `multiValueHeaders` merged (a name in
//!   `multiValueHeaders` takes its values from there), `body`, `isBase64Encoded`; an answer
//!   without a numeric `statusCode` is a 502 `{"message": "Internal server error"}`;
//! - payload 2.0: the same without `multiValueHeaders`, plus `cookies` as `set-cookie`; an
//!   answer that is not an object with `statusCode` is sent as a 200 JSON body;
//! - a function error is a 502, no answer within the integration timeout a 504.
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, StatusCode};
use serde_json::Value;

use super::events::{self, HttpRequest};
use super::management::error_response;
use super::{HttpResponse, INSTANCE_HEADER, InvokeError, Payload, Shared, respond};

/// API Gateway's limit on a request body (10 MB).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Serves one request on a REST front of the given payload version.
pub async fn handle(
    shared: Arc<Shared>,
    payload: Payload,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> HttpResponse {
    let stage_prefix = format!("/{}", shared.api.stage);
    let raw_path = req.uri().path().to_string();
    if raw_path != stage_prefix && !raw_path.starts_with(&format!("{stage_prefix}/")) {
        return error_response(
            403,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        );
    }
    let requested = req
        .headers()
        .get(INSTANCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let method = req.method().as_str().to_string();
    let raw_query = req.uri().query().map(str::to_string);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str() != INSTANCE_HEADER)
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error_response(400, "BadRequestException", "Unreadable body"),
    };
    if body.len() > MAX_BODY_BYTES {
        return error_response(413, "RequestEntityTooLarge", "Request Too Long");
    }
    let request = HttpRequest {
        method,
        raw_path,
        raw_query,
        headers,
        body: body.to_vec(),
        source_ip: peer.ip().to_canonical().to_string(),
    };
    let event = match payload {
        Payload::V1 => events::rest_v1(&shared.api, &request),
        Payload::V2 => events::http_v2(&shared.api, &request),
    };
    let instance = shared.pick(requested);
    match shared.invoke(instance, event).await {
        Ok(answer) => match payload {
            Payload::V1 => v1_response(&answer),
            Payload::V2 => v2_response(&answer),
        },
        Err(InvokeError::Timeout(_)) => {
            error_response(504, "IntegrationTimeout", "Endpoint request timed out")
        }
        Err(_) => error_response(502, "InternalServerErrorException", "Internal server error"),
    }
}

fn malformed() -> HttpResponse {
    error_response(502, "InternalServerErrorException", "Internal server error")
}

fn body_of(answer: &Value) -> Option<Bytes> {
    let text = match &answer["body"] {
        Value::Null => return Some(Bytes::new()),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if answer["isBase64Encoded"].as_bool() == Some(true) {
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .ok()
            .map(Bytes::from)
    } else {
        Some(Bytes::from(text))
    }
}

fn header_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn build(status: u16, headers: Vec<(String, String)>, body: Bytes) -> HttpResponse {
    let mut response = respond(status, &[], body);
    if StatusCode::from_u16(status).is_err() {
        return malformed();
    }
    let map = response.headers_mut();
    for (name, value) in headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            continue;
        };
        if name == hyper::header::CONTENT_LENGTH || name == hyper::header::TRANSFER_ENCODING {
            continue;
        }
        map.append(name, value);
    }
    let request_id = events::uuid();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        map.insert("x-amzn-requestid", v);
    }
    response
}

/// Payload 1.0's answer.
pub fn v1_response(answer: &Value) -> HttpResponse {
    let Some(status) = answer["statusCode"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
    else {
        return malformed();
    };
    let Some(body) = body_of(answer) else {
        return malformed();
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    let multi = answer["multiValueHeaders"].as_object();
    if let Some(multi) = multi {
        for (name, values) in multi {
            for v in values.as_array().into_iter().flatten() {
                if let Some(v) = header_text(v) {
                    headers.push((name.clone(), v));
                }
            }
        }
    }
    if let Some(single) = answer["headers"].as_object() {
        for (name, v) in single {
            let in_multi = multi.is_some_and(|m| m.keys().any(|k| k.eq_ignore_ascii_case(name)));
            if in_multi {
                continue;
            }
            if let Some(v) = header_text(v) {
                headers.push((name.clone(), v));
            }
        }
    }
    build(status, headers, body)
}

/// Payload 2.0's answer.
pub fn v2_response(answer: &Value) -> HttpResponse {
    let structured = answer.is_object() && answer.get("statusCode").is_some();
    if !structured {
        return build(
            200,
            vec![("content-type".into(), "application/json".into())],
            Bytes::from(answer.to_string()),
        );
    }
    let Some(status) = answer["statusCode"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
    else {
        return malformed();
    };
    let Some(body) = body_of(answer) else {
        return malformed();
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(single) = answer["headers"].as_object() {
        for (name, v) in single {
            if let Some(v) = header_text(v) {
                headers.push((name.clone(), v));
            }
        }
    }
    for cookie in answer["cookies"].as_array().into_iter().flatten() {
        if let Some(c) = cookie.as_str() {
            headers.push(("set-cookie".into(), c.to_string()));
        }
    }
    build(status, headers, body)
}
