//! A test-owned stand-in for AWS API Gateway and the Lambda Runtime API, in front of real
//! processes of the binary in gateway mode (PROTOCOL.md §5.5):
//!
//! - [`runtime`]: one Runtime API listener per instance (each its own port), so a caller
//!   chooses which instance handles an invocation; the instance's process, its logs, and
//!   Lambda's freeze after a reply (`SIGSTOP` before the reply is acknowledged);
//! - [`sockets`]: the WebSocket API (real upgrades; `$connect`, `$default`, `$disconnect`);
//! - [`management`]: `@connections` (`POST`/`GET`/`DELETE`), every call's SigV4 signature
//!   checked, every call recorded (or the latest few, see `record_limit`), faults injectable
//!   per connection;
//! - [`rest`]: REST API (payload 1.0) and HTTP API (payload 2.0) fronts;
//! - [`events`]: the event JSON builders.
//!
//! It asserts nothing: it records, and returns errors; tests judge. It uses only crates the
//! package already depends on, so a load generator can include these files with `#[path]`.
#![allow(dead_code)]
// Reusable outside tests (a load generator), where unwrap is denied: keep it so here.
#![deny(clippy::unwrap_used)]

pub mod events;
pub mod management;
pub mod rest;
pub mod runtime;
pub mod sockets;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use events::EventKind;
pub use management::{Call, Fault, SigFailure};
pub use runtime::{ExitInfo, ProcState};
pub use sockets::SocketRecord;

/// A request header (on the REST fronts and on a WebSocket upgrade) naming the instance that
/// handles it (and, on an upgrade, every event of that socket). Not passed to the function.
pub const INSTANCE_HEADER: &str = "x-gateway-instance";

pub type HttpResponse = Response<Full<Bytes>>;

/// A response with these headers and body (a bad status becomes a 500).
pub fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> HttpResponse {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body.into())).unwrap_or_else(|_| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// A std mutex that shrugs off poisoning (a panicking test thread must not wedge the
/// emulator's tasks).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which payload version a REST front sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// REST API proxy integration, payload 1.0.
    V1,
    /// HTTP API, payload 2.0.
    V2,
}

/// How the fronts choose an instance for an event nobody chose one for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    RoundRobin,
    Instance(usize),
}

/// The credentials and region the instances get, and that the management API accepts.
#[derive(Debug, Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub region: String,
}

impl Default for AwsCredentials {
    fn default() -> Self {
        Self {
            access_key_id: "AKIDGATEWAYTEST0001".into(),
            secret_access_key: "gateway/test/secret/key/0123456789abcdefABCD".into(),
            session_token: "IQoJb3JpZ2luX2VjEGateway+Test/Session=Token".into(),
            region: "us-east-1".into(),
        }
    }
}

/// Where the listeners bind: `None` is an ephemeral port on 127.0.0.1 (the default, so
/// that tests run side by side); a load generator names fixed ones.
#[derive(Debug, Clone, Default)]
pub struct Addrs {
    pub ws: Option<SocketAddr>,
    pub rest_v1: Option<SocketAddr>,
    pub rest_v2: Option<SocketAddr>,
    pub management: Option<SocketAddr>,
}

/// Called with every management API call once it is answered, whether or not calls are
/// recorded (a load generator summarizes them instead of keeping them).
#[derive(Clone)]
pub struct CallHook(pub Arc<dyn Fn(&Call) + Send + Sync>);

impl std::fmt::Debug for CallHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallHook")
    }
}

/// A record that keeps at most `limit` entries (the latest ones), numbered from 0 in the
/// order they were pushed; `None` keeps every one.
#[derive(Debug)]
pub struct Record<T> {
    items: VecDeque<T>,
    /// Entries pushed and since dropped: the number of the first one kept.
    dropped: usize,
    limit: Option<usize>,
}

impl<T: Clone> Record<T> {
    pub fn new(limit: Option<usize>) -> Self {
        Self {
            items: VecDeque::new(),
            dropped: 0,
            limit,
        }
    }

    /// How many were ever pushed: the number the next one gets.
    pub fn next_seq(&self) -> usize {
        self.dropped + self.items.len()
    }

    /// Keeps `item` (dropping the oldest beyond the limit); returns its number.
    pub fn push(&mut self, item: T) -> usize {
        let seq = self.next_seq();
        self.items.push_back(item);
        let limit = self.limit.unwrap_or(usize::MAX);
        while self.items.len() > limit {
            self.items.pop_front();
            self.dropped += 1;
        }
        seq
    }

    /// Entry `seq`, if it is still kept.
    pub fn get_mut(&mut self, seq: usize) -> Option<&mut T> {
        let index = seq.checked_sub(self.dropped)?;
        self.items.get_mut(index)
    }

    /// The entries kept, oldest first.
    pub fn to_vec(&self) -> Vec<T> {
        self.items.iter().cloned().collect()
    }
}

/// How to start a gateway.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The binary each instance runs; `None` starts no process (the caller plays the
    /// function through [`Gateway::runtime_api`]).
    pub binary: Option<PathBuf>,
    pub database_url: String,
    pub jwt_secret: String,
    pub instances: usize,
    /// More environment for every instance (after, so overriding, the defaults).
    pub extra_env: Vec<(String, String)>,
    pub stage: String,
    /// The payload version of [`Gateway::rest_url`] (both fronts always run).
    pub rest_payload: Payload,
    pub credentials: AwsCredentials,
    pub api_id: String,
    /// How long an invocation may take (Lambda's function timeout).
    pub invoke_timeout: Duration,
    /// How long [`Gateway::start`] waits for every instance's first `next`.
    pub startup_timeout: Duration,
    /// Where the fronts and the management API listen (default: ephemeral ports).
    pub addrs: Addrs,
    /// How many of the latest invocations and management calls are kept for
    /// [`Gateway::invocations`] and [`Gateway::calls`]; `None` (the default, what tests
    /// need) keeps every one. A long-running load test keeps few or none.
    pub record_limit: Option<usize>,
    /// Sees every management call (see [`CallHook`]).
    pub on_call: Option<CallHook>,
}

impl GatewayOptions {
    pub fn new(binary: impl Into<PathBuf>, database_url: &str, jwt_secret: &str) -> Self {
        Self {
            binary: Some(binary.into()),
            database_url: database_url.into(),
            jwt_secret: jwt_secret.into(),
            instances: 2,
            extra_env: Vec::new(),
            stage: "dev".into(),
            rest_payload: Payload::V1,
            credentials: AwsCredentials::default(),
            api_id: "testapi123".into(),
            invoke_timeout: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(60),
            addrs: Addrs::default(),
            record_limit: None,
            on_call: None,
        }
    }

    /// `instances` Runtime APIs and no process: the caller plays the function.
    pub fn without_processes(instances: usize) -> Self {
        Self {
            binary: None,
            instances,
            ..Self::new("", "", "")
        }
    }
}

/// One invocation, as the emulator saw it.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub seq: usize,
    pub instance: usize,
    pub kind: EventKind,
    /// `requestContext.connectionId` of a WebSocket event.
    pub connection_id: Option<String>,
    pub request_id: Option<String>,
    pub started: Instant,
    pub finished: Option<Instant>,
    /// The reply, or the error as text.
    pub outcome: Option<Result<Value, String>>,
    pub event: Value,
}

/// Why an invocation produced no reply.
#[derive(Debug, Clone)]
pub enum InvokeError {
    /// The function posted `/error`.
    Function { error_type: String, message: String },
    /// No reply within the budget.
    Timeout(Duration),
    /// The process ended.
    Exited { instance: usize, status: String },
    /// No such instance.
    NoInstance(usize),
    /// The reply was not JSON.
    Malformed(String),
    /// The emulator dropped the invocation (shutting down).
    Dropped,
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Function {
                error_type,
                message,
            } => write!(f, "function error {error_type}: {message}"),
            Self::Timeout(d) => write!(f, "no reply within {d:?}"),
            Self::Exited { instance, status } => write!(f, "instance {instance} ended: {status}"),
            Self::NoInstance(i) => write!(f, "no instance {i}"),
            Self::Malformed(why) => write!(f, "reply is not JSON: {why}"),
            Self::Dropped => write!(f, "invocation dropped"),
        }
    }
}

impl std::error::Error for InvokeError {}

/// What the fronts, the management API and the runtimes share.
pub struct Shared {
    pub api: events::ApiContext,
    pub region: String,
    pub runtimes: Vec<Arc<runtime::Instance>>,
    route: Mutex<Route>,
    round_robin: AtomicUsize,
    pub invoke_timeout: Duration,
    invocations: Mutex<Record<Invocation>>,
    pub sockets: sockets::Registry,
    pub management: management::Management,
    /// Bumped on every recorded change, for waiters.
    pub changed: Arc<watch::Sender<u64>>,
    pub shutdown: watch::Sender<bool>,
}

impl Shared {
    pub fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The instance for an event: the one requested, else the route.
    pub fn pick(&self, requested: Option<usize>) -> usize {
        if let Some(i) = requested {
            return i;
        }
        match *lock(&self.route) {
            Route::Instance(i) => i,
            Route::RoundRobin => {
                let n = self.runtimes.len().max(1);
                self.round_robin.fetch_add(1, Ordering::SeqCst) % n
            }
        }
    }

    /// Invokes `instance` with `event` and records it.
    pub async fn invoke(&self, instance: usize, event: Value) -> Result<Value, InvokeError> {
        self.invoke_within(instance, event, self.invoke_timeout)
            .await
    }

    pub async fn invoke_within(
        &self,
        instance: usize,
        event: Value,
        budget: Duration,
    ) -> Result<Value, InvokeError> {
        let seq = {
            let mut log = lock(&self.invocations);
            let seq = log.next_seq();
            log.push(Invocation {
                seq,
                instance,
                kind: EventKind::of(&event),
                connection_id: event["requestContext"]["connectionId"]
                    .as_str()
                    .map(str::to_string),
                request_id: None,
                started: Instant::now(),
                finished: None,
                outcome: None,
                event: event.clone(),
            })
        };
        self.bump();
        let Some(rt) = self.runtimes.get(instance) else {
            return Err(InvokeError::NoInstance(instance));
        };
        let (request_id, outcome) = rt.invoke(event, budget).await;
        {
            let mut log = lock(&self.invocations);
            if let Some(inv) = log.get_mut(seq) {
                inv.request_id = Some(request_id);
                inv.finished = Some(Instant::now());
                inv.outcome = Some(outcome.clone().map_err(|e| e.to_string()));
            }
        }
        self.bump();
        outcome
    }

    /// The invocations kept (every one, unless the options set a `record_limit`).
    pub fn invocations(&self) -> Vec<Invocation> {
        lock(&self.invocations).to_vec()
    }

    /// Waits until `check` returns something, re-checking on every recorded change.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.changed.subscribe();
        loop {
            changes.borrow_and_update();
            if let Some(t) = check() {
                return Some(t);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return check(),
            }
        }
    }
}

/// Serves HTTP/1.1 (with upgrades) on `listener` until `shutdown` turns true.
fn serve<H, F>(listener: TcpListener, mut shutdown: watch::Receiver<bool>, handler: H)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    let handler = handler.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let response = handler(req, peer);
                            async move { Ok::<_, Infallible>(response.await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
    });
}

/// Binds `at`, or an ephemeral port on 127.0.0.1.
async fn bind(at: Option<SocketAddr>) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let at = at.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = TcpListener::bind(at)
        .await
        .map_err(|e| anyhow::anyhow!("bind {at}: {e}"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// A running emulator and its instances. Dropping it resumes frozen instances, kills every
/// process and stops every listener.
pub struct Gateway {
    shared: Arc<Shared>,
    options: GatewayOptions,
    ws_addr: SocketAddr,
    rest_v1_addr: SocketAddr,
    rest_v2_addr: SocketAddr,
    management_addr: SocketAddr,
}

impl Gateway {
    /// Starts the fronts and the instances, and waits until every instance has asked for its
    /// first invocation (its cold start is over).
    pub async fn start(options: GatewayOptions) -> anyhow::Result<Self> {
        let timeout = options.startup_timeout;
        let gateway = Self::spawn(options).await?;
        if gateway.options.binary.is_some() {
            for i in 0..gateway.instances() {
                gateway.wait_ready(i, timeout).await?;
            }
        }
        Ok(gateway)
    }

    /// Starts the fronts and the instances without waiting for them.
    pub async fn spawn(options: GatewayOptions) -> anyhow::Result<Self> {
        let (shutdown, _) = watch::channel(false);
        let changed = Arc::new(watch::channel(0u64).0);
        let mut runtime_listeners = Vec::new();
        let mut runtimes = Vec::new();
        for index in 0..options.instances {
            let (listener, addr) = bind(None).await?;
            runtimes.push(Arc::new(runtime::Instance::new(
                index,
                addr,
                &options.credentials.region,
                "messaging",
                changed.clone(),
            )));
            runtime_listeners.push(listener);
        }
        let at = &options.addrs;
        let (ws_listener, ws_addr) = bind(at.ws).await?;
        let (v1_listener, rest_v1_addr) = bind(at.rest_v1).await?;
        let (v2_listener, rest_v2_addr) = bind(at.rest_v2).await?;
        let (mgmt_listener, management_addr) = bind(at.management).await?;
        let shared = Arc::new(Shared {
            api: events::ApiContext {
                api_id: options.api_id.clone(),
                stage: options.stage.clone(),
                domain_name: "127.0.0.1".into(),
            },
            region: options.credentials.region.clone(),
            runtimes,
            route: Mutex::new(Route::RoundRobin),
            round_robin: AtomicUsize::new(0),
            invoke_timeout: options.invoke_timeout,
            invocations: Mutex::new(Record::new(options.record_limit)),
            sockets: sockets::Registry::default(),
            management: management::Management::new(management::Verifier {
                credentials: options.credentials.clone(),
                max_skew: Duration::from_secs(300),
            })
            .recording(options.record_limit, options.on_call.clone()),
            changed,
            shutdown,
        });
        for (rt, listener) in shared.runtimes.iter().zip(runtime_listeners) {
            let rt = rt.clone();
            serve(listener, shared.shutdown.subscribe(), move |req, _| {
                rt.clone().handle(req)
            });
        }
        {
            let s = shared.clone();
            serve(
                ws_listener,
                shared.shutdown.subscribe(),
                move |req, peer| sockets::handle(s.clone(), req, peer),
            );
        }
        for (listener, payload) in [(v1_listener, Payload::V1), (v2_listener, Payload::V2)] {
            let s = shared.clone();
            serve(listener, shared.shutdown.subscribe(), move |req, peer| {
                rest::handle(s.clone(), payload, req, peer)
            });
        }
        {
            let s = shared.clone();
            serve(mgmt_listener, shared.shutdown.subscribe(), move |req, _| {
                management::handle(s.clone(), req)
            });
        }
        let gateway = Self {
            shared,
            options,
            ws_addr,
            rest_v1_addr,
            rest_v2_addr,
            management_addr,
        };
        if let Some(binary) = gateway.options.binary.clone() {
            for rt in &gateway.shared.runtimes {
                let env = gateway.instance_env(rt.addr);
                rt.spawn_process(&binary, &env, gateway.shared.shutdown.subscribe())?;
            }
        }
        Ok(gateway)
    }

    /// The environment of an instance: what Lambda sets, the service's settings, the extras.
    fn instance_env(&self, runtime_api: SocketAddr) -> Vec<(String, String)> {
        let o = &self.options;
        let c = &o.credentials;
        let mut env: Vec<(String, String)> = [
            ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", "messaging".into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/messaging".into()),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "emulator".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_REGION", c.region.clone()),
            ("AWS_DEFAULT_REGION", c.region.clone()),
            ("AWS_ACCESS_KEY_ID", c.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", c.secret_access_key.clone()),
            ("AWS_SESSION_TOKEN", c.session_token.clone()),
            ("DATABASE_URL", o.database_url.clone()),
            ("JWT_SECRET", o.jwt_secret.clone()),
            ("WS_MANAGEMENT_ENDPOINT", self.management_url()),
            ("TZ", "UTC".into()),
            // Plain log lines in the captured output.
            ("NO_COLOR", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for pass in ["RUST_LOG", "RUST_BACKTRACE"] {
            if let Ok(v) = std::env::var(pass) {
                env.push((pass.into(), v));
            }
        }
        env.extend(o.extra_env.iter().cloned());
        env
    }

    pub fn options(&self) -> &GatewayOptions {
        &self.options
    }

    pub fn instances(&self) -> usize {
        self.shared.runtimes.len()
    }

    /// The WebSocket front's address.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The address of the REST front with this payload version.
    pub fn rest_addr(&self, payload: Payload) -> SocketAddr {
        match payload {
            Payload::V1 => self.rest_v1_addr,
            Payload::V2 => self.rest_v2_addr,
        }
    }

    /// `ws://127.0.0.1:port/{stage}`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/{}", self.ws_addr, self.options.stage)
    }

    /// `http://127.0.0.1:port/{stage}` of the front with the options' payload version.
    pub fn rest_url(&self) -> String {
        self.rest_url_for(self.options.rest_payload)
    }

    pub fn rest_url_for(&self, payload: Payload) -> String {
        format!("http://{}/{}", self.rest_addr(payload), self.options.stage)
    }

    /// `WS_MANAGEMENT_ENDPOINT`: `http://127.0.0.1:port/{stage}`.
    pub fn management_url(&self) -> String {
        format!("http://{}/{}", self.management_addr, self.options.stage)
    }

    /// The Runtime API of an instance (`AWS_LAMBDA_RUNTIME_API`).
    pub fn runtime_api(&self, instance: usize) -> Option<SocketAddr> {
        self.shared.runtimes.get(instance).map(|r| r.addr)
    }

    pub fn credentials(&self) -> &AwsCredentials {
        &self.options.credentials
    }

    fn rt(&self, instance: usize) -> anyhow::Result<&Arc<runtime::Instance>> {
        self.shared
            .runtimes
            .get(instance)
            .ok_or_else(|| anyhow::anyhow!("no instance {instance}"))
    }

    // --- instances -----------------------------------------------------------------------

    pub fn pid(&self, instance: usize) -> Option<u32> {
        self.shared.runtimes.get(instance)?.state().pid
    }

    pub fn state(&self, instance: usize) -> Option<ProcState> {
        Some(self.shared.runtimes.get(instance)?.state())
    }

    /// Everything the instance's process wrote (stdout and stderr, one prefixed line each).
    pub fn logs(&self, instance: usize) -> Vec<String> {
        self.shared
            .runtimes
            .get(instance)
            .map(|r| r.logs())
            .unwrap_or_default()
    }

    /// What the instance wrote to stderr, lines joined.
    pub fn stderr(&self, instance: usize) -> String {
        let tag = format!("[i{instance} err] ");
        self.logs(instance)
            .iter()
            .filter_map(|l| l.strip_prefix(&tag))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for the instance's first `GET …/next`; fails if it ends first.
    pub async fn wait_ready(&self, instance: usize, timeout: Duration) -> anyhow::Result<()> {
        let rt = self.rt(instance)?;
        let state = self
            .shared
            .wait_for(timeout, || {
                let s = rt.state();
                (s.polls > 0 || s.exit.is_some()).then_some(s)
            })
            .await;
        match state {
            Some(s) if s.polls > 0 => Ok(()),
            Some(s) => Err(anyhow::anyhow!(
                "instance {instance} ended before its first invocation ({}); stderr:\n{}",
                s.exit.map(|e| e.to_string()).unwrap_or_default(),
                self.stderr(instance)
            )),
            None => Err(anyhow::anyhow!(
                "instance {instance} did not ask for an invocation within {timeout:?}; logs:\n{}",
                self.logs(instance).join("\n")
            )),
        }
    }

    /// Waits for the instance's process to end.
    pub async fn wait_exit(&self, instance: usize, timeout: Duration) -> anyhow::Result<ExitInfo> {
        let rt = self.rt(instance)?;
        self.shared
            .wait_for(timeout, || rt.state().exit)
            .await
            .ok_or_else(|| anyhow::anyhow!("instance {instance} still runs after {timeout:?}"))
    }

    /// Invokes one instance directly (as `aws lambda invoke` would), within the options'
    /// invocation timeout.
    pub async fn invoke(&self, instance: usize, event: Value) -> Result<Value, InvokeError> {
        self.shared.invoke(instance, event).await
    }

    pub async fn invoke_within(
        &self,
        instance: usize,
        event: Value,
        budget: Duration,
    ) -> Result<Value, InvokeError> {
        self.shared.invoke_within(instance, event, budget).await
    }

    /// The next reply of `instance` is acknowledged only after its process is stopped, as
    /// Lambda freezes an environment once its function replied. Resume with [`Gateway::resume`].
    pub fn freeze_after_reply(&self, instance: usize) {
        if let Some(rt) = self.shared.runtimes.get(instance) {
            rt.freeze_after_reply();
        }
    }

    /// Waits until `instance` is frozen; returns when it froze.
    pub async fn wait_frozen(&self, instance: usize, timeout: Duration) -> anyhow::Result<Instant> {
        let rt = self.rt(instance)?;
        self.shared
            .wait_for(timeout, || {
                let s = rt.state();
                if s.frozen {
                    s.freezes.last().copied()
                } else {
                    None
                }
            })
            .await
            .ok_or_else(|| anyhow::anyhow!("instance {instance} not frozen within {timeout:?}"))
    }

    /// `SIGSTOP` the instance now.
    pub async fn freeze(&self, instance: usize) -> bool {
        match self.shared.runtimes.get(instance) {
            Some(rt) => rt.freeze().await,
            None => false,
        }
    }

    /// `SIGCONT` a frozen instance.
    pub fn resume(&self, instance: usize) -> bool {
        self.shared
            .runtimes
            .get(instance)
            .is_some_and(|rt| rt.resume())
    }

    /// Names the process playing an instance started without one (`binary: None`), so that
    /// freezing applies to it.
    pub fn set_pid(&self, instance: usize, pid: u32) {
        if let Some(rt) = self.shared.runtimes.get(instance) {
            rt.set_pid(pid);
        }
    }

    // --- routing -------------------------------------------------------------------------

    /// Where the fronts send events nobody chose an instance for (default round robin).
    pub fn set_route(&self, route: Route) {
        *lock(&self.shared.route) = route;
    }

    /// Sends this connection's later `$default` and `$disconnect` events to `instance`
    /// (`None`: back to the route).
    pub fn route_connection(&self, connection_id: &str, instance: Option<usize>) {
        self.shared.sockets.set_route(connection_id, instance);
    }

    // --- invocations ---------------------------------------------------------------------

    /// The invocations kept, oldest first (every one unless `record_limit` is set).
    pub fn invocations(&self) -> Vec<Invocation> {
        self.shared.invocations()
    }

    /// Waits for an invocation matching `pred` (e.g. a finished `$disconnect` of one socket).
    pub async fn wait_invocation(
        &self,
        timeout: Duration,
        pred: impl Fn(&Invocation) -> bool,
    ) -> anyhow::Result<Invocation> {
        self.shared
            .wait_for(timeout, || {
                self.shared.invocations().into_iter().find(|i| pred(i))
            })
            .await
            .ok_or_else(|| anyhow::anyhow!("no matching invocation within {timeout:?}"))
    }

    /// Waits until `check` returns something, re-checking whenever the emulator records
    /// anything (an invocation, a call, a socket, a freeze, a log line).
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        self.shared.wait_for(timeout, check).await
    }

    // --- management API ------------------------------------------------------------------

    /// The management calls kept, oldest first (every one unless `record_limit` is set).
    pub fn calls(&self) -> Vec<Call> {
        self.shared.management.calls()
    }

    /// The `POST`s naming this connection, in order.
    pub fn posts_to(&self, connection_id: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "POST" && c.connection_id.as_deref() == Some(connection_id))
            .collect()
    }

    /// Calls whose signature was refused.
    pub fn bad_signatures(&self) -> usize {
        self.shared.management.bad_signatures()
    }

    /// Injects a fault for the next `POST`s to this connection.
    pub fn inject(&self, connection_id: &str, fault: Fault) {
        self.shared.management.inject("POST", connection_id, fault);
    }

    /// Injects a fault for the next calls with `method` (`GET`, `POST`, `DELETE`).
    pub fn inject_on(&self, method: &str, connection_id: &str, fault: Fault) {
        self.shared.management.inject(method, connection_id, fault);
    }

    /// Every `POST` waits this long first.
    pub fn set_post_delay(&self, delay: Duration) {
        self.shared.management.set_post_delay(delay);
    }

    /// Waits until the recorded calls satisfy `pred`; returns them.
    pub async fn wait_calls(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Call]) -> bool,
    ) -> anyhow::Result<Vec<Call>> {
        let mgmt = &self.shared.management;
        self.shared
            .wait_for(timeout, || {
                let calls = mgmt.calls();
                pred(&calls).then_some(calls)
            })
            .await
            .ok_or_else(|| anyhow::anyhow!("calls did not match within {timeout:?}"))
    }

    // --- sockets -------------------------------------------------------------------------

    /// Every socket accepted so far, in order.
    pub fn sockets(&self) -> Vec<SocketRecord> {
        self.shared.sockets.history()
    }

    pub fn connection_ids(&self) -> Vec<String> {
        self.sockets()
            .into_iter()
            .map(|s| s.connection_id)
            .collect()
    }

    pub fn last_connection_id(&self) -> Option<String> {
        self.connection_ids().pop()
    }

    pub fn open_connections(&self) -> Vec<String> {
        self.shared.sockets.open_ids()
    }

    /// The next socket gets this connection id (e.g. one with `+` or `/`).
    pub fn set_next_connection_id(&self, id: &str) {
        self.shared.sockets.push_next_id(id.to_string());
    }

    /// Drop `$disconnect` events, as AWS may.
    pub fn lose_disconnects(&self, lose: bool) {
        self.shared.sockets.set_lose_disconnects(lose);
    }

    /// Writes a frame to a socket directly, not through `@connections` and not recorded (a
    /// marker for tests: frames on one socket arrive in order). False if it is not open.
    pub async fn push(&self, connection_id: &str, text: &str) -> bool {
        match self
            .shared
            .sockets
            .send(connection_id, Bytes::from(text.to_string()))
        {
            Some(written) => written.await.unwrap_or(false),
            None => false,
        }
    }

    /// Closes a socket from the gateway's side (as `DELETE @connections` does).
    pub fn disconnect(&self, connection_id: &str, code: u16) -> bool {
        self.shared.sockets.close(connection_id, code, "")
    }

    /// Waits until the socket ended and its `$disconnect` (if not lost) returned.
    pub async fn wait_disconnected(
        &self,
        connection_id: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let id = connection_id.to_string();
        self.shared
            .wait_for(timeout, || {
                let record = self
                    .sockets()
                    .into_iter()
                    .rev()
                    .find(|s| s.connection_id == id)?;
                record.closed?;
                if record.disconnect_lost {
                    return Some(());
                }
                self.invocations()
                    .iter()
                    .any(|i| {
                        i.kind == EventKind::Disconnect
                            && i.connection_id.as_deref() == Some(id.as_str())
                            && i.finished.is_some()
                    })
                    .then_some(())
            })
            .await
            .ok_or_else(|| anyhow::anyhow!("{connection_id} not disconnected within {timeout:?}"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for rt in &self.shared.runtimes {
            rt.kill();
        }
        self.shared.shutdown.send_replace(true);
        if std::thread::panicking() {
            for i in 0..self.instances() {
                let logs = self.logs(i);
                let start = logs.len().saturating_sub(200);
                eprintln!(
                    "--- instance {i}: last {} log lines ---",
                    logs.len() - start
                );
                for line in &logs[start..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}
