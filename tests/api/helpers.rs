//! Test harness: a real server on port 0 over a fresh database, real WebSocket, HTTP and
//! gRPC clients, and helpers that wait on events with a timeout (never sleep-and-hope).
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use messaging::auth::{Claims, TokenKeys};
use messaging::pb;
use messaging::store::Store;
use messaging::store::entities::conversations;
use messaging::{Application, Listeners, Settings};
use parking_lot::Mutex;
use sea_orm::{ConnectionTrait, Database};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
pub const WAIT: Duration = Duration::from_secs(10);

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

/// A fresh database, dropped when the test ends.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    /// Serve it in gateway mode (§5.5): `TestApp::spawn` starts the binary as Lambda
    /// instances behind the API Gateway emulator instead of an in-process server.
    pub gateway: bool,
    admin: Option<(String, String)>,
    _dir: Option<tempfile_dir::TempDir>,
}

mod tempfile_dir {
    /// A temporary directory removed on drop (keeps the dev-dependencies small).
    pub struct TempDir(pub std::path::PathBuf);
    impl TempDir {
        pub fn new() -> Self {
            let p =
                std::env::temp_dir().join(format!("messaging-test-{}", messaging::ids::new_id()));
            std::fs::create_dir_all(&p).expect("temp dir");
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl TestDb {
    /// This database, served in gateway mode by `TestApp::spawn`.
    pub fn in_gateway_mode(mut self) -> Self {
        self.gateway = true;
        self
    }

    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile_dir::TempDir::new();
                let url = format!("sqlite://{}?mode=rwc", dir.0.join("test.db").display());
                Self {
                    url,
                    backend,
                    gateway: false,
                    admin: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres | Backend::Mysql => {
                let var = if backend == Backend::Postgres {
                    "DATABASE_URL_POSTGRES"
                } else {
                    "DATABASE_URL_MYSQL"
                };
                let admin_url = server_url(var);
                let name = format!(
                    "msg_{}",
                    messaging::ids::new_id()
                        .to_lowercase()
                        .replace(['-', '_'], "x")
                );
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("admin connection");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create database");
                let base = admin_url
                    .rsplit_once('/')
                    .map(|(b, _)| b)
                    .unwrap_or(&admin_url);
                Self {
                    url: format!("{base}/{name}"),
                    backend,
                    admin: Some((admin_url.clone(), name)),
                    gateway: false,
                    _dir: None,
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = self.admin.take() {
            // Drop runs outside the test's runtime: use a small one of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let admin = Database::connect(&admin_url).await.ok()?;
                    let postgres = admin_url.starts_with("postgres");
                    if !postgres {
                        // What WITH (FORCE) does on PostgreSQL: the connections of an app
                        // a test did not shut down are still open here (they close when
                        // the test's runtime ends, after this drop).
                        let ids = admin
                            .query_all_raw(sea_orm::Statement::from_string(
                                sea_orm::DbBackend::MySql,
                                format!(
                                    "SELECT ID FROM information_schema.PROCESSLIST \
                                     WHERE DB = '{name}' AND ID <> CONNECTION_ID()"
                                ),
                            ))
                            .await
                            .ok()?;
                        for row in ids {
                            let id = row
                                .try_get_by_index::<i64>(0)
                                .ok()
                                .or_else(|| row.try_get_by_index::<u64>(0).ok().map(|n| n as i64));
                            if let Some(id) = id {
                                let _ = admin.execute_unprepared(&format!("KILL {id}")).await;
                            }
                        }
                    }
                    let force = if postgres { " WITH (FORCE)" } else { "" };
                    admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}{force}"))
                        .await
                        .ok()
                })
            })
            .join();
        }
    }
}

/// A running server.
pub struct TestApp {
    pub http: SocketAddr,
    pub socket: SocketAddr,
    pub grpc: SocketAddr,
    pub node_id: String,
    pub store: Store,
    /// A connection of the test's own to the server's database, for what a test arranges
    /// or inspects in SQL (the store's own connection is private to it).
    pub db: sea_orm::DatabaseConnection,
    pub keys: TokenKeys,
    pub client: reqwest::Client,
    pub hub: std::sync::Arc<messaging::hub::Hub>,
    /// The domain layer, for sends that no endpoint offers (e.g. to another church).
    pub svc: messaging::service::Services,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub stopped: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub db_url: String,
    /// `http://host:port`, or the gateway's REST front with its stage.
    pub base: String,
    /// Where `ws()` connects.
    pub ws_base: String,
    /// Gateway mode: the emulator and its instances (stopped on drop), and an in-process
    /// door that `svc`, `hub` and `store` belong to.
    pub gateway: Option<crate::emulator::Gateway>,
    door: Option<messaging::lambda::Door>,
}

/// The claims of the tokens tests mint: a member of `church` with these permissions.
pub fn claims(church: &str, person: &str, perms: &[&str]) -> Claims {
    Claims {
        id: format!("U-{person}"),
        church_id: church.into(),
        person_id: person.into(),
        first_name: "First".into(),
        last_name: person.into(),
        permissions: perms.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn settings(db: &TestDb) -> Settings {
    Settings::for_tests(&db.url, SECRET)
}

impl TestApp {
    pub async fn spawn(db: &TestDb) -> Self {
        if db.gateway {
            return Self::spawn_gateway(db).await;
        }
        Self::spawn_with(settings(db)).await
    }

    /// Gateway mode: two instances of the binary behind the emulator (REST front payload
    /// 1.0, the WebSocket front), and an in-process door for what a test does through `svc`.
    /// No gRPC port exists in this mode.
    pub async fn spawn_gateway(db: &TestDb) -> Self {
        use crate::emulator::{Gateway, GatewayOptions};
        let gw = Gateway::start(GatewayOptions::new(
            env!("CARGO_BIN_EXE_messaging"),
            &db.url,
            SECRET,
        ))
        .await
        .expect("gateway starts");
        let creds = gw.credentials().clone();
        let api = messaging::cluster::gateway::Management::new(
            gw.management_url(),
            creds.region.clone(),
            aws_credential_types::Credentials::new(
                creds.access_key_id,
                creds.secret_access_key,
                Some(creds.session_token),
                None,
                "test",
            ),
            Duration::from_secs(5),
        )
        .expect("management client");
        let door = messaging::lambda::Door::build_with(settings(db), api)
            .await
            .expect("in-process door");
        let svc = door.services().clone();
        let db_conn = Database::connect(&db.url)
            .await
            .expect("the test's connection");
        let unused: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        Self {
            http: unused,
            socket: unused,
            grpc: unused,
            node_id: svc.node_id.to_string(),
            store: svc.store().clone(),
            db: db_conn,
            keys: TokenKeys::new(SECRET),
            client: reqwest::Client::new(),
            hub: svc.hub.clone(),
            svc,
            stop: None,
            stopped: None,
            db_url: db.url.clone(),
            base: gw.rest_url(),
            ws_base: gw.ws_url(),
            gateway: Some(gw),
            door: Some(door),
        }
    }

    pub async fn spawn_with(settings: Settings) -> Self {
        let listeners = Listeners {
            http: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            socket: Some(TcpListener::bind("127.0.0.1:0").await.expect("bind")),
            grpc: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        };
        let db_url = settings.database_url.clone();
        let app = Application::build_with_listeners(settings, listeners)
            .await
            .expect("build app");
        let (http, socket, grpc) = (
            app.http_addr(),
            app.socket_addr().expect("socket port"),
            app.grpc_addr(),
        );
        let node_id = app.node_id();
        let svc = app.services();
        let hub = svc.hub.clone();
        let store = svc.store().clone();
        let db = Database::connect(&db_url)
            .await
            .expect("the test's connection");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stopped = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        Self {
            http,
            socket,
            grpc,
            node_id,
            store,
            db,
            keys: TokenKeys::new(SECRET),
            client: reqwest::Client::new(),
            hub,
            svc,
            stop: Some(tx),
            stopped: Some(stopped),
            db_url,
            base: format!("http://{http}"),
            ws_base: format!("ws://{socket}/"),
            gateway: None,
            door: None,
        }
    }

    /// Triggers the graceful shutdown and waits for it.
    pub async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.stopped.take() {
            tokio::time::timeout(Duration::from_secs(15), h)
                .await
                .expect("shutdown within 15 s")
                .expect("join")
                .expect("clean stop");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn token(&self, church: &str, person: &str, perms: &[&str]) -> String {
        self.keys
            .mint(&claims(church, person, perms))
            .expect("mint")
    }

    /// Creates a conversation through the store (the conversations endpoints come later).
    pub async fn conversation(
        &self,
        church: &str,
        content_type: &str,
        anonymous_public: bool,
    ) -> String {
        let id = messaging::ids::new_id();
        self.store
            .insert_conversation(conversations::Model {
                id: id.clone(),
                church_id: church.into(),
                content_type: Some(content_type.into()),
                content_id: Some("CONTENT1".into()),
                title: Some("t".into()),
                date_created: messaging::time::now_ms(),
                group_id: None,
                visibility: Some("public".into()),
                first_post_id: None,
                last_post_id: None,
                post_count: 0,
                allow_anonymous_posts: anonymous_public,
            })
            .await
            .expect("insert conversation");
        id
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        self.send(self.client.post(self.url(path)).json(body), token)
            .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(self.client.get(self.url(path)), token).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(self.client.delete(self.url(path)), token).await
    }

    pub async fn send(&self, req: reqwest::RequestBuilder, token: Option<&str>) -> (u16, Value) {
        let (status, _, body) = self.send_raw(req, token).await;
        (status, body)
    }

    /// Status, `Allow` header and body.
    pub async fn send_raw(
        &self,
        mut req: reqwest::RequestBuilder,
        token: Option<&str>,
    ) -> (u16, Option<String>, Value) {
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let allow = resp
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.expect("body");
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, allow, v)
    }

    /// Joins sockets to a room over REST; panics unless 200.
    pub async fn join(&self, token: Option<&str>, items: Value) -> Value {
        let (status, body) = self.post("/messaging/connections", token, &items).await;
        assert_eq!(status, 200, "join failed: {body}");
        body
    }

    pub async fn join_one(&self, room: &str, socket: &str, name: &str) -> Value {
        self.join(
            None,
            serde_json::json!([{"conversationId": room, "socketId": socket, "displayName": name}]),
        )
        .await
    }

    pub async fn delivery(&self) -> pb::delivery_client::DeliveryClient<tonic::transport::Channel> {
        pb::delivery_client::DeliveryClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("grpc connect")
    }

    pub async fn connection(
        &self,
    ) -> pb::connection_client::ConnectionClient<tonic::transport::Channel> {
        pb::connection_client::ConnectionClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("grpc connect")
    }

    /// Fans a `message` frame out over gRPC; returns the delivered count.
    pub async fn grpc_send(&self, church: &str, room: &str, data: &Value) -> u32 {
        grpc_send_on(&mut self.delivery().await, church, room, data).await
    }

    pub async fn ws(&self) -> Ws {
        Ws::connect(&self.ws_base).await
    }

    /// A socket already through the handshake.
    pub async fn ws_with_id(&self) -> Ws {
        let mut ws = self.ws().await;
        ws.get_id().await;
        ws
    }
}

/// `TestApp::grpc_send` on a channel the caller keeps (no connect per send).
pub async fn grpc_send_on(
    d: &mut pb::delivery_client::DeliveryClient<tonic::transport::Channel>,
    church: &str,
    room: &str,
    data: &Value,
) -> u32 {
    d.send_conversation_messages(pb::SendConversationMessagesRequest {
        church_id: church.into(),
        conversation_id: room.into(),
        action: "message".into(),
        data: data.to_string(),
    })
    .await
    .expect("send")
    .into_inner()
    .delivered
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A WebSocket client.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub id: String,
}

impl Ws {
    pub async fn connect(url: &str) -> Self {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        Self {
            stream,
            id: String::new(),
        }
    }

    /// A client whose kernel receive buffer is tiny, so that when it stops reading the
    /// server's queue for it fills after little traffic.
    pub async fn connect_small_rcvbuf(addr: SocketAddr) -> Self {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let tcp = sock.connect(addr).await.expect("tcp connect");
        let (stream, _) =
            tokio_tungstenite::client_async(format!("ws://{addr}/"), MaybeTlsStream::Plain(tcp))
                .await
                .expect("ws handshake");
        Self {
            stream,
            id: String::new(),
        }
    }

    pub async fn get_id(&mut self) -> String {
        self.stream
            .send(Message::text("getId"))
            .await
            .expect("send getId");
        let f = self.frame().await;
        assert_eq!(f["action"], "socketId");
        self.id = f["data"].as_str().expect("id").to_string();
        self.id.clone()
    }

    /// The next text frame, raw.
    pub async fn text(&mut self) -> String {
        match self.try_text(WAIT).await {
            Some(t) => t,
            None => panic!("no frame within {WAIT:?}"),
        }
    }

    pub async fn try_text(&mut self, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            match msg.ok()? {
                Message::Text(t) => return Some(t.to_string()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    pub async fn frame(&mut self) -> Value {
        serde_json::from_str(&self.text().await).expect("frame is JSON")
    }

    /// The next frame with this action, skipping others.
    pub async fn next_action(&mut self, action: &str) -> Value {
        loop {
            let f = self.frame().await;
            if f["action"] == action {
                return f;
            }
        }
    }

    /// Frames until one matches `pred`, returning all frames seen (the match last).
    pub async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let f = self.frame().await;
            let done = pred(&f);
            seen.push(f);
            if done {
                return seen;
            }
        }
    }

    /// Reads until the close frame; returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => return Some(f.code.into()),
                Ok(Some(Ok(Message::Close(None)))) | Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(_))) => continue,
                Err(_) => panic!("no close within {WAIT:?}"),
            }
        }
    }
}

/// A TCP proxy in front of a real server (broker or database) that the test can cut (every proxied connection
/// closed, new ones closed on accept) and restore.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<(bool, Vec<AbortHandle>)>>,
    pub accepted: Arc<AtomicUsize>,
    /// Connections closed on accept while cut: a client's attempts to reconnect.
    pub refused: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(Mutex::new((true, Vec::new())));
        let accepted = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let accept = {
            let state = state.clone();
            let (accepted, refused) = (accepted.clone(), refused.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    // Checked and recorded under one lock, so a cut never misses a connection.
                    let mut guard = state.lock();
                    if !guard.0 {
                        refused.fetch_add(1, Ordering::Relaxed);
                        continue; // dropping `inbound` closes it
                    }
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut out) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    });
                    guard.1.push(task.abort_handle());
                }
            })
        };
        Self {
            addr,
            state,
            accepted,
            refused,
            accept,
        }
    }

    pub fn cut(&self) {
        let mut guard = self.state.lock();
        guard.0 = false;
        for conn in guard.1.drain(..) {
            conn.abort();
        }
    }

    pub fn restore(&self) {
        self.state.lock().0 = true;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Polls `check` until it returns true (an event observed through the public interface),
/// panicking after `WAIT`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Returns once the clock the service stamps rows with (`messaging::time::now_ms`) reads later
/// than `ms`, so that what is written next is stamped after anything written at or before
/// `ms`. It waits on the clock itself (checked every millisecond), not for a guessed delay.
pub async fn clock_past(ms: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while messaging::time::now_ms() <= ms {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the clock did not pass {ms} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The URL of an outside server from its variable. A test that needs it is compiled as
/// ignored when the variable is unset (build.rs, `server_test!`); run anyway
/// (`--include-ignored`), it fails here rather than pass untested.
pub fn server_url(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{var} is not set"),
    }
}

/// The one scheme for tests that run against the servers of this machine: declares one
/// async test per variant, named `name::VARIANT`, in a module `name`.
///
/// ```ignore
/// server_test!(name, |db: TestDb| async move { … }); // name::sqlite, name::postgres, name::mysql
/// server_test!(name, db);      // the same three, running `async fn name(db: TestDb)`
/// server_test!(name, broker);  // name::redis, name::nats: `async fn name(url: &str)`
/// server_test!(name, cluster); // name::postgres_redis, …, name::mysql_nats:
///                              // `async fn name(db: TestDb, broker_url: String)`
/// server_test!(name, [postgres, mysql]); // any list of variants (`, body` optional)
/// ```
///
/// A body given inline runs on every database; without one, the test runs the `async fn`
/// of the same name beside the invocation. Each variant, in one arm below, names what it
/// needs and what it gives the body:
///
/// | variant | needs (cfg from build.rs) | the body gets |
/// |---|---|---|
/// | `sqlite` | nothing | a fresh `TestDb` |
/// | `postgres`, `mysql` | `DATABASE_URL_POSTGRES` / `DATABASE_URL_MYSQL` | a fresh `TestDb` |
/// | `redis`, `nats` | `BROKER_URL_REDIS` / `BROKER_URL_NATS` | the broker URL, `&str` |
/// | `postgres_redis`, `postgres_nats`, `mysql_redis`, `mysql_nats` | both | `TestDb`, URL `String` |
/// | `own_postgres`, `own_mariadb` | the server's binaries (found by build.rs) | an `OwnServer` |
///
/// `own_postgres` and `own_mariadb` start a server of the test's own (`own_server.rs`) in a
/// temp dir, for a test that stops and starts it; they need no variable, only the binaries.
/// A variant whose server is not configured is compiled as ignored, with the variable as the
/// reason, so `cargo test` counts it as ignored, never as passed. A test that needs nothing
/// outside the process (SQLite only) may be a plain `#[tokio::test]`.
#[macro_export]
macro_rules! server_test {
    // The families: the variants each stands for, running the function of the same name.
    ($name:ident, db) => {
        $crate::server_test!($name, [sqlite, postgres, mysql]);
    };
    ($name:ident, broker) => {
        $crate::server_test!($name, [redis, nats]);
    };
    // Every database, and PostgreSQL and MariaDB again in gateway mode (§5.5).
    ($name:ident, db_and_gateway) => {
        $crate::server_test!($name, [sqlite, postgres, mysql, gateway_postgres, gateway_mysql]);
    };
    ($name:ident, cluster) => {
        $crate::server_test!($name, [postgres_redis, postgres_nats, mysql_redis, mysql_nats]);
    };
    // A list of variants, running the function of the same name or the body given.
    ($name:ident, [$($variant:ident),+ $(,)?]) => {
        $crate::server_test!($name, [$($variant),+], super::$name);
    };
    ($name:ident, [$($variant:ident),+ $(,)?], $body:expr $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $($crate::server_test!(@variant $variant, $body);)+
        }
    };
    // A body given inline: every database (the `db` family).
    ($name:ident, $body:expr $(,)?) => {
        $crate::server_test!($name, [sqlite, postgres, mysql], $body);
    };

    // The variants: what each needs, with the ignore reason, and what it gives the body.
    (@variant sqlite, $body:expr) => {
        $crate::server_test!(@test sqlite, $body, needs nothing,
            gives ($crate::helpers::TestDb::create($crate::helpers::Backend::Sqlite).await));
    };
    (@variant postgres, $body:expr) => {
        $crate::server_test!(@test postgres, $body,
            needs (with_postgres) "DATABASE_URL_POSTGRES is not set",
            gives ($crate::helpers::TestDb::create($crate::helpers::Backend::Postgres).await));
    };
    (@variant mysql, $body:expr) => {
        $crate::server_test!(@test mysql, $body,
            needs (with_mysql) "DATABASE_URL_MYSQL is not set",
            gives ($crate::helpers::TestDb::create($crate::helpers::Backend::Mysql).await));
    };
    (@variant gateway_postgres, $body:expr) => {
        $crate::server_test!(@test gateway_postgres, $body,
            needs (with_postgres) "DATABASE_URL_POSTGRES is not set",
            gives ($crate::helpers::TestDb::create($crate::helpers::Backend::Postgres).await.in_gateway_mode()));
    };
    (@variant gateway_mysql, $body:expr) => {
        $crate::server_test!(@test gateway_mysql, $body,
            needs (with_mysql) "DATABASE_URL_MYSQL is not set",
            gives ($crate::helpers::TestDb::create($crate::helpers::Backend::Mysql).await.in_gateway_mode()));
    };
    (@variant redis, $body:expr) => {
        $crate::server_test!(@test redis, $body,
            needs (with_redis) "BROKER_URL_REDIS is not set",
            gives (&$crate::helpers::server_url("BROKER_URL_REDIS")));
    };
    (@variant nats, $body:expr) => {
        $crate::server_test!(@test nats, $body,
            needs (with_nats) "BROKER_URL_NATS is not set",
            gives (&$crate::helpers::server_url("BROKER_URL_NATS")));
    };
    (@variant postgres_redis, $body:expr) => {
        $crate::server_test!(@test postgres_redis, $body,
            needs (all(with_postgres, with_redis))
                "DATABASE_URL_POSTGRES or BROKER_URL_REDIS is not set",
            gives (
                $crate::helpers::TestDb::create($crate::helpers::Backend::Postgres).await,
                $crate::helpers::server_url("BROKER_URL_REDIS")
            ));
    };
    (@variant postgres_nats, $body:expr) => {
        $crate::server_test!(@test postgres_nats, $body,
            needs (all(with_postgres, with_nats))
                "DATABASE_URL_POSTGRES or BROKER_URL_NATS is not set",
            gives (
                $crate::helpers::TestDb::create($crate::helpers::Backend::Postgres).await,
                $crate::helpers::server_url("BROKER_URL_NATS")
            ));
    };
    (@variant mysql_redis, $body:expr) => {
        $crate::server_test!(@test mysql_redis, $body,
            needs (all(with_mysql, with_redis))
                "DATABASE_URL_MYSQL or BROKER_URL_REDIS is not set",
            gives (
                $crate::helpers::TestDb::create($crate::helpers::Backend::Mysql).await,
                $crate::helpers::server_url("BROKER_URL_REDIS")
            ));
    };
    (@variant own_postgres, $body:expr) => {
        $crate::server_test!(@test own_postgres, $body,
            needs (with_pg_binaries) "PostgreSQL's server binaries (initdb, postgres) were not found",
            gives ($crate::own_server::OwnServer::start($crate::own_server::Kind::Postgres).await));
    };
    (@variant own_mariadb, $body:expr) => {
        $crate::server_test!(@test own_mariadb, $body,
            needs (with_mariadb_binaries) "MariaDB's server binaries (mariadbd, mariadb-install-db) were not found",
            gives ($crate::own_server::OwnServer::start($crate::own_server::Kind::Mariadb).await));
    };
    (@variant mysql_nats, $body:expr) => {
        $crate::server_test!(@test mysql_nats, $body,
            needs (all(with_mysql, with_nats))
                "DATABASE_URL_MYSQL or BROKER_URL_NATS is not set",
            gives (
                $crate::helpers::TestDb::create($crate::helpers::Backend::Mysql).await,
                $crate::helpers::server_url("BROKER_URL_NATS")
            ));
    };

    // One test. The setup runs inside it, so a missing variable fails the test that needs it.
    (@test $variant:ident, $body:expr, needs nothing, gives ($($arg:expr),+)) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $variant() {
            let body = $body;
            body($($arg),+).await
        }
    };
    (@test $variant:ident, $body:expr, needs ($($cfg:tt)+) $reason:literal,
        gives ($($arg:expr),+)) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(not($($cfg)+), ignore = $reason)]
        async fn $variant() {
            let body = $body;
            body($($arg),+).await
        }
    };
}

/// Makes the database at `db_url` refuse to insert a message whose content is `content`
/// (a trigger), so that a post fails inside its write, after the service accepted it.
pub async fn refuse_content(db_url: &str, content: &str) {
    use sea_orm::ConnectionTrait;
    assert!(
        content.chars().all(|c| c.is_ascii_alphanumeric()),
        "plain word"
    );
    let conn = Database::connect(db_url).await.expect("connect");
    let sql = if db_url.starts_with("postgres") {
        vec![
            format!(
                "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF NEW.content = '{content}' THEN RAISE EXCEPTION 'refused by the test'; \
                 END IF; RETURN NEW; END $$"
            ),
            "CREATE TRIGGER test_refuse BEFORE INSERT ON messages \
             FOR EACH ROW EXECUTE FUNCTION test_refuse()"
                .to_string(),
        ]
    } else if db_url.starts_with("mysql") {
        vec![format!(
            "CREATE TRIGGER test_refuse BEFORE INSERT ON messages FOR EACH ROW BEGIN \
             IF NEW.content = '{content}' THEN \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test'; END IF; END"
        )]
    } else {
        vec![format!(
            "CREATE TRIGGER test_refuse BEFORE INSERT ON messages \
             WHEN NEW.content = '{content}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )]
    };
    for statement in sql {
        conn.execute_unprepared(&statement).await.expect("trigger");
    }
    conn.close().await.expect("close");
}
