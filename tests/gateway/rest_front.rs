//! The REST surface through API Gateway (payload 1.0 and 2.0) answers as the HTTP edge does:
//! each request is sent to both, on the same database, and the answers compared (status,
//! body with the error timestamp left out, content type, `Allow`, CORS).
use serde_json::{Value, json};

use crate::emulator::Payload;
use crate::helpers::{TestApp, TestDb};
use crate::server_test;
use crate::support::*;

#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    body: Value,
    content_type: Option<String>,
    allow: Option<String>,
    cors: Option<String>,
}

async fn answer(req: reqwest::RequestBuilder) -> Answer {
    let (status, headers, mut body) = read(req.send().await.unwrap()).await;
    // The one field that differs by when it was answered.
    if let Some(error) = body.get_mut("error").and_then(Value::as_object_mut) {
        error.remove("timestamp");
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Answer {
        status,
        body,
        content_type: header("content-type"),
        allow: header("allow"),
        cors: header("access-control-allow-origin"),
    }
}

server_test!(rest_front_answers_as_the_http_edge, [postgres, mysql]);
async fn rest_front_answers_as_the_http_edge(db: TestDb) {
    let gateway = start(&db, &[]).await;
    let edge = TestApp::spawn(&db).await;
    let http = reqwest::Client::new();
    let member = token("C1", "P1", &[]);
    type Case = (
        &'static str,
        reqwest::Method,
        &'static str,
        Option<&'static str>,
        bool,
    );
    // (what, method, path, raw body, with a token)
    let cases: [Case; 8] = [
        ("health", reqwest::Method::GET, "/health", None, false),
        ("ready", reqwest::Method::GET, "/ready", None, false),
        (
            "unknown route",
            reqwest::Method::GET,
            "/messaging/nope",
            None,
            false,
        ),
        (
            "malformed JSON",
            reqwest::Method::POST,
            "/messaging/connections",
            Some("[{"),
            false,
        ),
        (
            "empty body",
            reqwest::Method::POST,
            "/messaging/connections",
            Some(""),
            false,
        ),
        (
            "missing token",
            reqwest::Method::GET,
            "/messaging/messages/conversation/CONV0000001",
            None,
            false,
        ),
        (
            "unknown conversation",
            reqwest::Method::GET,
            "/messaging/messages/conversation/CONV0000001",
            None,
            true,
        ),
        (
            "other method",
            reqwest::Method::PUT,
            "/messaging/connections",
            None,
            false,
        ),
    ];
    for payload in [Payload::V1, Payload::V2] {
        let base = gateway.rest_url_for(payload);
        for (what, method, path, body, with_token) in &cases {
            let build = |url: String| {
                let mut req = http.request(method.clone(), url);
                if let Some(b) = body {
                    req = req.body(*b);
                }
                if *with_token {
                    req = req.bearer_auth(&member);
                }
                req
            };
            let through_gateway = answer(build(format!("{base}{path}"))).await;
            let direct = answer(build(edge.url(path))).await;
            assert_eq!(through_gateway, direct, "{what} ({payload:?})");
        }
        // The statuses the contract names, so that equal-but-wrong cannot pass.
        let get = |path: &str| answer(http.get(format!("{base}{path}")));
        assert_eq!(get("/health").await.body, json!({"status": "ok"}));
        assert_eq!(get("/ready").await.body, json!({"status": "ready"}));
        let unknown = get("/messaging/nope").await;
        assert_eq!(unknown.status, 404);
        assert_eq!(
            unknown.body,
            json!({"error": {"message": "Endpoint not found", "status": 404, "path": "/messaging/nope"}}),
            "the path without the stage ({payload:?})"
        );
        let malformed = answer(
            http.post(format!("{base}/messaging/connections"))
                .body("[{"),
        )
        .await;
        assert_eq!(
            (malformed.status, malformed.body),
            (400, json!({"error": "Invalid JSON"}))
        );
        let missing = get("/messaging/messages/conversation/CONV0000001").await;
        assert_eq!(
            (missing.status, missing.body),
            (401, json!({"error": "Unauthorized"}))
        );
    }
    assert_eq!(gateway.bad_signatures(), 0);
}

server_test!(
    rest_front_carries_the_caller_and_the_body,
    [postgres, mysql]
);
async fn rest_front_carries_the_caller_and_the_body(db: TestDb) {
    let gateway = start(&db, &[]).await;
    for payload in [Payload::V1, Payload::V2] {
        let rest = Rest::new(&gateway, payload);
        let room = rest.public_conversation("C1").await;
        let mut ws = socket(&gateway).await;
        // A join's row records the client IP from the event, not X-Forwarded-For.
        let (s, _, body) = rest
            .raw(
                rest.http
                    .post(format!("{}/messaging/connections", rest.base))
                    .header("x-forwarded-for", "203.0.113.9")
                    .json(&json!([{"conversationId": room, "socketId": ws.id, "displayName": "Ünïcødé"}])),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body[0]["displayName"], "Ünïcødé");
        let admin = token("C1", "ADMIN", &[CE]);
        let (s, rows) = rest
            .get(
                &format!("/messaging/connections/C1/{room}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(rows[0]["ipAddress"], "127.0.0.1", "{payload:?}: {rows}");
        // An authenticated post, with the token through the gateway's headers.
        let (s, msgs) = rest
            .post(
                "/messaging/messages",
                Some(&admin),
                &json!([{"conversationId": room, "content": "from the admin"}]),
                None,
            )
            .await;
        assert_eq!(s, 200, "{msgs}");
        assert_eq!(msgs[0]["personId"], "ADMIN");
        let frames = drain(&gateway, &mut ws).await;
        assert_eq!(with_action(&frames, "message")[0]["data"], msgs[0]);
        // A query string reaches the service.
        let (s, caught) = rest
            .get(
                &format!(
                    "/messaging/messages/catchup/C1/{room}?since={}",
                    msgs[0]["timeSent"].as_str().unwrap()
                ),
                None,
                None,
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(caught, json!([msgs[0]]));
        let (s, bad) = rest
            .get(
                &format!("/messaging/messages/catchup/C1/{room}?since=yesterday"),
                None,
                None,
            )
            .await;
        assert_eq!(
            (s, bad),
            (
                400,
                json!({"error": "Invalid query parameter", "field": "since"})
            )
        );
    }
    assert_eq!(gateway.bad_signatures(), 0);
}
