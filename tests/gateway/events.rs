//! The events the emulator builds are the shapes `lambda_http` 1.3 dispatches on (it tries
//! REST v1, then HTTP v2, then ALB, then WebSocket, then passes anything else through), and
//! they carry what `aws_lambda_events`' structs read.
use lambda_http::aws_lambda_events::apigw::{
    ApiGatewayProxyRequest, ApiGatewayV2httpRequest, ApiGatewayWebsocketProxyRequest,
};
use lambda_http::request::LambdaRequest;
use lambda_http::{RequestExt, http};
use serde_json::{Value, json};

use crate::emulator::events::{self, ApiContext, EventKind, HttpRequest, Peer};

fn api() -> ApiContext {
    ApiContext {
        api_id: "testapi123".into(),
        stage: "dev".into(),
        domain_name: "127.0.0.1".into(),
    }
}

fn peer() -> Peer {
    Peer {
        connection_id: "AbCdEfGhIjKlMnO=".into(),
        connected_at: chrono::Utc::now(),
        source_ip: "127.0.0.1".into(),
        user_agent: Some("test-agent/1".into()),
    }
}

/// Which variant `lambda_http` makes of an event.
fn variant(event: &Value) -> &'static str {
    match serde_json::from_value::<LambdaRequest>(event.clone()).unwrap() {
        LambdaRequest::ApiGatewayV1(_) => "rest",
        LambdaRequest::ApiGatewayV2(_) => "http",
        LambdaRequest::WebSocket(_) => "websocket",
        LambdaRequest::PassThrough(_) => "pass-through",
        _ => "other",
    }
}

fn request(method: &str, raw_path: &str, query: Option<&str>, body: &[u8]) -> HttpRequest {
    HttpRequest {
        method: method.into(),
        raw_path: raw_path.into(),
        raw_query: query.map(String::from),
        headers: vec![
            ("host".into(), "127.0.0.1:9".into()),
            ("user-agent".into(), "reqwest".into()),
            ("accept".into(), "a/b".into()),
            ("accept".into(), "c/d".into()),
            ("cookie".into(), "k1=v1; k2=v2".into()),
            ("authorization".into(), "Bearer T".into()),
        ],
        body: body.to_vec(),
        source_ip: "127.0.0.1".into(),
    }
}

#[test]
fn websocket_events_are_websocket_requests_and_nothing_else() {
    let connect = events::ws_connect(
        &api(),
        &peer(),
        &[
            ("host".into(), "127.0.0.1:9".into()),
            ("sec-websocket-key".into(), "k==".into()),
        ],
        Some("token=a%20b&x=1&x=2"),
    );
    let message = events::ws_message(&api(), &peer(), "getId");
    let disconnect = events::ws_disconnect(&api(), &peer(), 1001, "Going away");
    for (event, kind, route) in [
        (&connect, "CONNECT", "$connect"),
        (&message, "MESSAGE", "$default"),
        (&disconnect, "DISCONNECT", "$disconnect"),
    ] {
        assert!(event.get("httpMethod").is_none() && event.get("path").is_none());
        assert_eq!(variant(event), "websocket", "{kind}: {event}");
        assert!(serde_json::from_value::<ApiGatewayProxyRequest>(event.clone()).is_err());
        assert!(serde_json::from_value::<ApiGatewayV2httpRequest>(event.clone()).is_err());
        let ws: ApiGatewayWebsocketProxyRequest = serde_json::from_value(event.clone()).unwrap();
        let ctx = &ws.request_context;
        assert_eq!(ctx.event_type.as_deref(), Some(kind));
        assert_eq!(ctx.route_key.as_deref(), Some(route));
        assert_eq!(ctx.connection_id.as_deref(), Some("AbCdEfGhIjKlMnO="));
        assert_eq!(ctx.stage.as_deref(), Some("dev"));
        assert_eq!(ctx.apiid.as_deref(), Some("testapi123"));
        assert_eq!(ctx.identity.source_ip.as_deref(), Some("127.0.0.1"));
        assert!(ctx.connected_at > 0 && ctx.request_time_epoch >= ctx.connected_at);
        // What the binary sees: a request whose context is the WebSocket one.
        let req = lambda_http::request::from_str(&event.to_string()).unwrap();
        assert!(matches!(
            req.request_context_ref(),
            Some(lambda_http::request::RequestContext::WebSocket(_))
        ));
    }
    let ws: ApiGatewayWebsocketProxyRequest = serde_json::from_value(message.clone()).unwrap();
    assert_eq!(ws.body.as_deref(), Some("getId"));
    assert!(ws.request_context.message_id.is_some());
    let ws: ApiGatewayWebsocketProxyRequest = serde_json::from_value(connect.clone()).unwrap();
    assert_eq!(ws.body, None);
    assert_eq!(
        ws.query_string_parameters.first("token"),
        Some("a b"),
        "query decoded"
    );
    assert_eq!(
        ws.multi_value_query_string_parameters.all("x"),
        Some(vec!["1", "2"])
    );
    assert_eq!(ws.headers["sec-websocket-key"], "k==");
    let ws: ApiGatewayWebsocketProxyRequest = serde_json::from_value(disconnect).unwrap();
    assert_eq!(ws.request_context.disconnect_status_code, Some(1001));
    assert_eq!(
        ws.request_context.disconnect_reason.as_deref(),
        Some("Going away")
    );
    assert_eq!(EventKind::of(&connect), EventKind::Connect);
    assert_eq!(EventKind::of(&message), EventKind::Message);
}

#[test]
fn rest_v1_event_is_a_rest_request_with_the_stage_only_in_the_context() {
    let event = events::rest_v1(
        &api(),
        &request(
            "POST",
            "/dev/messaging/a%20b/c",
            Some("x=1&x=2&y=%2F"),
            b"{\"k\":1}",
        ),
    );
    assert_eq!(variant(&event), "rest");
    assert_eq!(EventKind::of(&event), EventKind::Rest);
    assert_eq!(event["path"], "/messaging/a%20b/c");
    assert_eq!(event["resource"], "/{proxy+}");
    assert_eq!(event["pathParameters"], json!({"proxy": "messaging/a b/c"}));
    assert_eq!(event["stageVariables"], Value::Null);
    assert_eq!(event["body"], "{\"k\":1}");
    assert_eq!(event["isBase64Encoded"], false);
    let ctx = &event["requestContext"];
    assert_eq!(ctx["path"], "/dev/messaging/a%20b/c");
    assert_eq!(
        (&ctx["stage"], &ctx["httpMethod"]),
        (&json!("dev"), &json!("POST"))
    );
    assert_eq!(ctx["resourcePath"], "/{proxy+}");
    assert_eq!(ctx["identity"]["sourceIp"], "127.0.0.1");
    let parsed: ApiGatewayProxyRequest = serde_json::from_value(event.clone()).unwrap();
    assert_eq!(parsed.http_method, http::Method::POST);
    assert_eq!(parsed.query_string_parameters.first("x"), Some("2"));
    assert_eq!(
        parsed.multi_value_query_string_parameters.all("x"),
        Some(vec!["1", "2"])
    );
    assert_eq!(parsed.query_string_parameters.first("y"), Some("/"));
    let accept: Vec<_> = parsed
        .multi_value_headers
        .get_all("accept")
        .iter()
        .collect();
    assert_eq!(accept, ["a/b", "c/d"]);
    assert_eq!(parsed.headers["accept"], "c/d", "headers: the last value");
    assert_eq!(parsed.headers["x-forwarded-for"], "127.0.0.1");
    // lambda_http keeps the stage in the path unless told not to: the binary strips it.
    let req = lambda_http::request::from_str(&event.to_string()).unwrap();
    assert_eq!(req.uri().path(), "/dev/messaging/a%20b/c");
    assert_eq!(req.raw_http_path(), "/messaging/a%20b/c");
    assert_eq!(req.method(), http::Method::POST);

    let root = events::rest_v1(&api(), &request("GET", "/dev", None, b""));
    assert_eq!(
        (&root["path"], &root["resource"]),
        (&json!("/"), &json!("/"))
    );
    assert_eq!(root["requestContext"]["path"], "/dev/");
    assert_eq!(
        (
            &root["body"],
            &root["queryStringParameters"],
            &root["pathParameters"]
        ),
        (&Value::Null, &Value::Null, &Value::Null)
    );
    let binary = events::rest_v1(&api(), &request("POST", "/dev/x", None, &[0xff, 0, 1]));
    assert_eq!(
        (&binary["body"], &binary["isBase64Encoded"]),
        (&json!("/wAB"), &json!(true))
    );
    assert_eq!(variant(&binary), "rest");
}

#[test]
fn http_v2_event_is_an_http_request_with_the_stage_in_raw_path() {
    let event = events::http_v2(
        &api(),
        &request("GET", "/dev/messaging/health", Some("x=1&x=2"), b""),
    );
    assert_eq!(variant(&event), "http");
    assert_eq!(EventKind::of(&event), EventKind::Http);
    assert_eq!(event["version"], "2.0");
    assert_eq!(event["routeKey"], "$default");
    assert_eq!(event["rawPath"], "/dev/messaging/health");
    assert_eq!(event["rawQueryString"], "x=1&x=2");
    assert_eq!(event["cookies"], json!(["k1=v1", "k2=v2"]));
    assert_eq!(event["headers"]["accept"], "a/b,c/d");
    assert!(event["headers"].get("cookie").is_none());
    assert_eq!(event["queryStringParameters"]["x"], "1,2");
    assert!(event.get("body").is_none());
    let ctx = &event["requestContext"];
    assert_eq!(ctx["http"]["path"], "/dev/messaging/health");
    assert_eq!(ctx["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(ctx["stage"], "dev");
    let parsed: ApiGatewayV2httpRequest = serde_json::from_value(event.clone()).unwrap();
    assert_eq!(parsed.request_context.http.method, http::Method::GET);
    let req = lambda_http::request::from_str(&event.to_string()).unwrap();
    assert_eq!(req.uri().path(), "/dev/messaging/health");
    assert_eq!(req.uri().query(), Some("x=1&x=2"));
    assert_eq!(req.headers()["cookie"], "k1=v1; k2=v2");
}

#[test]
fn scheduled_and_direct_events_pass_through() {
    let scheduled = events::scheduled("us-east-1");
    assert_eq!(variant(&scheduled), "pass-through");
    assert_eq!(EventKind::of(&scheduled), EventKind::Scheduled);
    assert_eq!(scheduled["detail-type"], "Scheduled Event");
    let direct = events::direct(
        "messaging.v1.Delivery/SendConversationMessages",
        json!({"churchId": "C", "conversationId": "R", "action": "message", "data": "{}"}),
    );
    assert_eq!(variant(&direct), "pass-through");
    assert_eq!(EventKind::of(&direct), EventKind::Direct);
}

#[test]
fn connection_ids_look_like_api_gateways() {
    for _ in 0..50 {
        let id = events::random_id(11);
        assert_eq!(id.len(), 16, "{id}");
        assert!(id.ends_with('=') && !id.ends_with("=="), "{id}");
    }
}
