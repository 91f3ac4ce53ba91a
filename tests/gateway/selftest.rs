//! The emulator on its own: the test plays the Lambda function with raw HTTP calls to the
//! Runtime API and signs its `@connections` calls with `aws-sigv4` as a client would. No
//! binary, no database.
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{PercentEncodingMode, SigningSettings};
use base64::Engine;
use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::emulator::events::EventKind;
use crate::emulator::{
    AwsCredentials, Fault, Gateway, GatewayOptions, InvokeError, Payload, SigFailure,
};
use crate::helpers::Ws;
use crate::support::{WAIT, close, closed_by_server, connection_url, drain, signed, signed_post};

/// A function played by the test: polls `next`, answers each event as the binary would in
/// spirit (the `getId` reply over `@connections`), echoes REST events back, and records what
/// it saw.
struct Function {
    seen: Arc<Mutex<Vec<Value>>>,
    /// Statuses of the posts it tried while handling `$connect` (must be 410: a post before
    /// `$connect` returned fails).
    early_posts: Arc<Mutex<Vec<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Function {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn play(gateway: &Gateway, instance: usize) -> Function {
    let runtime = gateway.runtime_api(instance).unwrap();
    let management = gateway.management_url();
    let creds = gateway.credentials().clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let early_posts = Arc::new(Mutex::new(Vec::new()));
    let (seen2, early2) = (seen.clone(), early_posts.clone());
    let task = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let base = format!("http://{runtime}/2018-06-01/runtime");
        loop {
            let Ok(resp) = http.get(format!("{base}/invocation/next")).send().await else {
                return;
            };
            let id = resp.headers()["lambda-runtime-aws-request-id"]
                .to_str()
                .unwrap()
                .to_string();
            let event: Value = resp.json().await.unwrap();
            seen2.lock().unwrap().push(event.clone());
            let conn = event["requestContext"]["connectionId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let url = format!(
                "{management}/@connections/{}",
                percent_encoding::utf8_percent_encode(&conn, crate::support::PATH_SEGMENT)
            );
            let reply = match EventKind::of(&event) {
                EventKind::Connect => {
                    let status = signed_post(&url, b"too early", &creds).await;
                    early2.lock().unwrap().push(status);
                    if event["queryStringParameters"]["reject"] == "1" {
                        json!({"statusCode": 401, "body": "no"})
                    } else {
                        json!({"statusCode": 200})
                    }
                }
                EventKind::Message if event["body"] == "fail" => {
                    let _ = http
                        .post(format!("{base}/invocation/{id}/error"))
                        .json(&json!({"errorType": "Boom", "errorMessage": "asked to fail"}))
                        .send()
                        .await;
                    continue;
                }
                EventKind::Message => {
                    let frame = json!({"churchId": "", "conversationId": "", "action": "socketId", "data": conn});
                    signed_post(&url, frame.to_string().as_bytes(), &creds).await;
                    json!({"statusCode": 200})
                }
                EventKind::Rest | EventKind::Http => {
                    let binary = event["path"]
                        .as_str()
                        .or(event["rawPath"].as_str())
                        .is_some_and(|p| p.ends_with("/binary"));
                    if binary {
                        json!({"statusCode": 200, "headers": {"content-type": "application/octet-stream"},
                               "body": "/wAB", "isBase64Encoded": true})
                    } else {
                        json!({
                            "statusCode": 201,
                            "headers": {"content-type": "application/json", "x-single": "s", "x-both": "from-headers"},
                            "multiValueHeaders": {"x-multi": ["a", "b"], "x-both": ["from-multi"]},
                            "cookies": ["c1=v1", "c2=v2"],
                            "body": event.to_string(),
                            "isBase64Encoded": false,
                        })
                    }
                }
                EventKind::Direct if event["method"] == "fail" => {
                    let _ = http
                        .post(format!("{base}/invocation/{id}/error"))
                        .json(&json!({"errorType": "Boom", "errorMessage": "asked to fail"}))
                        .send()
                        .await;
                    continue;
                }
                _ => json!({"statusCode": 200}),
            };
            let _ = http
                .post(format!("{base}/invocation/{id}/response"))
                .json(&reply)
                .send()
                .await;
        }
    });
    Function {
        seen,
        early_posts,
        task,
    }
}

async fn emulator(instances: usize) -> Gateway {
    Gateway::start(GatewayOptions::without_processes(instances))
        .await
        .unwrap()
}

#[tokio::test]
async fn runtime_api_hands_one_event_to_a_poller_and_returns_its_reply() {
    let gateway = Arc::new(emulator(1).await);
    let base = format!(
        "http://{}/2018-06-01/runtime",
        gateway.runtime_api(0).unwrap()
    );
    // (The helper the scenarios use to see that an instance opens no port sees this one.)
    let port = gateway.runtime_api(0).unwrap().port();
    assert!(crate::support::listening_ports(std::process::id()).contains(&port));
    let http = reqwest::Client::new();
    let event = json!({"method": "messaging.v1.Delivery/SendConversationMessages", "request": {}});
    let invoking = {
        let (g, e) = (gateway.clone(), event.clone());
        tokio::spawn(async move { g.invoke(0, e).await })
    };
    let next = http
        .get(format!("{base}/invocation/next"))
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), 200);
    let h = next.headers().clone();
    let id = h["lambda-runtime-aws-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let deadline: i64 = h["lambda-runtime-deadline-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(deadline > chrono::Utc::now().timestamp_millis());
    assert!(
        h["lambda-runtime-invoked-function-arn"]
            .to_str()
            .unwrap()
            .starts_with("arn:aws:lambda:us-east-1:123456789012:function:messaging")
    );
    assert!(
        h["lambda-runtime-trace-id"]
            .to_str()
            .unwrap()
            .starts_with("Root=1-")
    );
    assert_eq!(next.json::<Value>().await.unwrap(), event);
    assert_eq!(gateway.state(0).unwrap().busy.as_deref(), Some(id.as_str()));
    let ack = http
        .post(format!("{base}/invocation/{id}/response"))
        .body(r#"{"delivered":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 202);
    assert_eq!(invoking.await.unwrap().unwrap(), json!({"delivered": 2}));
    // A reply to an id that is not in flight (this one is done) is refused.
    let again = http
        .post(format!("{base}/invocation/{id}/response"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);

    // An /error post is the invocation's error.
    let invoking = {
        let g = gateway.clone();
        tokio::spawn(async move { g.invoke(0, json!({"method": "x"})).await })
    };
    let next = http
        .get(format!("{base}/invocation/next"))
        .send()
        .await
        .unwrap();
    let id = next.headers()["lambda-runtime-aws-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let ack = http
        .post(format!("{base}/invocation/{id}/error"))
        .json(&json!({"errorType": "Oops", "errorMessage": "it broke"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 202);
    match invoking.await.unwrap() {
        Err(InvokeError::Function {
            error_type,
            message,
        }) => assert_eq!(
            (error_type.as_str(), message.as_str()),
            ("Oops", "it broke")
        ),
        other => panic!("expected the function's error, got {other:?}"),
    }
    // Nobody polls now: an invocation times out rather than hang.
    let r = gateway
        .invoke_within(0, json!({"method": "y"}), Duration::from_millis(200))
        .await;
    assert!(matches!(r, Err(InvokeError::Timeout(_))), "{r:?}");
    let log = gateway.invocations();
    assert_eq!(log.len(), 3);
    assert!(
        log.iter()
            .all(|i| i.kind == EventKind::Direct && i.finished.is_some())
    );
    assert_eq!(log[0].outcome, Some(Ok(json!({"delivered": 2}))));
    // An init error is recorded.
    let ack = http
        .post(format!("{base}/init/error"))
        .json(&json!({"errorType": "Init", "errorMessage": "no database"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 202);
    assert_eq!(
        gateway.state(0).unwrap().init_error,
        Some(json!({"errorType": "Init", "errorMessage": "no database"}))
    );
}

#[tokio::test]
async fn a_reply_is_acknowledged_only_once_the_process_is_frozen_and_drop_kills_it() {
    let gateway = Arc::new(emulator(1).await);
    let mut stand_in = tokio::process::Command::new("sleep")
        .arg("60")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = stand_in.id().unwrap();
    gateway.set_pid(0, pid);
    gateway.freeze_after_reply(0);
    let base = format!(
        "http://{}/2018-06-01/runtime",
        gateway.runtime_api(0).unwrap()
    );
    let http = reqwest::Client::new();
    let invoking = {
        let g = gateway.clone();
        tokio::spawn(async move { g.invoke(0, json!({"method": "m"})).await })
    };
    let next = http
        .get(format!("{base}/invocation/next"))
        .send()
        .await
        .unwrap();
    let id = next.headers()["lambda-runtime-aws-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!crate::emulator::runtime::all_threads_stopped(pid));
    let ack = http
        .post(format!("{base}/invocation/{id}/response"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 202);
    assert!(
        crate::emulator::runtime::all_threads_stopped(pid),
        "stopped before the reply was acknowledged"
    );
    let frozen_at = gateway.wait_frozen(0, WAIT).await.unwrap();
    assert_eq!(invoking.await.unwrap().unwrap(), json!({}));
    assert!(gateway.state(0).unwrap().frozen);
    assert!(frozen_at <= std::time::Instant::now());
    // Only the next reply freezes.
    assert!(!gateway.state(0).unwrap().freeze_next);
    assert!(gateway.resume(0));
    gateway
        .wait_for(WAIT, || {
            (!crate::emulator::runtime::all_threads_stopped(pid)).then_some(())
        })
        .await
        .expect("running again after SIGCONT");
    // Frozen again, then the gateway dropped: the process is resumed and killed.
    assert!(gateway.freeze(0).await);
    assert!(crate::emulator::runtime::all_threads_stopped(pid));
    drop(Arc::try_unwrap(gateway).ok().expect("one owner"));
    let status = tokio::time::timeout(WAIT, stand_in.wait())
        .await
        .expect("killed when the gateway is dropped")
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

/// A socket through the emulator played by [`play`], past `getId`.
async fn socket(gateway: &Gateway) -> Ws {
    crate::support::socket(gateway).await
}

#[tokio::test]
async fn sigv4_accepts_what_a_client_signs_and_refuses_anything_else() {
    let gateway = emulator(1).await;
    let function = play(&gateway, 0);
    let mut ws = socket(&gateway).await;
    // The function's own getId reply went through a signed POST.
    assert_eq!(gateway.bad_signatures(), 0);
    assert_eq!(ws.id.len(), 16);
    assert!(ws.id.ends_with('='));
    let url = connection_url(&gateway, &ws.id);
    assert!(url.ends_with("%3D"), "{url}");
    let creds = gateway.credentials().clone();
    let now = SystemTime::now;
    let default = SigningSettings::default;

    // Good: delivered.
    assert_eq!(signed_post(&url, b"{\"n\":1}", &creds).await, 200);
    assert_eq!(ws.frame().await, json!({"n": 1}));
    assert_eq!(gateway.bad_signatures(), 0);

    let mut refused = Vec::new();
    // A tampered body.
    refused.push((
        "tampered body",
        signed(
            "POST",
            &url,
            b"{\"n\":2}",
            b"{\"n\":3}",
            &creds,
            default(),
            now(),
        )
        .await,
    ));
    // Wrong secret key.
    let wrong_secret = AwsCredentials {
        secret_access_key: "not-the-secret".into(),
        ..creds.clone()
    };
    refused.push((
        "wrong secret",
        signed("POST", &url, b"x", b"x", &wrong_secret, default(), now()).await,
    ));
    // Wrong access key.
    let wrong_key = AwsCredentials {
        access_key_id: "AKIDSOMEONEELSE".into(),
        ..creds.clone()
    };
    refused.push((
        "wrong key",
        signed("POST", &url, b"x", b"x", &wrong_key, default(), now()).await,
    ));
    // Wrong session token.
    let wrong_token = AwsCredentials {
        session_token: "another-token".into(),
        ..creds.clone()
    };
    refused.push((
        "wrong token",
        signed("POST", &url, b"x", b"x", &wrong_token, default(), now()).await,
    ));
    // Wrong region.
    let wrong_region = AwsCredentials {
        region: "eu-west-1".into(),
        ..creds.clone()
    };
    refused.push((
        "wrong region",
        signed("POST", &url, b"x", b"x", &wrong_region, default(), now()).await,
    ));
    // A stale date (10 minutes ago).
    let stale = now() - Duration::from_secs(600);
    refused.push((
        "stale",
        signed("POST", &url, b"x", b"x", &creds, default(), stale).await,
    ));
    // The path encoded once in the canonical request (what S3 wants, not execute-api).
    let mut single = default();
    single.percent_encoding_mode = PercentEncodingMode::Single;
    refused.push((
        "single encoding",
        signed("POST", &url, b"x", b"x", &creds, single, now()).await,
    ));
    // No signature at all.
    let unsigned = reqwest::Client::new()
        .post(&url)
        .body("x")
        .send()
        .await
        .unwrap();
    refused.push(("unsigned", crate::support::read(unsigned).await));

    for (what, (status, headers, body)) in &refused {
        assert_eq!(*status, 403, "{what}: {body}");
        assert!(headers.contains_key("x-amzn-errortype"), "{what}");
        assert!(body["message"].is_string(), "{what}: {body}");
    }
    assert_eq!(
        refused[0].1.2["message"].as_str().unwrap(),
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method. Consult the service \
         documentation for details."
    );
    assert_eq!(gateway.bad_signatures(), refused.len());
    let calls = gateway.calls();
    let failures: Vec<_> = calls.iter().filter_map(|c| c.signature.clone()).collect();
    assert!(matches!(failures[0], SigFailure::Mismatch { .. }));
    assert!(matches!(failures[1], SigFailure::Mismatch { .. }));
    assert!(matches!(failures[2], SigFailure::UnknownAccessKey(_)));
    assert!(matches!(failures[3], SigFailure::WrongSessionToken));
    assert!(matches!(failures[4], SigFailure::WrongScope(_)));
    assert!(matches!(failures[5], SigFailure::Stale(_)));
    assert!(matches!(failures[6], SigFailure::Mismatch { .. }));
    assert!(matches!(failures[7], SigFailure::Missing));
    // None of them reached the socket.
    assert_eq!(drain(&gateway, &mut ws).await, Vec::<Value>::new());

    // GET describes the connection; DELETE closes it, then it is gone.
    let (s, _, info) = signed("GET", &url, b"", b"", &creds, default(), now()).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["Identity"]["SourceIp"], "127.0.0.1");
    assert!(info["ConnectedAt"].as_str().unwrap().ends_with('Z'));
    assert!(info["LastActiveAt"].is_string());
    let (s, _, _) = signed("DELETE", &url, b"", b"", &creds, default(), now()).await;
    assert_eq!(s, 204);
    assert_eq!(closed_by_server(&mut ws).await, Some(1000));
    gateway.wait_disconnected(&ws.id, WAIT).await.unwrap();
    let (s, h, body) = signed("POST", &url, b"x", b"x", &creds, default(), now()).await;
    assert_eq!((s, &body), (410, &json!({"message": "GoneException"})));
    assert_eq!(h["x-amzn-errortype"], "GoneException");
    let (s, _, _) = signed("GET", &url, b"", b"", &creds, default(), now()).await;
    assert_eq!(s, 410);
    assert_eq!(gateway.bad_signatures(), refused.len());
    drop(function);
}

#[tokio::test]
async fn injected_410_429_403_and_delays_behave_as_api_gateway() {
    let gateway = emulator(1).await;
    let _function = play(&gateway, 0);
    let mut ws = socket(&gateway).await;
    let url = connection_url(&gateway, &ws.id);
    let creds = gateway.credentials().clone();

    gateway.inject(&ws.id, Fault::Status(410, 1));
    let (s, h, body) = signed(
        "POST",
        &url,
        b"\"a\"",
        b"\"a\"",
        &creds,
        SigningSettings::default(),
        SystemTime::now(),
    )
    .await;
    assert_eq!((s, &body), (410, &json!({"message": "GoneException"})));
    assert_eq!(h["x-amzn-errortype"], "GoneException");
    assert_eq!(signed_post(&url, b"\"b\"", &creds).await, 200);

    gateway.inject(&ws.id, Fault::Status(429, 2));
    let (s, h, body) = signed(
        "POST",
        &url,
        b"\"c\"",
        b"\"c\"",
        &creds,
        SigningSettings::default(),
        SystemTime::now(),
    )
    .await;
    assert_eq!(
        (s, &body),
        (429, &json!({"message": "LimitExceededException"}))
    );
    assert_eq!(h["x-amzn-errortype"], "LimitExceededException");
    assert_eq!(signed_post(&url, b"\"c\"", &creds).await, 429);
    assert_eq!(signed_post(&url, b"\"c\"", &creds).await, 200);

    gateway.inject(&ws.id, Fault::Status(403, 1));
    assert_eq!(signed_post(&url, b"\"d\"", &creds).await, 403);
    gateway.inject(&ws.id, Fault::Status(413, 1));
    assert_eq!(signed_post(&url, b"\"e\"", &creds).await, 413);
    // Over 128 KB: refused by the gateway itself.
    let big = format!("\"{}\"", "x".repeat(130 * 1024));
    assert_eq!(signed_post(&url, big.as_bytes(), &creds).await, 413);

    gateway.inject(&ws.id, Fault::Delay(Duration::from_millis(300), 1));
    assert_eq!(signed_post(&url, b"\"f\"", &creds).await, 200);

    // Only the frames answered 200 arrived, each once, in order.
    assert_eq!(
        drain(&gateway, &mut ws).await,
        vec![json!("b"), json!("c"), json!("f")]
    );
    let posts = gateway.posts_to(&ws.id);
    let statuses: Vec<u16> = posts.iter().map(|c| c.status).collect();
    // The function's post during $connect (too early), its getId reply, then the test's.
    assert_eq!(
        statuses,
        [410, 200, 410, 200, 429, 429, 200, 403, 413, 413, 200]
    );
    let slow = posts.last().unwrap();
    assert!(slow.answered - slow.received >= Duration::from_millis(300));
    assert_eq!(
        slow.fault,
        Some(Fault::Delay(Duration::from_millis(300), 1))
    );
    assert!(posts.iter().all(|c| c.raw_path.ends_with("%3D")));
    assert_eq!(gateway.bad_signatures(), 0);
}

#[tokio::test]
async fn websocket_front_sends_connect_message_disconnect_as_api_gateway() {
    let gateway = emulator(2).await;
    let f0 = play(&gateway, 0);
    let f1 = play(&gateway, 1);
    let seen = || {
        let mut all: Vec<Value> = f0.seen.lock().unwrap().clone();
        all.extend(f1.seen.lock().unwrap().clone());
        all
    };

    // A connect with a query and headers; an id with '+' and '/' round-trips percent-encoded.
    gateway.set_next_connection_id("ab+cd/efGHIJKLM=");
    let (stream, response) =
        tokio_tungstenite::connect_async(format!("{}?token=t%201&room=r", gateway.ws_url()))
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    let mut ws = Ws {
        stream,
        id: String::new(),
    };
    assert_eq!(ws.get_id().await, "ab+cd/efGHIJKLM=");
    let connect = seen()
        .into_iter()
        .find(|e| EventKind::of(e) == EventKind::Connect)
        .unwrap();
    assert_eq!(
        connect["queryStringParameters"],
        json!({"token": "t 1", "room": "r"})
    );
    assert_eq!(
        connect["requestContext"]["connectionId"],
        "ab+cd/efGHIJKLM="
    );
    assert!(connect["headers"]["sec-websocket-key"].is_string());
    assert_eq!(connect["headers"]["X-Forwarded-For"], "127.0.0.1");
    // A post while $connect was running failed: the connection did not exist yet.
    assert_eq!(f0.early_posts.lock().unwrap().clone(), [410]);
    let message = seen()
        .into_iter()
        .find(|e| EventKind::of(e) == EventKind::Message)
        .unwrap();
    assert_eq!(message["body"], "getId");
    assert!(message.get("headers").is_none());
    // The frame reaches the client before its POST is answered and recorded.
    gateway
        .wait_calls(WAIT, |calls| {
            calls.iter().any(|c| {
                c.raw_path.ends_with("/ab%2Bcd%2FefGHIJKLM%3D")
                    && c.connection_id.as_deref() == Some("ab+cd/efGHIJKLM=")
                    && c.status == 200
            })
        })
        .await
        .unwrap();

    // A failed $default invocation: API Gateway tells the client.
    ws.stream.send(Message::text("fail")).await.unwrap();
    let error = ws.frame().await;
    assert_eq!(error["message"], "Internal server error");
    assert_eq!(error["connectionId"], "ab+cd/efGHIJKLM=");

    // A client close: $disconnect with its code and reason, routed where asked.
    gateway.route_connection(&ws.id, Some(1));
    ws.stream
        .send(Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 4000.into(),
                reason: "bye".into(),
            },
        )))
        .await
        .unwrap();
    gateway.wait_disconnected(&ws.id, WAIT).await.unwrap();
    let d = gateway
        .invocations()
        .into_iter()
        .find(|i| i.kind == EventKind::Disconnect)
        .unwrap();
    assert_eq!(d.instance, 1);
    assert_eq!(d.event["requestContext"]["disconnectStatusCode"], 4000);
    assert_eq!(d.event["requestContext"]["disconnectReason"], "bye");
    assert_eq!(d.event["requestContext"]["routeKey"], "$disconnect");

    // A binary frame: closed with 1003, then $disconnect.
    let mut b = socket(&gateway).await;
    b.stream
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(closed_by_server(&mut b).await, Some(1003));
    gateway.wait_disconnected(&b.id, WAIT).await.unwrap();
    assert_eq!(
        gateway
            .sockets()
            .iter()
            .find(|s| s.connection_id == b.id)
            .unwrap()
            .close_code,
        Some(1003)
    );

    // A dropped TCP connection: 1006.
    let c = socket(&gateway).await;
    let c_id = c.id.clone();
    drop(c);
    gateway.wait_disconnected(&c_id, WAIT).await.unwrap();
    assert_eq!(
        gateway
            .sockets()
            .iter()
            .find(|s| s.connection_id == c_id)
            .unwrap()
            .close_code,
        Some(1006)
    );

    // Lost disconnects: no $disconnect at all.
    gateway.lose_disconnects(true);
    let mut d2 = socket(&gateway).await;
    let d2_id = d2.id.clone();
    close(&mut d2).await;
    gateway.wait_disconnected(&d2_id, WAIT).await.unwrap();
    assert!(
        !gateway
            .invocations()
            .iter()
            .any(|i| i.kind == EventKind::Disconnect && i.connection_id.as_deref() == Some(&d2_id))
    );

    // $connect answered 401: the upgrade is refused with it.
    let refused = tokio_tungstenite::connect_async(format!("{}?reject=1", gateway.ws_url())).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!(
            "expected a refused upgrade, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    // Anything but the stage path is not the API.
    let wrong = tokio_tungstenite::connect_async(gateway.ws_url().replace("/dev", "/prod")).await;
    assert!(wrong.is_err());
    // Default routing is round robin over the instances.
    let instances: std::collections::BTreeSet<usize> =
        gateway.invocations().iter().map(|i| i.instance).collect();
    assert_eq!(instances.len(), 2);
    assert_eq!(gateway.bad_signatures(), 0);
}

#[tokio::test]
async fn rest_fronts_build_payload_1_and_2_events_and_map_the_answers_back() {
    let gateway = emulator(1).await;
    let _function = play(&gateway, 0);
    let http = reqwest::Client::new();
    let url = |payload| {
        format!(
            "{}/messaging/things/a%20b?x=1&x=2&y=z",
            gateway.rest_url_for(payload)
        )
    };

    // Payload 1.0.
    let resp = http
        .post(url(Payload::V1))
        .header("cookie", "k1=v1; k2=v2")
        .header("x-forwarded-for", "10.9.8.7")
        .body("{\"hello\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let h = resp.headers().clone();
    let multi: Vec<_> = h
        .get_all("x-multi")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(multi, ["a", "b"]);
    assert_eq!(h["x-single"], "s");
    let both: Vec<_> = h.get_all("x-both").iter().collect();
    assert_eq!(both, ["from-multi"], "multiValueHeaders win over headers");
    assert!(
        h.get("set-cookie").is_none(),
        "payload 1.0 has no cookies field"
    );
    let event: Value = resp.json().await.unwrap();
    assert_eq!(event["httpMethod"], "POST");
    assert_eq!(event["path"], "/messaging/things/a%20b");
    assert_eq!(
        event["requestContext"]["path"],
        "/dev/messaging/things/a%20b"
    );
    assert_eq!(event["requestContext"]["stage"], "dev");
    assert_eq!(event["pathParameters"]["proxy"], "messaging/things/a b");
    assert_eq!(
        event["multiValueQueryStringParameters"]["x"],
        json!(["1", "2"])
    );
    assert_eq!(event["queryStringParameters"]["x"], "2");
    assert_eq!(event["headers"]["cookie"], "k1=v1; k2=v2");
    assert_eq!(event["headers"]["X-Forwarded-For"], "10.9.8.7, 127.0.0.1");
    assert_eq!(event["requestContext"]["identity"]["sourceIp"], "127.0.0.1");
    assert_eq!(event["body"], "{\"hello\":1}");
    assert_eq!(event["isBase64Encoded"], false);
    assert!(event["headers"].get("x-gateway-instance").is_none());

    // Payload 2.0.
    let resp = http
        .post(url(Payload::V2))
        .header("cookie", "k1=v1; k2=v2")
        .body(vec![0xffu8, 0, 1])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let h = resp.headers().clone();
    assert!(
        h.get("x-multi").is_none(),
        "payload 2.0 ignores multiValueHeaders"
    );
    assert_eq!(h["x-both"], "from-headers");
    let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["c1=v1", "c2=v2"]);
    let event: Value = resp.json().await.unwrap();
    assert_eq!(event["version"], "2.0");
    assert_eq!(event["rawPath"], "/dev/messaging/things/a%20b");
    assert_eq!(event["rawQueryString"], "x=1&x=2&y=z");
    assert_eq!(event["queryStringParameters"]["x"], "1,2");
    assert_eq!(event["cookies"], json!(["k1=v1", "k2=v2"]));
    assert_eq!(event["requestContext"]["http"]["method"], "POST");
    assert_eq!(event["requestContext"]["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(event["isBase64Encoded"], true);
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(event["body"].as_str().unwrap())
            .unwrap(),
        [0xff, 0, 1]
    );

    // A base64 answer is decoded, on both payloads.
    for payload in [Payload::V1, Payload::V2] {
        let resp = http
            .get(format!("{}/binary", gateway.rest_url_for(payload)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap().as_ref(), [0xff, 0, 1]);
    }
    // Outside the stage: not the API.
    let resp = http
        .get(gateway.rest_url().replace("/dev", "/prod"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(gateway.invocations().len(), 4);
}

#[tokio::test]
async fn rest_front_maps_function_errors_and_malformed_answers_to_502() {
    let gateway = Arc::new(emulator(1).await);
    let base = format!(
        "http://{}/2018-06-01/runtime",
        gateway.runtime_api(0).unwrap()
    );
    let http = reqwest::Client::new();
    for (payload, answer, expected) in [
        (Payload::V1, Some(json!({"body": "no status"})), 502),
        (Payload::V1, None, 502),
        (Payload::V2, Some(json!({"plain": "object"})), 200),
        (Payload::V2, None, 502),
    ] {
        let request = {
            let url = format!("{}/messaging/x", gateway.rest_url_for(payload));
            tokio::spawn(async move { reqwest::get(url).await.unwrap() })
        };
        let next = http
            .get(format!("{base}/invocation/next"))
            .send()
            .await
            .unwrap();
        let id = next.headers()["lambda-runtime-aws-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        match &answer {
            Some(a) => {
                http.post(format!("{base}/invocation/{id}/response"))
                    .json(a)
                    .send()
                    .await
                    .unwrap();
            }
            None => {
                http.post(format!("{base}/invocation/{id}/error"))
                    .json(&json!({"errorType": "E", "errorMessage": "m"}))
                    .send()
                    .await
                    .unwrap();
            }
        }
        let resp = request.await.unwrap();
        assert_eq!(resp.status(), expected, "{payload:?} {answer:?}");
        let body: Value = resp.json().await.unwrap();
        if expected == 502 {
            assert_eq!(body, json!({"message": "Internal server error"}));
        } else {
            assert_eq!(
                body,
                json!({"plain": "object"}),
                "payload 2.0 takes a bare object as the body"
            );
        }
    }
}
