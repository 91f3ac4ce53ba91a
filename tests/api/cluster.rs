//! Several nodes as one service (§5.4): three nodes on one PostgreSQL or MariaDB database
//! and one broker (Redis or NATS), every call sent to a node other than the socket's holder.
//! Each body runs for the four database × broker pairs; each test has a channel prefix of
//! its own.
use std::collections::HashMap;
use std::time::Duration;

use futures::SinkExt;
use messaging::pb;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use crate::server_test;

/// `count` nodes on `db`, each with the broker at `broker` and one channel prefix.
async fn nodes(db: &TestDb, broker: &[String]) -> Vec<TestApp> {
    nodes_holding(db, broker, None).await
}

/// `nodes`, with a hold time for held frames (`BROKER_HOLD_MS`) other than the default.
async fn nodes_holding(db: &TestDb, broker: &[String], hold_ms: Option<u64>) -> Vec<TestApp> {
    let prefix = format!("test-{}", messaging::ids::new_id());
    let mut out = Vec::new();
    for url in broker {
        let mut s = settings(db);
        s.broker_url = Some(url.clone());
        s.broker_prefix = prefix.clone();
        if let Some(ms) = hold_ms {
            s.broker_hold_ms = ms;
        }
        out.push(TestApp::spawn_with(s).await);
    }
    out
}

/// One socket on each node, joined to `room` through another node; returns once each has
/// seen attendance for all of them.
async fn one_socket_per_node(n: &[TestApp], room: &str) -> Vec<Ws> {
    let mut sockets = Vec::new();
    for holder in 0..n.len() {
        let ws = n[holder].ws_with_id().await;
        n[(holder + 1) % n.len()]
            .join_one(room, &ws.id, &format!("s{holder}"))
            .await;
        sockets.push(ws);
    }
    for ws in &mut sockets {
        ws.until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == n.len())
            .await;
    }
    sockets
}

/// Asserts that every socket's next `message` frames are `expected`, in order.
async fn every_socket_gets(sockets: &mut [Ws], expected: &[&str]) {
    let last = expected.last().expect("something expected");
    for (holder, ws) in sockets.iter_mut().enumerate() {
        assert_eq!(
            contents_until(ws, last).await,
            expected,
            "socket on node {holder}"
        );
    }
}

/// A message frame published held by `app`, as a post does before its write.
fn hold_message(
    app: &TestApp,
    room: &str,
    content: &str,
) -> Box<dyn messaging::cluster::HeldFrame> {
    use messaging::hub::{Action, Audience};
    app.svc.send_held(
        &Audience::room("C1", room),
        room,
        Action::Message,
        &json!({ "content": content }),
    )
}

/// The `message` frames' contents a socket gets until (and with) the one saying `last`.
async fn contents_until(ws: &mut Ws, last: &str) -> Vec<String> {
    ws.until(|f| f["action"] == "message" && f["data"]["content"] == last)
        .await
        .iter()
        .filter(|f| f["action"] == "message")
        .filter_map(|f| f["data"]["content"].as_str().map(str::to_string))
        .collect()
}

/// Frames of action `message` until one per publisher says `end`; returns each publisher's
/// sequence numbers in arrival order.
async fn messages_until_ends(ws: &mut Ws, publishers: usize) -> HashMap<u64, Vec<u64>> {
    let mut seen: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut ended = 0;
    while ended < publishers {
        let f = ws.next_action("message").await;
        let data = &f["data"];
        if data["end"] == true {
            ended += 1;
            continue;
        }
        let (Some(p), Some(seq)) = (data["pub"].as_u64(), data["seq"].as_u64()) else {
            continue;
        };
        seen.entry(p).or_default().push(seq);
    }
    seen
}

async fn grpc_send_on(app: &TestApp, room: &str, data: Value) -> u32 {
    app.grpc_send("C1", room, &data).await
}

server_test!(three_nodes_serve_every_call_as_one, cluster);
async fn three_nodes_serve_every_call_as_one(db: TestDb, broker: String) {
    let n = nodes(&db, &[broker.clone(), broker.clone(), broker]).await;
    let room = n[0].conversation("C1", "streamingLive", true).await;
    // Two sockets on each node; each joined through the next node, not its holder.
    let mut sockets = Vec::new();
    for holder in 0..3 {
        for k in 0..2 {
            let ws = n[holder].ws_with_id().await;
            let via = &n[(holder + 1 + k) % 3];
            let rows = via.join_one(&room, &ws.id, &format!("s{holder}{k}")).await;
            assert_eq!(rows[0]["socketId"], ws.id.as_str());
            sockets.push((holder, ws));
        }
    }
    // The rows name their holders, whichever node wrote them.
    let rows = n[0].store.room_rows("C1", &room).await.unwrap();
    assert_eq!(rows.len(), 6);
    for (holder, ws) in &sockets {
        let row = rows.iter().find(|r| r.socket_id == ws.id).unwrap();
        assert_eq!(row.node_id, n[*holder].node_id);
    }
    // Attendance counts the rows of every node.
    for (_, ws) in &mut sockets {
        ws.until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 6)
            .await;
    }
    // A socket no node holds is still unknown, on every node.
    for app in &n {
        let (st, body) = app
            .post(
                "/messaging/connections",
                None,
                &json!([{"conversationId": room, "socketId": "NOSUCHSOCKT"}]),
            )
            .await;
        assert_eq!((st, body), (404, json!({"error": "Socket not found"})));
    }
    // One publisher per node, over gRPC, then over REST: every socket gets every frame once,
    // in each publisher's order.
    const SENDS: u64 = 30;
    for seq in 0..SENDS {
        for (p, app) in n.iter().enumerate() {
            let delivered = grpc_send_on(app, &room, json!({"pub": p, "seq": seq})).await;
            assert_eq!(delivered, 2, "local sockets of node {p}");
        }
    }
    for app in &n {
        grpc_send_on(app, &room, json!({"end": true})).await;
    }
    for (holder, ws) in &mut sockets {
        let seen = messages_until_ends(ws, 3).await;
        for p in 0..3u64 {
            assert_eq!(
                seen.get(&p).cloned().unwrap_or_default(),
                (0..SENDS).collect::<Vec<_>>(),
                "socket on node {holder}, publisher {p}"
            );
        }
    }
    for (p, app) in n.iter().enumerate() {
        let (st, _) = app
            .post(
                "/messaging/messages/send",
                None,
                &json!([{"conversationId": room, "content": format!("hello from {p}"), "displayName": "Guest"}]),
            )
            .await;
        assert_eq!(st, 200);
    }
    for (_, ws) in &mut sockets {
        let mut got = Vec::new();
        while got.len() < 3 {
            let f = ws.next_action("message").await;
            if let Some(c) = f["data"]["content"].as_str() {
                got.push(c.to_string());
            }
        }
        got.sort();
        assert_eq!(got, ["hello from 0", "hello from 1", "hello from 2"]);
    }
    // setName through another node: the holder's room sees the new name.
    let (holder0, renamed) = (&sockets[0].0, sockets[0].1.id.clone());
    let (st, body) = n[(holder0 + 2) % 3]
        .post(
            "/messaging/connections/setName",
            None,
            &json!({"socketId": renamed, "name": "Renamed"}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    for (_, ws) in &mut sockets {
        ws.until(|f| {
            f["action"] == "attendance"
                && f["data"]["viewers"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x["displayName"] == "Renamed"))
        })
        .await;
    }
    // A leave through another node: the socket gets nothing more of the room, the rest see
    // five viewers.
    let (holder, mut left) = sockets.remove(2);
    let (st, _) = n[(holder + 2) % 3]
        .delete(
            &format!("/messaging/connections/C1/{room}/{}", left.id),
            None,
        )
        .await;
    assert_eq!(st, 200);
    for app in &n {
        grpc_send_on(app, &room, json!({"after": "leave"})).await;
    }
    for (_, ws) in &mut sockets {
        ws.until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 5)
            .await;
    }
    let others: Vec<&TestApp> = n.iter().collect();
    for app in &others {
        grpc_send_on(app, &room, json!({"end": true})).await;
    }
    for (_, ws) in &mut sockets {
        let mut ends = 0;
        while ends < 3 {
            let f = ws.next_action("message").await;
            if f["data"]["end"] == true {
                ends += 1;
            }
        }
    }
    left.stream.send(Message::text("getId")).await.unwrap();
    let after = left.until(|f| f["action"] == "socketId").await;
    assert!(
        !after.iter().any(|f| f["data"]["after"] == "leave"),
        "a left socket got {after:?}"
    );
}

server_test!(
    one_publisher_round_robin_keeps_its_order_on_every_node,
    cluster
);
/// One publisher sends consecutive frames to one room, each through the next node (REST and
/// gRPC mixed) and each only after the previous reply, as behind a round-robin load
/// balancer: every socket on every node gets every frame exactly once, in publish order.
/// A node that delivered its own publishes to its sockets at once let frame n+1 (through
/// node B) overtake frame n (through node A, still on its way through the broker).
async fn one_publisher_round_robin_keeps_its_order_on_every_node(db: TestDb, broker: String) {
    let n = nodes(&db, &[broker.clone(), broker.clone(), broker]).await;
    let room = n[0].conversation("C1", "streamingLive", true).await;
    let mut sockets = Vec::new();
    for (holder, app) in n.iter().enumerate() {
        for k in 0..2 {
            let ws = app.ws_with_id().await;
            app.join_one(&room, &ws.id, &format!("o{holder}{k}")).await;
            sockets.push((holder, ws));
        }
    }
    for (_, ws) in &mut sockets {
        ws.until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 6)
            .await;
    }
    // One client per node, kept: a fresh gRPC connection per send would hide the race
    // behind its own set-up time.
    let mut grpc = Vec::new();
    for app in &n {
        grpc.push(app.delivery().await);
    }
    const SENDS: u64 = 240;
    for seq in 0..=SENDS {
        let node = (seq % 3) as usize;
        if seq % 4 == 3 {
            let (st, body) = n[node]
                .post(
                    "/messaging/messages/send",
                    None,
                    &json!([{"conversationId": room, "content": format!("order {seq}"), "displayName": "Guest"}]),
                )
                .await;
            assert_eq!(st, 200, "{body}");
        } else {
            let data = if seq == SENDS {
                json!({"end": true})
            } else {
                json!({"order": seq})
            };
            grpc[node]
                .send_conversation_messages(pb::SendConversationMessagesRequest {
                    church_id: "C1".into(),
                    conversation_id: room.clone(),
                    action: "message".into(),
                    data: data.to_string(),
                })
                .await
                .expect("send");
        }
    }
    for (holder, ws) in &mut sockets {
        let mut got = Vec::new();
        loop {
            let f = ws.next_action("message").await;
            let d = &f["data"];
            if d["end"] == true {
                break;
            }
            if let Some(seq) = d["order"].as_u64().or_else(|| {
                d["content"]
                    .as_str()
                    .and_then(|c| c.strip_prefix("order "))
                    .and_then(|s| s.parse().ok())
            }) {
                got.push(seq);
            }
        }
        let reordered = got.windows(2).filter(|w| w[0] >= w[1]).count();
        assert_eq!(
            got,
            (0..SENDS).collect::<Vec<_>>(),
            "socket on node {holder}: {} frames, {reordered} out of order",
            got.len()
        );
        // Nothing comes twice, not even after the end.
        ws.stream.send(Message::text("getId")).await.unwrap();
        let after = ws.until(|f| f["action"] == "socketId").await;
        assert!(
            !after.iter().any(|f| f["action"] == "message"),
            "socket on node {holder} got more after the end: {after:?}"
        );
    }
}

server_test!(alerts_reach_only_that_persons_sockets_on_any_node, cluster);
async fn alerts_reach_only_that_persons_sockets_on_any_node(db: TestDb, broker: String) {
    let n = nodes(&db, &[broker.clone(), broker.clone(), broker]).await;
    let p1 = n[0].token("C1", "P1", &[]);
    let p2 = n[0].token("C1", "P2", &[]);
    // P1 has a tab on node 1 and one on node 2; P2 one on node 0. Joined through other nodes.
    let mut p1_a = n[1].ws_with_id().await;
    let mut p1_b = n[2].ws_with_id().await;
    let mut p2_a = n[0].ws_with_id().await;
    n[0].join(
        Some(&p1),
        json!([{"conversationId": "alerts", "socketId": p1_a.id}]),
    )
    .await;
    n[1].join(
        Some(&p1),
        json!([{"conversationId": "alerts", "socketId": p1_b.id}]),
    )
    .await;
    n[2].join(
        Some(&p2),
        json!([{"conversationId": "alerts", "socketId": p2_a.id}]),
    )
    .await;
    for (i, app) in n.iter().enumerate() {
        let r = app
            .delivery()
            .await
            .send_to_person(pb::SendToPersonRequest {
                church_id: "C1".into(),
                person_id: "P1".into(),
                conversation_id: "alert".into(),
                action: "notification".into(),
                data: json!({"i": i}).to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        // Only the local sockets are counted; node 0 holds none of P1's.
        assert_eq!(r.delivered, u32::from(i != 0));
    }
    for ws in [&mut p1_a, &mut p1_b] {
        let mut got = Vec::new();
        while got.len() < 3 {
            let f = ws.next_action("notification").await;
            got.push(f["data"]["i"].as_u64().unwrap());
        }
        got.sort();
        assert_eq!(got, [0, 1, 2]);
    }
    p2_a.stream.send(Message::text("getId")).await.unwrap();
    let seen = p2_a.until(|f| f["action"] == "socketId").await;
    assert!(
        !seen.iter().any(|f| f["action"] == "notification"),
        "{seen:?}"
    );
}

server_test!(
    a_broker_outage_keeps_sockets_and_local_delivery_then_resumes,
    cluster
);
async fn a_broker_outage_keeps_sockets_and_local_delivery_then_resumes(db: TestDb, broker: String) {
    let upstream = broker
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/').to_string())
        .unwrap();
    let scheme = broker.split_once("://").unwrap().0.to_string();
    let proxy = Proxy::start(upstream).await;
    let via_proxy = format!("{scheme}://{}", proxy.addr);
    let n = nodes(&db, &[via_proxy, broker]).await;
    let room = n[0].conversation("C1", "streamingLive", true).await;
    let mut on_a = n[0].ws_with_id().await;
    let mut on_b = n[1].ws_with_id().await;
    n[0].join_one(&room, &on_a.id, "a").await;
    n[1].join_one(&room, &on_b.id, "b").await;
    on_a.until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 2)
        .await;
    let (st, _) = n[0].get("/ready", None).await;
    assert_eq!(st, 200);
    proxy.cut();
    eventually("node A reports the broker unreachable", || async {
        n[0].get("/ready", None).await.0 == 503
    })
    .await;
    // gRPC health follows.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", n[0].grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    eventually(
        "gRPC health NOT_SERVING while the broker is unreachable",
        || {
            let mut health = health.clone();
            async move {
                let r = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: "messaging.v1.Delivery".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                r.status
                    == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
            }
        },
    )
    .await;
    // Sockets stay open and local delivery goes on.
    assert_eq!(grpc_send_on(&n[0], &room, json!({"during": 1})).await, 1);
    assert_eq!(on_a.next_action("message").await["data"]["during"], 1);
    proxy.restore();
    eventually("node A ready again", || async {
        n[0].get("/ready", None).await.0 == 200
    })
    .await;
    // Cross-node delivery resumes, both ways: B sends probes until one reaches A (each
    // given 100 ms before the next), within WAIT. How soon after the broker's return is
    // measured once, on the broker itself (broker::outage_drops_then_resumes_within_5s).
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seq = 0;
    loop {
        seq += 1;
        grpc_send_on(&n[1], &room, json!({"probe": seq})).await;
        if let Some(t) = on_a.try_text(Duration::from_millis(100)).await
            && t.contains("probe")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery {WAIT:?} after the broker came back"
        );
    }
    grpc_send_on(&n[0], &room, json!({"both": "ways"})).await;
    loop {
        let f = on_b.next_action("message").await;
        if f["data"]["both"] == "ways" {
            break;
        }
    }
}

/// A node as a separate process: the real binary, on ports picked here.
struct Process {
    child: std::process::Child,
    http: std::net::SocketAddr,
    ws: std::net::SocketAddr,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Process {
    /// `sweep_secs`: its `SWEEP_INTERVAL_SECS`; its lease lasts three of them.
    async fn start(db: &TestDb, broker: &str, prefix: &str, sweep_secs: &str) -> Self {
        let (http, ws, grpc) = (free_port(), free_port(), free_port());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_messaging"))
            .arg("serve")
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", http.to_string())
            .env("SOCKET_PORT", ws.to_string())
            .env("GRPC_PORT", grpc.to_string())
            .env("DATABASE_URL", &db.url)
            .env("JWT_SECRET", SECRET)
            .env("BROKER_URL", broker)
            .env("BROKER_PREFIX", prefix)
            .env("SWEEP_INTERVAL_SECS", sweep_secs)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the binary");
        let p = Self {
            child,
            http: ([127, 0, 0, 1], http).into(),
            ws: ([127, 0, 0, 1], ws).into(),
        };
        let client = reqwest::Client::new();
        let url = format!("http://{}/ready", p.http);
        eventually("the process is ready", || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        p
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

server_test!(
    a_killed_node_is_purged_and_a_stopped_one_leaves_at_once,
    cluster
);
async fn a_killed_node_is_purged_and_a_stopped_one_leaves_at_once(db: TestDb, broker: String) {
    let prefix = format!("test-{}", messaging::ids::new_id());
    let mut s = settings(&db);
    s.broker_url = Some(broker.clone());
    s.broker_prefix = prefix.clone();
    s.sweep_interval_secs = 0.5;
    let a = TestApp::spawn_with(s).await;
    let room = a.conversation("C1", "streamingLive", true).await;
    let mut watcher = a.ws_with_id().await;
    a.join_one(&room, &watcher.id, "watcher").await;
    // The one stopped holds a lease of three minutes, far past this test: no sweep can
    // remove its rows meanwhile, so the room hearing of its leaving shows that the stop did
    // it. The one killed holds a lease of 1.5 s, which A's sweep finds run out.
    let mut stopped = Process::start(&db, &broker, &prefix, "60").await;
    let mut killed = Process::start(&db, &broker, &prefix, "0.5").await;
    // A socket on each process, joined through node A (which forwards to the holder).
    let mut on_stopped = Ws::connect(&format!("ws://{}/", stopped.ws)).await;
    on_stopped.get_id().await;
    let mut on_killed = Ws::connect(&format!("ws://{}/", killed.ws)).await;
    on_killed.get_id().await;
    a.join_one(&room, &on_stopped.id, "stopped").await;
    a.join_one(&room, &on_killed.id, "killed").await;
    watcher
        .until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 3)
        .await;
    // SIGTERM: the node closes its sockets with 1001, deletes its rows and tells the room
    // itself (its lease would keep them for minutes).
    stopped.signal("-TERM");
    assert_eq!(on_stopped.close_code().await, Some(1001));
    watcher
        .until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 2)
        .await;
    assert!(stopped.child.wait().unwrap().success());
    // kill -9: nothing is said; the sweep of a live node purges the rows once the lease
    // (three sweep intervals) has run out, and the room is told.
    let killed_node = a
        .store
        .room_rows("C1", &room)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.socket_id == on_killed.id)
        .unwrap()
        .node_id;
    killed.signal("-KILL");
    let _ = killed.child.wait();
    watcher
        .until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 1)
        .await;
    let rows = a.store.room_rows("C1", &room).await.unwrap();
    assert!(rows.iter().all(|r| r.node_id == a.node_id), "{rows:?}");
    use sea_orm::EntityTrait;
    assert!(
        messaging::store::entities::nodes::Entity::find_by_id(killed_node)
            .one(&a.db)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_broker_with_sqlite_refuses_to_start() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut s = settings(&db);
    s.broker_url = Some("redis://127.0.0.1:1".into());
    let listeners = messaging::Listeners {
        http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        socket: None,
        grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let err = match messaging::Application::build_with_listeners(s, listeners).await {
        Ok(_) => panic!("a broker with SQLite started"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("BROKER_URL needs a database that every node shares"),
        "{err}"
    );
}

server_test!(
    a_failed_post_reaches_no_socket_and_holds_up_nothing,
    cluster
);
/// A post's frames are published held before its write; when the write fails they are
/// withdrawn on every node. The hold time is far longer than the test's waits, so a frame
/// left held would stop the room's next frames from arriving at all.
async fn a_failed_post_reaches_no_socket_and_holds_up_nothing(db: TestDb, broker: String) {
    use sea_orm::ConnectionTrait;
    let n = nodes_holding(
        &db,
        &[broker.clone(), broker.clone(), broker],
        Some(600_000),
    )
    .await;
    let room = n[0].conversation("C1", "streamingLive", true).await;
    let mut sockets = one_socket_per_node(&n, &room).await;
    refuse_content(&n[0].db_url, "refused").await;
    let post = |k: usize, content: &str| {
        let body = json!([{"conversationId": room, "content": content, "displayName": "Guest"}]);
        let app = &n[k];
        async move { app.post("/messaging/messages/send", None, &body).await }
    };
    let (st, body) = post(0, "before").await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = post(1, "refused").await;
    assert_eq!(st, 500, "{body}");
    let (st, body) = post(2, "after").await;
    assert_eq!(st, 200, "{body}");
    every_socket_gets(&mut sockets, &["before", "after"]).await;
    // Nothing was stored either.
    let conn = sea_orm::Database::connect(n[0].db_url.as_str())
        .await
        .expect("connect");
    let rows = conn
        .query_all_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT content FROM messages ORDER BY content".to_string(),
        ))
        .await
        .expect("select");
    let stored: Vec<String> = rows
        .iter()
        .map(|r| r.try_get_by_index::<String>(0).expect("content"))
        .collect();
    assert_eq!(stored, ["after", "before"]);
}

server_test!(
    a_held_frame_never_released_expires_and_the_room_goes_on,
    cluster
);
/// A node that dies between publishing a post's frames and its commit never releases nor
/// withdraws them: every node drops them after the hold time, then delivers what waited.
async fn a_held_frame_never_released_expires_and_the_room_goes_on(db: TestDb, broker: String) {
    const HOLD_MS: u64 = 300;
    let n = nodes_holding(
        &db,
        &[broker.clone(), broker.clone(), broker],
        Some(HOLD_MS),
    )
    .await;
    let room = n[0].conversation("C1", "streamingLive", true).await;
    let mut sockets = one_socket_per_node(&n, &room).await;
    // Taken before the held frame exists, so its whole hold falls after this instant.
    let sent = std::time::Instant::now();
    let held = hold_message(&n[0], &room, "orphan");
    // As if node 0 died now: no release, no withdrawal.
    std::mem::forget(held);
    n[0].svc.settle().await;
    n[1].grpc_send("C1", &room, &json!({"content": "next"}))
        .await;
    every_socket_gets(&mut sockets, &["next"]).await;
    // "next" waited behind the held frame until that one expired. A lower bound on the
    // clock, which is what a hold is: a slow machine only makes the wait longer.
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(HOLD_MS * 2 / 3),
        "delivered after {waited:?}: the orphan frame was not held"
    );
}

server_test!(
    with_held_frames_off_a_post_publishes_after_its_commit,
    cluster
);
/// `BROKER_HOLD_MS=0`: a post's frames go out on release, after the commit, so nothing
/// another node publishes meanwhile waits behind them.
async fn with_held_frames_off_a_post_publishes_after_its_commit(db: TestDb, broker: String) {
    let n = nodes_holding(&db, &[broker.clone(), broker.clone(), broker], Some(0)).await;
    let room = n[0].conversation("C1", "streamingLive", true).await;
    let mut sockets = one_socket_per_node(&n, &room).await;
    let held = hold_message(&n[0], &room, "committed");
    n[0].svc.settle().await;
    // Held, this would wait for the release; off, it goes out at once.
    n[1].grpc_send("C1", &room, &json!({"content": "meanwhile"}))
        .await;
    every_socket_gets(&mut sockets, &["meanwhile"]).await;
    held.release();
    every_socket_gets(&mut sockets, &["committed"]).await;
    // A failed post's frames, off as on, reach no one.
    refuse_content(&n[0].db_url, "refused").await;
    for (k, (content, status)) in [("refused", 500), ("after", 200)].into_iter().enumerate() {
        let body = json!([{"conversationId": room, "content": content, "displayName": "Guest"}]);
        let (st, body) = n[k].post("/messaging/messages/send", None, &body).await;
        assert_eq!(st, status, "{content}: {body}");
    }
    every_socket_gets(&mut sockets, &["after"]).await;
}
