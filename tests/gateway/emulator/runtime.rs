//! The Lambda Runtime API (`2018-06-01`), one listener per instance, and the instance's
//! process.
//!
//! Like Lambda, an instance is handed one invocation at a time: `GET
//! /2018-06-01/runtime/invocation/next` (a long poll) returns the next queued event with
//! `lambda-runtime-aws-request-id`, `lambda-runtime-deadline-ms` (epoch ms),
//! `lambda-runtime-invoked-function-arn` and `lambda-runtime-trace-id`; the function answers
//! with `POST …/invocation/{id}/response` or `…/{id}/error`; a failed start may post
//! `/2018-06-01/runtime/init/error`. Lambda freezes the process once it has replied: with
//! [`Instance::freeze_after_reply`] the next reply is answered only after the process is
//! stopped (`SIGSTOP`, every thread seen stopped in `/proc`).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

use super::events;
use super::{HttpResponse, InvokeError, lock, respond};

/// How the process ended.
#[derive(Debug, Clone)]
pub struct ExitInfo {
    /// The exit code, if it exited by itself.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub at: Instant,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => write!(f, "ended"),
        }
    }
}

/// What the emulator knows of an instance's process.
#[derive(Debug, Clone, Default)]
pub struct ProcState {
    pub pid: Option<u32>,
    /// `GET …/next` calls so far: the first one means the cold start is over.
    pub polls: u64,
    /// The request id being handled, between `next` and the reply.
    pub busy: Option<String>,
    pub exit: Option<ExitInfo>,
    /// The body of a `POST /runtime/init/error`.
    pub init_error: Option<Value>,
    /// Stop the process when its next reply arrives.
    pub freeze_next: bool,
    pub frozen: bool,
    /// When each freeze happened (the process stopped, its reply not yet acknowledged).
    pub freezes: Vec<Instant>,
}

struct Pending {
    request_id: String,
    event: Value,
    reply: oneshot::Sender<Result<Value, InvokeError>>,
    budget: Duration,
}

/// One Lambda execution environment: its Runtime API listener and (optionally) its process.
pub struct Instance {
    pub index: usize,
    pub addr: SocketAddr,
    function_arn: String,
    queue_tx: mpsc::UnboundedSender<Pending>,
    queue_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Pending>>,
    in_flight: Mutex<HashMap<String, oneshot::Sender<Result<Value, InvokeError>>>>,
    state: Mutex<ProcState>,
    logs: Mutex<Vec<String>>,
    changed: Arc<watch::Sender<u64>>,
    echo_logs: bool,
}

const MAX_LOG_LINES: usize = 20_000;

impl Instance {
    pub fn new(
        index: usize,
        addr: SocketAddr,
        region: &str,
        function_name: &str,
        changed: Arc<watch::Sender<u64>>,
    ) -> Self {
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        Self {
            index,
            addr,
            function_arn: format!(
                "arn:aws:lambda:{region}:{}:function:{function_name}",
                events::ACCOUNT_ID
            ),
            queue_tx,
            queue_rx: tokio::sync::Mutex::new(queue_rx),
            in_flight: Mutex::new(HashMap::new()),
            state: Mutex::new(ProcState::default()),
            logs: Mutex::new(Vec::new()),
            changed,
            echo_logs: std::env::var_os("GATEWAY_ECHO_LOGS").is_some_and(|v| !v.is_empty()),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn state(&self) -> ProcState {
        lock(&self.state).clone()
    }

    /// Every line the process wrote, stdout and stderr interleaved, each prefixed.
    pub fn logs(&self) -> Vec<String> {
        lock(&self.logs).clone()
    }

    /// Queues `event`, waits for the function's reply (the response body, parsed) or its error.
    /// Returns the request id with the outcome.
    pub async fn invoke(
        &self,
        event: Value,
        budget: Duration,
    ) -> (String, Result<Value, InvokeError>) {
        let request_id = events::uuid();
        if let Some(exit) = self.state().exit {
            return (
                request_id,
                Err(InvokeError::Exited {
                    instance: self.index,
                    status: exit.to_string(),
                }),
            );
        }
        let (tx, rx) = oneshot::channel();
        let queued = self.queue_tx.send(Pending {
            request_id: request_id.clone(),
            event,
            reply: tx,
            budget,
        });
        if queued.is_err() {
            return (request_id, Err(InvokeError::NoInstance(self.index)));
        }
        let mut changes = self.changed.subscribe();
        let exited = async {
            loop {
                if let Some(exit) = self.state().exit {
                    return exit;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let outcome = tokio::select! {
            biased;
            reply = rx => reply.unwrap_or(Err(InvokeError::Dropped)),
            exit = exited => Err(InvokeError::Exited { instance: self.index, status: exit.to_string() }),
            _ = tokio::time::sleep(budget) => Err(InvokeError::Timeout(budget)),
        };
        (request_id, outcome)
    }

    /// Stop the process when its next reply (`/response` or `/error`) arrives, before the
    /// reply is acknowledged.
    pub fn freeze_after_reply(&self) {
        lock(&self.state).freeze_next = true;
        self.bump();
    }

    /// `SIGSTOP` now, waiting until every thread is stopped. False without a live process.
    pub async fn freeze(&self) -> bool {
        let Some(pid) = self.live_pid() else {
            return false;
        };
        if !signal(pid, libc::SIGSTOP) {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !all_threads_stopped(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        {
            let mut s = lock(&self.state);
            s.frozen = true;
            s.freezes.push(Instant::now());
        }
        self.bump();
        true
    }

    /// `SIGCONT`. False without a live process.
    pub fn resume(&self) -> bool {
        let Some(pid) = self.live_pid() else {
            return false;
        };
        let ok = signal(pid, libc::SIGCONT);
        lock(&self.state).frozen = false;
        self.bump();
        ok
    }

    fn live_pid(&self) -> Option<u32> {
        let s = lock(&self.state);
        if s.exit.is_some() { None } else { s.pid }
    }

    /// Tells the emulator which process plays this instance (for a process the caller
    /// started, e.g. a test playing the function itself).
    pub fn set_pid(&self, pid: u32) {
        lock(&self.state).pid = Some(pid);
        self.bump();
    }

    /// Resumes a frozen process and kills it: what dropping the gateway does.
    pub fn kill(&self) {
        if let Some(pid) = self.live_pid() {
            signal(pid, libc::SIGCONT);
            signal(pid, libc::SIGKILL);
        }
    }

    /// Serves one Runtime API request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> HttpResponse {
        const PREFIX: &str = "/2018-06-01/runtime/";
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let Some(route) = path.strip_prefix(PREFIX) else {
            return not_found();
        };
        if method == Method::GET && route == "invocation/next" {
            return self.next().await;
        }
        if method != Method::POST {
            return not_found();
        }
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return respond(400, &[], "unreadable body"),
        };
        if route == "init/error" {
            let error = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
            self.push_log(format!("[i{} runtime] init error: {error}", self.index));
            lock(&self.state).init_error = Some(error);
            self.bump();
            return accepted();
        }
        let Some(rest) = route.strip_prefix("invocation/") else {
            return not_found();
        };
        if let Some(id) = rest.strip_suffix("/response") {
            let outcome = serde_json::from_slice::<Value>(&body).map_err(|e| {
                InvokeError::Malformed(format!(
                    "{e}: {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(500)
                        .collect::<String>()
                ))
            });
            return self.reply(id, outcome).await;
        }
        if let Some(id) = rest.strip_suffix("/error") {
            return self.reply(id, Err(function_error(&body))).await;
        }
        not_found()
    }

    async fn next(&self) -> HttpResponse {
        {
            lock(&self.state).polls += 1;
        }
        self.bump();
        let pending = {
            let mut rx = self.queue_rx.lock().await;
            loop {
                match rx.recv().await {
                    // Its caller gave up (timeout) while it was queued: Lambda would not run it.
                    Some(p) if p.reply.is_closed() => continue,
                    Some(p) => break p,
                    None => return respond(500, &[], "runtime closed"),
                }
            }
        };
        let deadline = chrono::Utc::now().timestamp_millis()
            + i64::try_from(pending.budget.as_millis()).unwrap_or(i64::MAX / 2);
        lock(&self.in_flight).insert(pending.request_id.clone(), pending.reply);
        lock(&self.state).busy = Some(pending.request_id.clone());
        self.bump();
        let trace = format!(
            "Root=1-{:08x}-{}; Parent={:016x}; Sampled=0",
            chrono::Utc::now().timestamp(),
            &events::uuid().replace('-', "")[..24],
            rand::random::<u64>()
        );
        let deadline = deadline.to_string();
        respond(
            200,
            &[
                ("content-type", "application/json"),
                ("lambda-runtime-aws-request-id", &pending.request_id),
                ("lambda-runtime-deadline-ms", &deadline),
                ("lambda-runtime-invoked-function-arn", &self.function_arn),
                ("lambda-runtime-trace-id", &trace),
            ],
            Bytes::from(pending.event.to_string()),
        )
    }

    async fn reply(&self, id: &str, outcome: Result<Value, InvokeError>) -> HttpResponse {
        let Some(waiter) = lock(&self.in_flight).remove(id) else {
            return respond(
                400,
                &[("content-type", "application/json")],
                r#"{"errorMessage":"Invalid request ID","errorType":"InvalidRequestID"}"#,
            );
        };
        let freeze = {
            let mut s = lock(&self.state);
            s.busy = None;
            std::mem::take(&mut s.freeze_next)
        };
        if freeze {
            // Lambda freezes the environment once the function has replied; the reply is
            // acknowledged (and the caller answered) only once the process is stopped.
            self.freeze().await;
        }
        self.bump();
        let _ = waiter.send(outcome);
        accepted()
    }

    fn push_log(&self, line: String) {
        if self.echo_logs {
            eprintln!("{line}");
        }
        let mut logs = lock(&self.logs);
        if logs.len() >= MAX_LOG_LINES {
            logs.drain(..MAX_LOG_LINES / 2);
        }
        logs.push(line);
    }

    /// Starts the instance's process: `binary` with exactly `env` (nothing inherited), stdout
    /// and stderr kept line by line, killed when `shutdown` turns true or the runtime drops
    /// its task.
    pub fn spawn_process(
        self: &Arc<Self>,
        binary: &Path,
        env: &[(String, String)],
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut cmd = tokio::process::Command::new(binary);
        cmd.env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("spawn {}: {e}", binary.display()))?;
        let pid = child.id();
        {
            let mut s = lock(&self.state);
            s.pid = pid;
        }
        for (stream, name) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                "out",
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                "err",
            ),
        ] {
            let Some(stream) = stream else { continue };
            let me = self.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    me.push_log(format!("[i{} {name}] {line}", me.index));
                    me.bump();
                }
            });
        }
        let me = self.clone();
        tokio::spawn(async move {
            let ended = tokio::select! {
                status = child.wait() => Some(status.ok()),
                _ = shutdown.wait_for(|stop| *stop) => None,
            };
            let status = match ended {
                Some(status) => status,
                None => {
                    if let Some(pid) = child.id() {
                        signal(pid, libc::SIGCONT);
                    }
                    let _ = child.start_kill();
                    child.wait().await.ok()
                }
            };
            use std::os::unix::process::ExitStatusExt;
            let exit = ExitInfo {
                code: status.and_then(|s| s.code()),
                signal: status.and_then(|s| s.signal()),
                at: Instant::now(),
            };
            me.push_log(format!("[i{} runtime] process ended: {exit}", me.index));
            {
                let mut s = lock(&me.state);
                s.exit = Some(exit);
                s.frozen = false;
            }
            me.bump();
        });
        self.bump();
        Ok(())
    }
}

fn function_error(body: &[u8]) -> InvokeError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    InvokeError::Function {
        error_type: v["errorType"].as_str().unwrap_or_default().to_string(),
        message: v["errorMessage"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into()),
    }
}

fn accepted() -> HttpResponse {
    respond(
        202,
        &[("content-type", "application/json")],
        json!({"status": "OK"}).to_string(),
    )
}

fn not_found() -> HttpResponse {
    respond(
        404,
        &[("content-type", "application/json")],
        r#"{"errorMessage":"Not found","errorType":"NotFound"}"#,
    )
}

/// `kill(pid, sig)`; true when the signal was sent.
pub fn signal(pid: u32, sig: i32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) takes plain integers and has no memory effects on this process.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Whether every thread of `pid` is in the stopped state (`T` or `t` in `/proc/…/stat`).
pub fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // The state follows the command name, which is in parentheses and may contain any
        // character: take the text after the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        match state {
            Some('T' | 't') => any = true,
            _ => return false,
        }
    }
    any
}
