//! `loadgen`: load generator for the messaging service (and for the `floor` yardstick server).
//!
//! Phases: create rooms → open sockets (upgrade + `getId`) → join each socket to its room
//! with its own REST request → wait for presence to settle → publish for `--duration`
//! seconds → drain → print one JSON report. See bench/README.md for every figure.
#![recursion_limit = "256"]

mod http;
mod parse;
mod procfs;
mod publish;
mod server_metrics;
mod ws;

/// Client stubs generated from ../proto/messaging.proto.
pub mod pb {
    tonic::include_proto!("messaging.v1");
}

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use hyper::Method;
use serde_json::{Value, json};

use crate::http::Http;
use crate::publish::{Plan, Room, Sender, Via};
use crate::ws::{End, Shared, now_ns};

/// Where a join request is sent when the target has several nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum JoinNode {
    /// The node whose WebSocket port the socket is connected to.
    Own,
    /// Join worker w sends to node w mod N, whichever node holds the socket.
    Any,
}

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    // A later flag overrides an earlier one, so `run.sh SCENARIO -- --sockets N` works.
    args_override_self = true,
    about = "Load generator for the messaging service: sockets, joins, presence, fan-out throughput, loss, order and latency"
)]
struct Args {
    /// HTTP address of the target (REST under /messaging). Several nodes of one service:
    /// a comma-separated list; publisher p uses node p mod N.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8084")]
    http: Vec<String>,
    /// WebSocket address of the target. Several nodes: a comma-separated list; socket i
    /// connects to node i mod N.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8087")]
    ws: Vec<String>,
    /// Path of the WebSocket upgrade request (any path upgrades).
    #[arg(long, default_value = "/")]
    ws_path: String,
    /// Put before the path of every REST call (`/messaging/...`), e.g. an API Gateway
    /// stage (`/dev`). Not before `/metrics`.
    #[arg(long, default_value = "")]
    http_prefix: String,
    /// gRPC address of the target (needed for --via grpc). Several nodes: a comma-separated
    /// list; publisher p uses node p mod N.
    #[arg(long, value_delimiter = ',')]
    grpc: Vec<String>,
    /// GRPC_TOKEN of the target, if it requires one.
    #[arg(long)]
    grpc_token: Option<String>,
    /// Bearer token for the REST calls (the floor ignores it).
    #[arg(long)]
    token: Option<String>,
    /// Church of the rooms (must be the token's church for the service).
    #[arg(long, default_value = "lgchurch")]
    church: String,
    /// Number of WebSocket connections.
    #[arg(long, default_value_t = 100)]
    sockets: usize,
    /// Number of rooms; socket i joins room i mod R.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Concurrent publishers (each one HTTP/1.1 keep-alive connection or gRPC channel).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Seconds of publishing (0: connect, join and settle only).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Target aggregate publish rate in messages/s (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Publish over REST (/messaging/messages/send) or gRPC (Delivery/SendConversationMessages).
    #[arg(long, value_enum, default_value_t = Via::Rest)]
    via: Via,
    /// PID of the server process, for its RSS and CPU figures. Several nodes: a
    /// comma-separated list; RSS and CPU are summed over them (and listed per process).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Processes that are part of the target's setup but not the server, e.g. the gateway
    /// emulator that stands in for API Gateway (comma-separated): their CPU over the same
    /// windows is reported apart, as `aux`.
    #[arg(long, value_delimiter = ',')]
    aux_pid: Vec<u32>,
    /// With several nodes, which node each join request goes to: the node that holds the
    /// socket (`own`), or round-robin over the nodes like a load balancer (`any`, so most
    /// joins are forwarded by the service to the holder).
    #[arg(long, value_enum, default_value_t = JoinNode::Own)]
    join_node: JoinNode,
    /// Bytes of each message's content (the `lg|room|seq|t|` header is padded to this).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Join requests in flight at once (one socket per request).
    #[arg(long, default_value_t = 64)]
    join_concurrency: usize,
    /// WebSocket connects + handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Name echoed in the report.
    #[arg(long, default_value = "custom")]
    scenario: String,
    /// Label of the target (e.g. service, floor) echoed in the report.
    #[arg(long)]
    target_kind: Option<String>,
    /// Longest wait for outstanding deliveries after publishing stops (s).
    #[arg(long, default_value_t = 5.0)]
    drain_timeout: f64,
    /// The drain also stops after this long without any new delivery (s).
    #[arg(long, default_value_t = 1.0)]
    drain_idle: f64,
    /// Longest wait for presence (attendance) to settle after the joins (s).
    #[arg(long, default_value_t = 30.0)]
    presence_timeout: f64,
    /// Idle time between presence settling and reading the server's RSS after the joins
    /// (s): what the server holds at rest, once its allocator has had a moment to return
    /// the joins' transient garbage (the `after_join` figure and `rss_per_socket_bytes`).
    #[arg(long, default_value_t = 0.0)]
    idle_wait: f64,
    /// Sockets per 127.0.0.x source address once --sockets exceeds it (loopback targets).
    #[arg(long, default_value_t = 20_000)]
    sockets_per_source: usize,
    /// Timeout of one REST or gRPC request, and of one socket's connect + handshake (s).
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
    /// Tokio worker threads. One keeps the generator to at most one core of a machine it
    /// shares with the server, and costs less per delivery than two.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Run the publishers on a thread of their own, as other machines would be, instead of
    /// on the worker threads that read the sockets. On one shared thread a publisher's next
    /// request and its response can wait behind the reads of the previous message's frames.
    /// Off by default, so that figures stay comparable with earlier sessions'.
    #[arg(long)]
    publish_thread: bool,
    /// `displayName` of every join. `"Anonymous "` (trailing space) is what anonymous
    /// live-stream viewers send: the server numbers each one `Anonymous_N` (§5.1).
    #[arg(long, default_value = "lg")]
    join_name: String,
    /// contentId prefix of the rooms (default: unique per run, so rooms start empty).
    #[arg(long)]
    room_prefix: Option<String>,
    /// Measure only the receive-side parser: classify N service-shaped `message` frames and
    /// record them (dedup bitset, order, histogram) in one thread, print ns/frame, exit.
    #[arg(long, value_name = "N")]
    parse_bench: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(n) = args.parse_bench {
        println!("{}", ws::parse_bench(n, args.payload));
        return ExitCode::SUCCESS;
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    rt.worker_threads(args.threads.max(1));
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // Never dropped: the process exits at the end (see below).
    let publish_rt = if args.publish_thread {
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lg-publish")
            .enable_all()
            .build();
        match built {
            Ok(rt) => Some(rt),
            Err(e) => {
                eprintln!("loadgen: publish runtime: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let publish_on = publish_rt.as_ref().map(|rt| rt.handle().clone());
    let code = match rt.block_on(run(args, publish_on)) {
        Ok((report, ok)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            if ok { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            2
        }
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Sockets, tasks and buffers are left to the OS: tearing down 10k tasks buys nothing.
    std::process::exit(code);
}

/// One line of progress on stderr (stdout carries only the JSON report).
fn progress(msg: std::fmt::Arguments) {
    eprintln!("loadgen: [{:7.3}s] {msg}", now_ns() as f64 / 1e9);
}

fn addr(s: &str) -> anyhow::Result<SocketAddr> {
    s.to_socket_addrs()
        .with_context(|| format!("bad address {s}"))?
        .next()
        .ok_or_else(|| anyhow!("no address for {s}"))
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// p50/p90/p99/p99.9/max/mean in ms of a histogram in µs.
fn ms_summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let q = |x: f64| r3(h.value_at_quantile(x) as f64 / 1000.0);
    json!({
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
        "max": r3(h.max() as f64 / 1000.0), "mean": r3(h.mean() / 1000.0), "count": h.len(),
    })
}

fn secs(ns: u64) -> f64 {
    r3(ns as f64 / 1e9)
}

/// `publish_on`: the runtime the publishers' connections are made and driven on (None:
/// the current one).
async fn run(a: Args, publish_on: Option<tokio::runtime::Handle>) -> anyhow::Result<(Value, bool)> {
    let publish_on = publish_on.unwrap_or_else(tokio::runtime::Handle::current);
    now_ns(); // fix the epoch
    if a.rooms == 0 {
        bail!("--rooms must be at least 1");
    }
    if a.duration > 0.0 && a.publishers == 0 {
        bail!("--publishers must be at least 1 when publishing");
    }
    if a.via == Via::Grpc && a.grpc.is_empty() {
        bail!("--via grpc needs --grpc HOST:PORT");
    }
    if !a
        .church
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("--church must be [A-Za-z0-9_-]");
    }
    let http_addrs = a
        .http
        .iter()
        .map(|s| addr(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ws_addrs =
        a.ws.iter()
            .map(|s| addr(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
    // Node k is (http[k], ws[k], grpc[k]); a list of one address serves every node.
    let nodes = http_addrs.len().max(ws_addrs.len()).max(a.grpc.len());
    for (flag, n) in [
        ("--http", http_addrs.len()),
        ("--ws", ws_addrs.len()),
        ("--grpc", a.grpc.len()),
    ] {
        if n > 1 && n != nodes {
            bail!("{flag} lists {n} addresses; with {nodes} nodes give 1 or {nodes}");
        }
    }
    if http_addrs.is_empty() || ws_addrs.is_empty() {
        bail!("--http and --ws need at least one address");
    }
    let http_addr = http_addrs[0];
    let timeout = Duration::from_secs_f64(a.request_timeout);
    let nofile =
        procfs::raise_nofile((a.sockets + a.publishers + a.join_concurrency + 1024) as u64);
    if (nofile as usize) < a.sockets + 64 {
        bail!(
            "RLIMIT_NOFILE is {nofile}, too low for {} sockets",
            a.sockets
        );
    }
    let pid: Option<&[u32]> = (!a.server_pid.is_empty()).then_some(&a.server_pid[..]);
    let server_rss = |p: Option<&[u32]>| p.and_then(procfs::rss_bytes_sum);
    let rss_before = server_rss(pid);
    let gen_cpu_start = procfs::self_cpu_seconds();
    let load_start = procfs::loadavg_1m();

    // ---- rooms ----
    let prefix = a.room_prefix.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        format!("lg-{}-{ms}", std::process::id())
    });
    let room_ids = create_rooms(&a, http_addr, &prefix, timeout).await?;
    progress(format_args!(
        "{} rooms ready; opening {} sockets",
        a.rooms, a.sockets
    ));

    // ---- sockets ----
    let targets: Vec<Arc<ws::Target>> = ws_addrs
        .iter()
        .map(|&w| Arc::new(ws::Target::new(w, &a.ws_path)))
        .collect();
    let shared: Vec<Arc<Shared>> = (0..a.sockets)
        .map(|i| Arc::new(Shared::new((i % a.rooms) as u32)))
        .collect();
    let multi_source = a.sockets > a.sockets_per_source
        && ws_addrs
            .iter()
            .all(|w| matches!(w.ip(), IpAddr::V4(ip) if ip.is_loopback()));
    let sps = a.sockets_per_source.max(1);
    let sem = Arc::new(tokio::sync::Semaphore::new(a.connect_concurrency.max(1)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let t_connect = Instant::now();
    for (i, sh) in shared.iter().enumerate() {
        // Socket i connects to node i mod N: the sockets are spread evenly over the nodes.
        let target = targets[i % targets.len()].clone();
        let (sem, tx, sh) = (sem.clone(), tx.clone(), sh.clone());
        let source = multi_source.then(|| Ipv4Addr::new(127, 0, 0, 1 + (i / sps).min(253) as u8));
        tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let r = tokio::time::timeout(timeout, ws::open(&target, source)).await;
            drop(permit);
            match r {
                Ok(Ok((stream, buf, id))) => {
                    let _ = tx.send((i, Ok(id)));
                    drop(tx);
                    ws::receive(stream, buf, sh).await;
                }
                Ok(Err(e)) => {
                    let _ = tx.send((i, Err(e.to_string())));
                }
                Err(_) => {
                    let _ = tx.send((i, Err("connect/handshake timed out".to_string())));
                }
            }
        });
    }
    drop(tx);
    let mut ids: Vec<Option<String>> = vec![None; a.sockets];
    let (mut connect_errors, mut connect_first_error) = (0u64, None);
    for _ in 0..a.sockets {
        let Some((i, r)) = rx.recv().await else { break };
        match r {
            Ok(id) => ids[i] = Some(id),
            Err(e) => {
                connect_errors += 1;
                connect_first_error.get_or_insert(e);
            }
        }
    }
    let connect_seconds = t_connect.elapsed().as_secs_f64();
    let opened = ids.iter().filter(|x| x.is_some()).count();
    let rss_after_connect = server_rss(pid);
    progress(format_args!(
        "{opened} sockets open in {connect_seconds:.2} s ({connect_errors} errors); joining"
    ));

    // ---- joins ----
    let joins: Arc<Vec<(usize, String)>> = Arc::new(
        ids.into_iter()
            .enumerate()
            .filter_map(|(i, id)| id.map(|id| (i, id)))
            .collect(),
    );
    let room_sizes: Arc<Vec<AtomicU64>> =
        Arc::new((0..a.rooms).map(|_| AtomicU64::new(0)).collect());
    let aux: Option<&[u32]> = (!a.aux_pid.is_empty()).then_some(&a.aux_pid[..]);
    let srv_cpu_join0 = pid.and_then(procfs::cpu_seconds_sum);
    let aux_cpu_join0 = aux.and_then(procfs::cpu_seconds_sum);
    let join = run_joins(
        &a,
        &http_addrs,
        timeout,
        &joins,
        &shared,
        &room_ids,
        &room_sizes,
    )
    .await?;
    let room_sizes: Vec<u64> = room_sizes.iter().map(|s| s.load(Relaxed)).collect();
    let joined: u64 = room_sizes.iter().sum();

    progress(format_args!(
        "{} joins in {:.2} s ({} errors); waiting for presence",
        join.requests,
        join.last_ns.saturating_sub(join.first_ns) as f64 / 1e9,
        join.errors
    ));
    // ---- presence ----
    let presence = wait_presence(&a, &shared, &room_sizes, join.first_ns, join.last_ns).await;
    if a.idle_wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(a.idle_wait)).await;
    }
    let rss_after_join = server_rss(pid);
    let srv_cpu_join1 = pid.and_then(procfs::cpu_seconds_sum);
    let aux_cpu_join1 = aux.and_then(procfs::cpu_seconds_sum);

    // ---- publish ----
    let rooms: Arc<Vec<Room>> = Arc::new(
        room_ids
            .iter()
            .zip(&room_sizes)
            .map(|(id, &size)| Room {
                id: id.clone(),
                size,
                next_seq: tokio::sync::Mutex::new(0),
            })
            .collect(),
    );
    let mut pubs = Vec::new();
    let mut publish_seconds = 0.0;
    let (mut srv_cpu, mut gen_cpu, mut aux_cpu) = ([None; 3], [0.0f64; 3], [None; 3]);
    // Per server process, at publish start and after the drain.
    let (mut srv_each0, mut srv_each2) = (Vec::new(), Vec::new());
    let (mut pub_start_ns, mut drain_seconds) = (0u64, 0.0);
    let (mut gen_sys0, mut gen_sys2) = (0.0f64, 0.0f64);
    // The nodes' own timings (request, database write, broker acknowledgement) over the
    // same window: where a publish's time went on the server side.
    let mut server_timings = Value::Null;
    if a.duration > 0.0 {
        let plan = Arc::new(Plan {
            church: a.church.clone(),
            payload: a.payload,
            rate: a.rate,
            publishers: a.publishers,
            timeout,
            grpc_token: a.grpc_token.clone(),
        });
        let mut senders = Vec::with_capacity(a.publishers);
        // Publisher p talks to node p mod N.
        // Connected on the publishers' runtime: a connection is driven by the reactor of
        // the runtime it was made on.
        for p in 0..a.publishers {
            let (via, token, prefix) = (a.via, a.token.clone(), a.http_prefix.clone());
            let (h, g) = (
                http_addrs[p % http_addrs.len()],
                a.grpc.get(p % a.grpc.len().max(1)).cloned(),
            );
            let connect = publish_on.spawn(async move {
                match via {
                    Via::Rest => Sender::connect_rest(h, &prefix, token.as_deref(), timeout).await,
                    Via::Grpc => {
                        let g = g.ok_or_else(|| anyhow!("--via grpc needs --grpc"))?;
                        Sender::connect_grpc(&g, timeout).await
                    }
                }
            });
            senders.push(connect.await??);
        }
        progress(format_args!("publishing for {} s", a.duration));
        let timings0 = server_metrics::scrape(&http_addrs, timeout).await;
        srv_each0 = a
            .server_pid
            .iter()
            .map(|&p| procfs::cpu_seconds(p))
            .collect();
        srv_cpu[0] = pid.and_then(procfs::cpu_seconds_sum);
        aux_cpu[0] = aux.and_then(procfs::cpu_seconds_sum);
        gen_cpu[0] = procfs::self_cpu_seconds();
        gen_sys0 = procfs::self_cpu_user_sys().1;
        pub_start_ns = now_ns();
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(a.duration);
        let handles: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(p, s)| {
                publish_on.spawn(publish::run(p, s, plan.clone(), rooms.clone(), start, end))
            })
            .collect();
        for h in handles {
            pubs.push(h.await?);
        }
        publish_seconds = start.elapsed().as_secs_f64();
        srv_cpu[1] = pid.and_then(procfs::cpu_seconds_sum);
        aux_cpu[1] = aux.and_then(procfs::cpu_seconds_sum);
        gen_cpu[1] = procfs::self_cpu_seconds();
        progress(format_args!("publishing done; draining"));
        // ---- drain ----
        let expected: u64 = pubs.iter().map(|p| p.expected).sum();
        let t_drain = Instant::now();
        let (mut last, mut last_change) = (ws::RECEIVED.load(Relaxed), Instant::now());
        while ws::RECEIVED.load(Relaxed) < expected
            && t_drain.elapsed().as_secs_f64() < a.drain_timeout
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = ws::RECEIVED.load(Relaxed);
            if now != last {
                (last, last_change) = (now, Instant::now());
            } else if last_change.elapsed().as_secs_f64() >= a.drain_idle {
                break;
            }
        }
        drain_seconds = t_drain.elapsed().as_secs_f64();
        srv_cpu[2] = pid.and_then(procfs::cpu_seconds_sum);
        aux_cpu[2] = aux.and_then(procfs::cpu_seconds_sum);
        srv_each2 = a
            .server_pid
            .iter()
            .map(|&p| procfs::cpu_seconds(p))
            .collect();
        gen_cpu[2] = procfs::self_cpu_seconds();
        gen_sys2 = procfs::self_cpu_user_sys().1;
        if let (Some(t0), Some(t2)) = (timings0, server_metrics::scrape(&http_addrs, timeout).await)
        {
            server_timings = server_metrics::window(&t0, &t2);
        }
    }
    let rss_after_run = server_rss(pid);

    // ---- merge ----
    let latency = ws::latency_histogram();
    let (mut received, mut dups, mut ooo, mut wrong, mut foreign) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut reads, mut bytes, mut att_bytes) = (0u64, 0u64, 0u64);
    let (mut att_max, mut att_sum, mut bip_max, mut bip_sum, mut last_rx) =
        (0u32, 0u64, 0u32, 0u64, 0u64);
    let mut closes: std::collections::BTreeMap<String, u64> = Default::default();
    // (received, duplicates, out_of_order) of the sockets held by each node.
    let mut per_node = vec![(0u64, 0u64, 0u64); ws_addrs.len()];
    for (i, sh) in shared.iter().enumerate() {
        let st = sh.stats();
        let n = &mut per_node[i % ws_addrs.len()];
        (n.0, n.1, n.2) = (
            n.0 + st.received,
            n.1 + st.duplicates,
            n.2 + st.out_of_order,
        );
        received += st.received;
        dups += st.duplicates;
        ooo += st.out_of_order;
        wrong += st.wrong_room;
        foreign += st.foreign;
        last_rx = last_rx.max(st.last_rx_ns);
        reads += st.reads;
        bytes += st.bytes;
        att_bytes += st.attendance_bytes;
        if sh.joined.load(Relaxed) {
            att_max = att_max.max(st.attendance_frames);
            att_sum += u64::from(st.attendance_frames);
            bip_max = bip_max.max(st.blocked_ip_frames);
            bip_sum += u64::from(st.blocked_ip_frames);
        }
        match st.ended {
            Some(End::Close(c)) => *closes.entry(c.to_string()).or_default() += 1,
            Some(End::Eof) => *closes.entry("eof".into()).or_default() += 1,
            Some(End::Error) => *closes.entry("error".into()).or_default() += 1,
            None => {}
        }
    }
    let sent: u64 = pubs.iter().map(|p| p.sent).sum();
    let publish_errors: u64 = pubs.iter().map(|p| p.errors).sum();
    let expected: u64 = pubs.iter().map(|p| p.expected).sum();
    let server_delivered: u64 = pubs.iter().map(|p| p.server_delivered).sum();
    let lock_waits: u64 = pubs.iter().map(|p| p.lock_waits).sum();
    let slips: u64 = pubs.iter().map(|p| p.schedule_slips).sum();
    let mut pub_latency = Histogram::<u64>::new(3).expect("valid");
    for p in &pubs {
        let _ = pub_latency.add(&p.latency_us);
    }
    let publish_first_error = pubs.iter().find_map(|p| p.first_error.clone());
    let lost = expected.saturating_sub(received);
    let extra = received.saturating_sub(expected);
    let per_sec = |n: u64, s: f64| if s > 0.0 { r3(n as f64 / s) } else { 0.0 };
    let to_last = if last_rx > pub_start_ns && pub_start_ns > 0 {
        per_sec(received, (last_rx - pub_start_ns) as f64 / 1e9)
    } else {
        0.0
    };
    let joined_n = joined.max(1) as f64;
    let cpu_diff = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => Some(r3(y - x)),
        _ => None,
    };
    let srv_pub = cpu_diff(srv_cpu[0], srv_cpu[1]);
    let srv_pub_drain = cpu_diff(srv_cpu[0], srv_cpu[2]);
    let gen_pub_drain = gen_cpu[2] - gen_cpu[0];
    let us_per = |cpu: Option<f64>| match cpu {
        Some(c) if received > 0 => Some(r3(c * 1e6 / received as f64)),
        _ => None,
    };
    let rss_per_socket = |after: Option<u64>| match (rss_before, after) {
        (Some(b), Some(x)) if opened > 0 => Some(r3((x as f64 - b as f64) / opened as f64)),
        _ => None,
    };

    let mut failures = Vec::new();
    for (n, what) in [
        (lost, "lost deliveries"),
        (dups, "duplicate deliveries"),
        (ooo, "out-of-order deliveries"),
        (wrong, "deliveries to a room the socket did not join"),
        (connect_errors, "socket connect/handshake errors"),
        (join.errors, "join errors"),
        (publish_errors, "publish errors"),
    ] {
        if n > 0 {
            failures.push(format!("{n} {what}"));
        }
    }
    let ended: u64 = closes.values().sum();
    if ended > 0 {
        failures.push(format!("{ended} sockets ended during the run: {closes:?}"));
    }
    if presence.saw_attendance && presence.settled_ns.is_none() && joined > 0 {
        failures.push(format!(
            "presence did not settle within {} s ({} of {joined} sockets)",
            a.presence_timeout, presence.settled_sockets
        ));
    }
    let ok = failures.is_empty();

    let report = json!({
        "scenario": a.scenario,
        "target_kind": a.target_kind,
        "nodes": nodes,
        "target": http_addrs.iter().map(|h| format!("http://{h}")).collect::<Vec<_>>().join(","),
        "ws": ws_addrs.iter().map(|w| format!("ws://{w}{}", a.ws_path)).collect::<Vec<_>>().join(","),
        "grpc": (!a.grpc.is_empty()).then(|| a.grpc.iter().map(|g| format!("http://{g}")).collect::<Vec<_>>().join(",")),
        "join_node": if nodes > 1 { Some(match a.join_node { JoinNode::Own => "own", JoinNode::Any => "any" }) } else { None },
        "sockets": a.sockets,
        "sockets_open": opened,
        "source_addresses": if multi_source { a.sockets.div_ceil(sps) } else { 1 },
        "connect_seconds": r3(connect_seconds),
        "connect_errors": connect_errors,
        "connect_first_error": connect_first_error,
        "rooms": a.rooms,
        "publishers": a.publishers,
        "publishers_effective": a.publishers.min(a.rooms),
        "via": match a.via { Via::Rest => "rest", Via::Grpc => "grpc" },
        "rate_target": a.rate,
        "payload_bytes": a.payload,
        "duration": a.duration,
        "publish_seconds": r3(publish_seconds),
        "messages_sent": sent,
        "messages_per_sec": per_sec(sent, publish_seconds),
        "publish_errors": publish_errors,
        "publish_first_error": publish_first_error,
        "publish_latency_ms": ms_summary(&pub_latency),
        "publish_room_lock_waits": lock_waits,
        "publish_schedule_slips": slips,
        "expected_deliveries": expected,
        "received": received,
        "lost": lost,
        "unexpected_extra": extra,
        "duplicates": dups,
        "out_of_order": ooo,
        "wrong_room": wrong,
        "foreign_messages": foreign,
        "server_reported_deliveries": (a.via == Via::Grpc).then_some(server_delivered),
        "deliveries_per_sec": per_sec(received, publish_seconds),
        "deliveries_per_sec_to_last": to_last,
        "drain_seconds": r3(drain_seconds),
        "latency_ms": ms_summary(&latency),
        "per_node": (ws_addrs.len() > 1).then(|| per_node.iter().map(|(r, d, o)| json!({"received": r, "duplicates": d, "out_of_order": o})).collect::<Vec<_>>()),
        "sockets_ended": closes,
        "join": {
            "display_name": a.join_name,
            "seconds": secs(join.last_ns.saturating_sub(join.first_ns)),
            "requests": join.requests,
            "errors": join.errors,
            "first_error": join.first_error,
            "requests_per_sec": per_sec(join.requests, join.last_ns.saturating_sub(join.first_ns) as f64 / 1e9),
            "latency_ms": ms_summary(&join.latency_us),
            "joined_sockets": joined,
            "attendance_frames_per_socket": {"max": att_max, "mean": r3(att_sum as f64 / joined_n)},
            "attendance_bytes_per_socket_mean": r3(att_bytes as f64 / joined_n),
            "blocked_ip_frames_per_socket": {"max": bip_max, "mean": r3(bip_sum as f64 / joined_n)},
            "presence_settled_seconds": presence.settled_ns.map(|t| secs(t.saturating_sub(join.first_ns))),
            "presence_settled_after_last_join_seconds": presence.settled_ns.map(|t| secs(t.saturating_sub(join.last_ns))),
            "presence_settled_sockets": presence.settled_sockets,
            "attendance_seen": presence.saw_attendance,
        },
        "server": pid.map(|p| json!({
            "pid": p[0],
            "pids": p,
            // Each process's share of cpu_seconds_publish_drain (one entry per --server-pid).
            "cpu_seconds_publish_drain_each": srv_each0.iter().zip(&srv_each2).map(|(x, y)| cpu_diff(*x, *y)).collect::<Vec<_>>(),
            "rss_bytes": {
                "before": rss_before,
                "after_connect": rss_after_connect,
                "after_join": rss_after_join,
                "after_run": rss_after_run,
            },
            "rss_per_socket_bytes": rss_per_socket(rss_after_join),
            "rss_per_socket_connect_only_bytes": rss_per_socket(rss_after_connect),
            "cpu_seconds_join_presence": cpu_diff(srv_cpu_join0, srv_cpu_join1),
            "cpu_seconds_publish": srv_pub,
            "cpu_seconds_publish_drain": srv_pub_drain,
            "cpu_us_per_delivery": us_per(srv_pub_drain),
        })),
        // The --aux-pid processes (e.g. the gateway emulator), over the server's windows.
        "aux": aux.map(|p| json!({
            "pids": p,
            "rss_bytes_after_run": procfs::rss_bytes_sum(p),
            "cpu_seconds_join_presence": cpu_diff(aux_cpu_join0, aux_cpu_join1),
            "cpu_seconds_publish": cpu_diff(aux_cpu[0], aux_cpu[1]),
            "cpu_seconds_publish_drain": cpu_diff(aux_cpu[0], aux_cpu[2]),
            "cpu_us_per_delivery": us_per(cpu_diff(aux_cpu[0], aux_cpu[2])),
        })),
        // Summed over the --http nodes, publish start to the end of the drain: per series
        // (histograms in seconds), how many and their mean in ms.
        "server_timings": server_timings,
        "generator": {
            "cpu_seconds_total": r3(procfs::self_cpu_seconds() - gen_cpu_start),
            "cpu_seconds_publish": r3(gen_cpu[1] - gen_cpu[0]),
            "cpu_seconds_publish_drain": r3(gen_pub_drain),
            "cpu_us_per_delivery": us_per((a.duration > 0.0).then_some(gen_pub_drain)),
            "cpu_kernel_share_publish_drain": (gen_pub_drain > 0.0).then(|| r3((gen_sys2 - gen_sys0) / gen_pub_drain)),
            "threads": a.threads,
            "publish_thread": a.publish_thread,
            "socket_reads": reads,
            "socket_bytes": bytes,
            "frames_per_read": (reads > 0).then(|| r3((received + dups + att_sum + bip_sum) as f64 / reads as f64)),
            "rss_bytes": procfs::rss_bytes(std::process::id()),
            "nofile_limit": nofile,
        },
        "host": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "loadavg_1m_start": load_start,
            "loadavg_1m_end": procfs::loadavg_1m(),
        },
        "ok": ok,
        "failures": failures,
    });
    Ok((report, ok))
}

/// Gets or creates one `streamingLive` conversation per room (anonymous-public, so
/// anonymous sends and joins work) and returns their ids.
async fn create_rooms(
    a: &Args,
    http_addr: SocketAddr,
    prefix: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let workers = a.rooms.min(16);
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..workers {
        let mut h = Http::new(http_addr, a.token.as_deref(), timeout)?.with_prefix(&a.http_prefix);
        let (next, church, prefix, n) =
            (next.clone(), a.church.clone(), prefix.to_string(), a.rooms);
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let r = next.fetch_add(1, Relaxed);
                if r >= n {
                    return Ok::<_, anyhow::Error>(out);
                }
                let path =
                    format!("/messaging/conversations/current/{church}/streamingLive/{prefix}-{r}");
                let (status, body) = h.request(Method::GET, &path, Bytes::new()).await?;
                if status != 200 {
                    bail!(
                        "GET {path}: HTTP {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                let v: Value = serde_json::from_slice(&body).context("room response")?;
                let id = v["id"]
                    .as_str()
                    .ok_or_else(|| anyhow!("room response without id: {v}"))?;
                out.push((r, id.to_string()));
            }
        }));
    }
    let mut ids = vec![String::new(); a.rooms];
    for h in handles {
        for (r, id) in h.await?? {
            ids[r] = id;
        }
    }
    Ok(ids)
}

struct JoinOutcome {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    first_ns: u64,
    last_ns: u64,
    latency_us: Histogram<u64>,
}

/// Joins each open socket to its room with its own request, `--join-concurrency` at once.
/// With several nodes, join worker w talks to node w mod N; with `--join-node own` it takes
/// only the sockets held by that node, with `any` it takes whichever socket comes next.
async fn run_joins(
    a: &Args,
    http_addrs: &[SocketAddr],
    timeout: Duration,
    joins: &Arc<Vec<(usize, String)>>,
    shared: &[Arc<Shared>],
    room_ids: &[String],
    room_sizes: &Arc<Vec<AtomicU64>>,
) -> anyhow::Result<JoinOutcome> {
    let nodes = http_addrs.len();
    let own = nodes > 1 && a.join_node == JoinNode::Own;
    // One queue per node (`own`: socket i is held by node i mod N), or one for all.
    let queues: Vec<Arc<Vec<(usize, String)>>> = if own {
        (0..nodes)
            .map(|k| {
                Arc::new(
                    joins
                        .iter()
                        .filter(|(i, _)| i % nodes == k)
                        .cloned()
                        .collect(),
                )
            })
            .collect()
    } else {
        vec![joins.clone()]
    };
    let mut workers = a.join_concurrency.max(1).min(joins.len().max(1));
    if own {
        workers = workers.max(nodes);
    }
    let mut conns = Vec::with_capacity(workers);
    for w in 0..workers {
        let mut h = Http::new(http_addrs[w % nodes], a.token.as_deref(), timeout)?
            .with_prefix(&a.http_prefix);
        h.connect().await?;
        conns.push((h, w % queues.len()));
    }
    let church_json = serde_json::to_string(&a.church)?;
    let name_json = serde_json::to_string(&a.join_name)?;
    let nexts: Vec<Arc<AtomicUsize>> = queues
        .iter()
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect();
    let last = Arc::new(AtomicU64::new(0));
    let shared: Arc<Vec<Arc<Shared>>> = Arc::new(shared.to_vec());
    let room_ids: Arc<Vec<String>> = Arc::new(room_ids.to_vec());
    let first_ns = now_ns();
    let handles: Vec<_> = conns
        .into_iter()
        .map(|(mut h, q)| {
            let (next, last, joins, shared, room_ids, room_sizes, church_json, name_json) = (
                nexts[q].clone(),
                last.clone(),
                queues[q].clone(),
                shared.clone(),
                room_ids.clone(),
                room_sizes.clone(),
                church_json.clone(),
                name_json.clone(),
            );
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).expect("valid");
                let (mut requests, mut errors, mut first_error) = (0u64, 0u64, None);
                loop {
                    let j = next.fetch_add(1, Relaxed);
                    let Some((i, id)) = joins.get(j) else { break };
                    let room = shared[*i].room as usize;
                    let body = format!(
                        r#"[{{"conversationId":"{}","socketId":"{id}","displayName":{name_json},"churchId":{church_json}}}]"#,
                        room_ids[room]
                    );
                    let t = now_ns();
                    let r = h.request(Method::POST, "/messaging/connections", Bytes::from(body)).await;
                    let done = now_ns();
                    last.fetch_max(done, Relaxed);
                    requests += 1;
                    hist.record((done - t) / 1000).ok();
                    match r {
                        Ok((200, _)) => {
                            shared[*i].joined.store(true, Relaxed);
                            room_sizes[room].fetch_add(1, Relaxed);
                        }
                        Ok((status, b)) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| {
                                format!("HTTP {status}: {}", String::from_utf8_lossy(&b[..b.len().min(200)]))
                            });
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                (requests, errors, first_error, hist)
            })
        })
        .collect();
    let mut out = JoinOutcome {
        requests: 0,
        errors: 0,
        first_error: None,
        first_ns,
        last_ns: first_ns,
        latency_us: Histogram::new(3).expect("valid"),
    };
    for h in handles {
        let (r, e, fe, hist) = h.await?;
        out.requests += r;
        out.errors += e;
        if out.first_error.is_none() {
            out.first_error = fe;
        }
        let _ = out.latency_us.add(&hist);
    }
    out.last_ns = last.load(Relaxed).max(first_ns);
    Ok(out)
}

struct Presence {
    settled_ns: Option<u64>,
    settled_sockets: usize,
    saw_attendance: bool,
}

/// Waits until every joined socket's latest attendance frame shows its room's full count.
/// A target that sends no attendance at all (the floor) is given up on 3 s after the joins.
async fn wait_presence(
    a: &Args,
    shared: &[Arc<Shared>],
    room_sizes: &[u64],
    first_ns: u64,
    last_ns: u64,
) -> Presence {
    let joined: Vec<&Arc<Shared>> = shared.iter().filter(|s| s.joined.load(Relaxed)).collect();
    let deadline = last_ns + (a.presence_timeout * 1e9) as u64;
    let _ = first_ns;
    loop {
        let settled = joined
            .iter()
            .filter(|s| u64::from(s.latest_total.load(Relaxed)) == room_sizes[s.room as usize])
            .count();
        let now = now_ns();
        let saw = ws::ATTENDANCE_FRAMES.load(Relaxed) > 0;
        if settled == joined.len() {
            return Presence {
                settled_ns: Some(now),
                settled_sockets: settled,
                saw_attendance: saw,
            };
        }
        if now > deadline || (!saw && now > last_ns + 3_000_000_000) {
            return Presence {
                settled_ns: None,
                settled_sockets: settled,
                saw_attendance: saw,
            };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
