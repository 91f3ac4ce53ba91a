//! `gateway-emulator`: the tests' stand-in for AWS API Gateway and the Lambda Runtime API
//! (`tests/gateway/emulator/`, included as is), run as a process of its own so that
//! `loadgen` can load the service in gateway mode (PROTOCOL.md §5.5; `bench/run.sh gateway`).
//!
//! It starts `--instances` processes of `--binary` as Lambda instances (each with its own
//! Runtime API port), the WebSocket front on `--ws-port`, the REST front (payload 1.0) on
//! `--rest-port` and the `@connections` endpoint (SigV4 checked on every call), prints
//!
//! ```text
//! ready rest=127.0.0.1:P ws=127.0.0.1:Q pids=A,B
//! ```
//!
//! on stdout once every instance has asked for its first invocation, and runs until SIGTERM
//! or SIGINT; then it stops the instances and writes its summary of the `@connections`
//! calls (`--stats FILE`, JSON; also one line on stderr).
//!
//! It keeps no call and no invocation (`record_limit` 0): each call goes to a summary of
//! fixed size instead. Calls are grouped into frames by their body (a frame is posted with
//! the same body to every connection of its audience), by the frame's `action`; for each
//! action: frames, posts, failed posts, posts per frame, and the fan-out time of a frame,
//! from the first of its posts received to the last one answered. A frame is closed once
//! no post of it came for `FRAME_IDLE`, so only the frames in flight are held.
//!
//! `--publish-post-delay-ms D` makes every `POST` wait D ms before it is handled, from the
//! first post of a `message` frame on (so that joins before it are not slowed): a model of
//! the network round trip a Lambda function has to the management API in AWS, where a
//! fan-out waits on the network, not on the CPU as it does here.
//!
//! The instances' output goes to stderr when `GATEWAY_ECHO_LOGS` is set (one prefixed line
//! each); `RUST_LOG` and `RUST_BACKTRACE` reach them, and `--env K=V` adds anything else
//! (e.g. `GATEWAY_CONCURRENCY`).
#![recursion_limit = "256"]

// The tests' re-exports are not all used here.
#[allow(unused_imports)]
#[path = "../../tests/gateway/emulator/mod.rs"]
mod emulator;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use emulator::{Addrs, Call, CallHook, Gateway, GatewayOptions, Payload};

/// A frame with no post for this long is complete.
const FRAME_IDLE: Duration = Duration::from_secs(1);
/// Failed calls described in the summary (the first ones).
const FAILED_SAMPLES: usize = 10;

#[derive(Parser, Debug)]
#[command(
    name = "gateway-emulator",
    version,
    about = "API Gateway and Lambda stand-in (the tests' emulator) for load tests of gateway mode"
)]
struct Args {
    /// The service binary each Lambda instance runs.
    #[arg(long)]
    binary: PathBuf,
    /// DATABASE_URL of the instances (PostgreSQL or MySQL: every instance shares it).
    #[arg(long)]
    database_url: String,
    /// JWT_SECRET of the instances.
    #[arg(long)]
    jwt_secret: String,
    /// Lambda instances (processes).
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// Port of the REST front (payload 1.0) on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    rest_port: u16,
    /// Port of the WebSocket front on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    ws_port: u16,
    /// More environment for every instance, K=V (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Where to write the summary of the `@connections` calls (JSON) when stopped.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Lambda's function timeout: how long one invocation may take (s).
    #[arg(long, default_value_t = 30.0)]
    invoke_timeout: f64,
    /// Every POST waits this long (ms) before it is handled, from the first post of a
    /// `message` frame on: a model of the management API's round trip in AWS.
    #[arg(long, default_value_t = 0.0)]
    publish_post_delay_ms: f64,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway-emulator: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-emulator: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed first: a SIGTERM during the start is a stop, not a kill that leaves the
    // instances behind.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let summary = Arc::new(Mutex::new(Summary::new()));
    let mut options = GatewayOptions::new(&args.binary, &args.database_url, &args.jwt_secret);
    options.instances = args.instances;
    options.extra_env = args.env.clone();
    options.rest_payload = Payload::V1;
    options.invoke_timeout = Duration::from_secs_f64(args.invoke_timeout);
    options.addrs = Addrs {
        ws: Some(SocketAddr::from(([127, 0, 0, 1], args.ws_port))),
        rest_v1: Some(SocketAddr::from(([127, 0, 0, 1], args.rest_port))),
        ..Addrs::default()
    };
    options.record_limit = Some(0);
    let hook = summary.clone();
    // Told once, when the first post of a `message` frame was answered.
    let first_message = Arc::new(tokio::sync::Notify::new());
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (first_message_hook, armed_hook) = (first_message.clone(), armed.clone());
    options.on_call = Some(CallHook(Arc::new(move |call: &Call| {
        let opened = emulator::lock(&hook).add(call);
        if opened.as_deref() == Some("message")
            && !armed_hook.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            first_message_hook.notify_one();
        }
    })));

    let started = tokio::select! {
        g = Gateway::start(options) => Some(g?),
        _ = term.recv() => None,
        _ = int.recv() => None,
    };
    // Dropping a gateway kills its instances.
    let Some(gateway) = started else {
        return Ok(());
    };
    let gateway = Arc::new(gateway);
    let delay = Duration::from_secs_f64(args.publish_post_delay_ms.max(0.0) / 1000.0);
    let delayer = (!delay.is_zero()).then(|| {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            first_message.notified().await;
            gateway.set_post_delay(delay);
            eprintln!("gateway-emulator: posts now wait {delay:?}");
        })
    });
    let pids: Vec<String> = (0..gateway.instances())
        .filter_map(|i| gateway.pid(i).map(|p| p.to_string()))
        .collect();
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "ready rest={} ws={} pids={}",
            gateway.rest_addr(Payload::V1),
            gateway.ws_addr(),
            pids.join(",")
        )?;
        out.flush()?;
    }

    // Close idle frames as they complete, so that only frames in flight are held.
    let closer = {
        let summary = summary.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FRAME_IDLE / 2);
            loop {
                tick.tick().await;
                emulator::lock(&summary).close_idle(Instant::now());
            }
        })
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    closer.abort();
    if let Some(d) = delayer {
        d.abort();
        let _ = d.await;
    }
    // The only holder left: dropping it at the end kills what is left of the instances.
    let gateway = Arc::try_unwrap(gateway)
        .map_err(|_| anyhow::anyhow!("the gateway is still shared at shutdown"))?;

    // Stop the instances: SIGTERM (resumed first, should one be frozen), then whatever is
    // left is killed when the gateway drops.
    for i in 0..gateway.instances() {
        if let Some(pid) = gateway.pid(i) {
            emulator::runtime::signal(pid, libc::SIGCONT);
            emulator::runtime::signal(pid, libc::SIGTERM);
        }
    }
    for i in 0..gateway.instances() {
        let _ = gateway.wait_exit(i, Duration::from_secs(5)).await;
    }
    let report = {
        let mut s = emulator::lock(&summary);
        s.close_all();
        s.report(gateway.bad_signatures())
    };
    drop(gateway);
    eprintln!("gateway-emulator: {report}");
    if let Some(path) = &args.stats {
        std::fs::write(path, format!("{report:#}\n"))?;
    }
    Ok(())
}

/// One frame being posted: every post with the same body.
struct Open {
    action: String,
    first_received: Instant,
    last_answered: Instant,
    posts: u64,
    failed: u64,
}

/// The frames of one action.
struct Kind {
    frames: u64,
    posts: u64,
    failed: u64,
    /// First post received → last post answered, per frame (µs).
    fanout_us: Histogram<u64>,
    posts_per_frame: Histogram<u64>,
}

impl Kind {
    fn new() -> Self {
        Self {
            frames: 0,
            posts: 0,
            failed: 0,
            fanout_us: new_histogram(),
            posts_per_frame: new_histogram(),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is valid")
}

/// Everything the emulator keeps about the `@connections` calls: fixed size, but for the
/// frames in flight.
struct Summary {
    open: HashMap<Bytes, Open>,
    kinds: BTreeMap<String, Kind>,
    /// Calls by method and status.
    calls: BTreeMap<(String, u16), u64>,
    /// Each POST, received → answered (µs): the emulator's own time, the socket write
    /// included.
    post_us: Histogram<u64>,
    first_call: Option<Instant>,
    last_call: Option<Instant>,
    /// The first failed calls: method, status, connection, action, when.
    failed: Vec<Value>,
    started: Instant,
}

impl Summary {
    fn new() -> Self {
        Self {
            open: HashMap::new(),
            kinds: BTreeMap::new(),
            calls: BTreeMap::new(),
            post_us: new_histogram(),
            first_call: None,
            last_call: None,
            failed: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Adds one call; returns the action of the frame its post opened, if it opened one.
    fn add(&mut self, call: &Call) -> Option<String> {
        *self
            .calls
            .entry((call.method.clone(), call.status))
            .or_default() += 1;
        self.first_call.get_or_insert(call.received);
        self.last_call = Some(call.answered);
        if !(200..300).contains(&call.status) && self.failed.len() < FAILED_SAMPLES {
            self.failed.push(json!({
                "method": call.method,
                "status": call.status,
                "connection_id": call.connection_id,
                "action": action_of(&call.body),
                "at_seconds": r3(call.received.saturating_duration_since(self.started).as_secs_f64()),
                "signature": call.signature.as_ref().map(|s| format!("{s:?}")),
            }));
        }
        if call.method != "POST" {
            return None;
        }
        let took = call.answered.saturating_duration_since(call.received);
        self.post_us
            .record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX))
            .ok();
        let failed = u64::from(!(200..300).contains(&call.status));
        match self.open.get_mut(&call.body) {
            Some(f) => {
                f.first_received = f.first_received.min(call.received);
                f.last_answered = f.last_answered.max(call.answered);
                f.posts += 1;
                f.failed += failed;
                None
            }
            None => {
                let action = action_of(&call.body);
                self.open.insert(
                    call.body.clone(),
                    Open {
                        action: action.clone(),
                        first_received: call.received,
                        last_answered: call.answered,
                        posts: 1,
                        failed,
                    },
                );
                Some(action)
            }
        }
    }

    fn close(&mut self, f: Open) {
        let kind = self.kinds.entry(f.action).or_insert_with(Kind::new);
        kind.frames += 1;
        kind.posts += f.posts;
        kind.failed += f.failed;
        let spread = f.last_answered.saturating_duration_since(f.first_received);
        kind.fanout_us
            .record(u64::try_from(spread.as_micros()).unwrap_or(u64::MAX))
            .ok();
        kind.posts_per_frame.record(f.posts).ok();
    }

    fn close_idle(&mut self, now: Instant) {
        let idle: Vec<Bytes> = self
            .open
            .iter()
            .filter(|(_, f)| now.saturating_duration_since(f.last_answered) >= FRAME_IDLE)
            .map(|(k, _)| k.clone())
            .collect();
        for k in idle {
            if let Some(f) = self.open.remove(&k) {
                self.close(f);
            }
        }
    }

    fn close_all(&mut self) {
        let open: Vec<Open> = self.open.drain().map(|(_, f)| f).collect();
        for f in open {
            self.close(f);
        }
    }

    fn report(&self, bad_signatures: usize) -> Value {
        let calls: Vec<Value> = self
            .calls
            .iter()
            .map(|((m, s), n)| json!({"method": m, "status": s, "count": n}))
            .collect();
        let frames: serde_json::Map<String, Value> = self
            .kinds
            .iter()
            .map(|(action, k)| {
                (
                    action.clone(),
                    json!({
                        "frames": k.frames,
                        "posts": k.posts,
                        "failed_posts": k.failed,
                        "posts_per_frame": {
                            "min": k.posts_per_frame.min(),
                            "max": k.posts_per_frame.max(),
                            "mean": r3(k.posts_per_frame.mean()),
                        },
                        "fanout_ms": ms_summary(&k.fanout_us),
                    }),
                )
            })
            .collect();
        let span = match (self.first_call, self.last_call) {
            (Some(a), Some(b)) => r3(b.saturating_duration_since(a).as_secs_f64()),
            _ => 0.0,
        };
        json!({
            "calls": calls,
            "bad_signatures": bad_signatures,
            "calls_seconds": span,
            "post_ms": ms_summary(&self.post_us),
            "frames": frames,
            "failed_calls_first": self.failed,
            "cpu_seconds_total": r3(self_cpu_seconds()),
        })
    }
}

/// The frame's `action` (`message`, `attendance`, …; `""` when it has none).
fn action_of(body: &[u8]) -> String {
    const KEY: &[u8] = b"\"action\":\"";
    let Some(at) = body.windows(KEY.len()).position(|w| w == KEY) else {
        return String::new();
    };
    let rest = &body[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == b'"').unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end.min(64)]).into_owned()
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// p50/p90/p99/max/mean in ms of a histogram in µs.
fn ms_summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let q = |x: f64| r3(h.value_at_quantile(x) as f64 / 1000.0);
    json!({
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99),
        "max": r3(h.max() as f64 / 1000.0), "mean": r3(h.mean() / 1000.0), "count": h.len(),
    })
}

/// user + system CPU seconds of this process, all threads.
fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_is_read_from_the_frame() {
        assert_eq!(
            action_of(br#"{"churchId":"c","action":"message","data":{}}"#),
            "message"
        );
        assert_eq!(action_of(br#"{"socketId":"x"}"#), "");
    }

    #[test]
    fn a_capped_record_keeps_the_latest() {
        let mut r = emulator::Record::new(Some(2));
        assert_eq!((r.push('a'), r.push('b'), r.push('c')), (0, 1, 2));
        assert_eq!(r.to_vec(), vec!['b', 'c']);
        assert_eq!(r.get_mut(0), None);
        assert_eq!(r.get_mut(2), Some(&mut 'c'));
        let mut none = emulator::Record::new(Some(0));
        assert_eq!((none.push(1), none.push(2)), (0, 1));
        assert!(none.to_vec().is_empty());
        let mut all = emulator::Record::new(None);
        (0..100).for_each(|i| {
            all.push(i);
        });
        assert_eq!(all.to_vec().len(), 100);
    }

    fn post(body: &'static str, connection: &str, at: Instant, took_ms: u64, status: u16) -> Call {
        Call {
            seq: 0,
            method: "POST".into(),
            raw_path: format!("/dev/@connections/{connection}"),
            connection_id: Some(connection.into()),
            status,
            received: at,
            answered: at + Duration::from_millis(took_ms),
            body: Bytes::from_static(body.as_bytes()),
            signature: None,
            fault: None,
        }
    }

    #[test]
    fn posts_of_one_body_are_one_frame() {
        let t0 = Instant::now();
        let mut s = Summary::new();
        let m1 = r#"{"action":"message","data":{"content":"1"}}"#;
        let m2 = r#"{"action":"message","data":{"content":"2"}}"#;
        assert_eq!(
            s.add(&post(m1, "a", t0, 5, 200)).as_deref(),
            Some("message")
        );
        assert_eq!(
            s.add(&post(m1, "b", t0 + Duration::from_millis(2), 10, 200)),
            None
        );
        assert_eq!(
            s.add(&post(m2, "a", t0, 1, 410)).as_deref(),
            Some("message")
        );
        // Not idle yet: nothing closed.
        s.close_idle(t0 + Duration::from_millis(20));
        assert!(s.kinds.is_empty());
        s.close_idle(t0 + Duration::from_secs(5));
        assert!(s.open.is_empty());
        let k = &s.kinds["message"];
        assert_eq!((k.frames, k.posts, k.failed), (2, 3, 1));
        // m1: from the first post received (t0) to the last answered (t0 + 12 ms).
        assert_eq!(k.fanout_us.max() / 1000, 12);
        let report = s.report(0);
        assert_eq!(report["frames"]["message"]["posts_per_frame"]["max"], 2);
        assert_eq!(report["failed_calls_first"][0]["status"], 410);
    }

    #[test]
    fn env_pairs_parse() {
        assert_eq!(
            parse_env("GATEWAY_CONCURRENCY=128"),
            Ok(("GATEWAY_CONCURRENCY".into(), "128".into()))
        );
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }
}
