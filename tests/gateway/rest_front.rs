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
    // (what, method, path, body, with a token, extra header)
    type Case = (
        &'static str,
        reqwest::Method,
        &'static str,
        Option<Vec<u8>>,
        bool,
        Option<(&'static str, &'static str)>,
    );
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let cases: Vec<Case> = vec![
        ("health", get.clone(), "/health", None, false, None),
        ("ready", get.clone(), "/ready", None, false, None),
        ("root", get.clone(), "/", None, false, None),
        (
            "a static file",
            get.clone(),
            "/client/messaging.d.ts",
            None,
            false,
            None,
        ),
        (
            "unknown route",
            get.clone(),
            "/messaging/nope",
            None,
            false,
            None,
        ),
        (
            "malformed JSON",
            post.clone(),
            "/messaging/connections",
            Some(b"[{".to_vec()),
            false,
            None,
        ),
        (
            "empty body",
            post.clone(),
            "/messaging/connections",
            Some(Vec::new()),
            false,
            None,
        ),
        (
            "body not UTF-8",
            post.clone(),
            "/messaging/connections",
            Some(vec![0xff, 0xfe, b'[']),
            false,
            None,
        ),
        (
            "body over 1 MiB",
            post.clone(),
            "/messaging/connections",
            Some(format!("[\"{}\"]", "x".repeat(1024 * 1024)).into_bytes()),
            false,
            None,
        ),
        (
            "missing token",
            get.clone(),
            "/messaging/messages/conversation/CONV0000001",
            None,
            false,
            None,
        ),
        (
            "unknown conversation",
            get.clone(),
            "/messaging/messages/conversation/CONV0000001",
            None,
            true,
            None,
        ),
        (
            "other method",
            reqwest::Method::PUT,
            "/messaging/connections",
            None,
            false,
            None,
        ),
        (
            "CORS preflight",
            reqwest::Method::OPTIONS,
            "/messaging/connections",
            None,
            false,
            Some(("access-control-request-method", "POST")),
        ),
    ];
    for payload in [Payload::V1, Payload::V2] {
        let base = gateway.rest_url_for(payload);
        for (what, method, path, body, with_token, header) in &cases {
            let build = |url: String| {
                let mut req = http.request(method.clone(), url);
                if let Some(b) = body {
                    req = req.body(b.clone());
                }
                if *with_token {
                    req = req.bearer_auth(&member);
                }
                if let Some((name, value)) = header {
                    req = req
                        .header(*name, *value)
                        .header("origin", "https://example.org");
                }
                req
            };
            let through_gateway = answer(build(format!("{base}{path}"))).await;
            let direct = answer(build(edge.url(path))).await;
            assert_eq!(through_gateway, direct, "{what} ({payload:?})");
        }
        // The statuses the contract names, so that equal-but-wrong cannot pass.
        let get = |path: &str| answer(http.get(format!("{base}{path}")));
        let preflight = answer(
            http.request(
                reqwest::Method::OPTIONS,
                format!("{base}/messaging/connections"),
            )
            .header("origin", "https://example.org")
            .header("access-control-request-method", "POST"),
        )
        .await;
        assert_eq!(
            (preflight.status, preflight.cors.as_deref()),
            (204, Some("*"))
        );
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
