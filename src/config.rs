//! Configuration: flags, then environment variables (§1), then defaults. Secrets are never
//! printed (`hide_env_values`, and `Debug` redacts them).
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::hub::HubConfig;
use crate::service::ServiceConfig;

#[derive(Debug, Parser)]
#[command(
    name = "messaging",
    version,
    about = "Real-time delivery service: WebSocket rooms, fan-out and presence"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run pending migrations, then serve (the default).
    Serve,
    /// Run migrations and exit.
    Migrate,
    /// Print one HS256 development token with the claims of §8.1.
    Token(Box<TokenArgs>),
}

#[derive(Clone, Args)]
pub struct Settings {
    /// HTTP port (REST under /messaging; WebSocket upgrades on any path). Falls back to SERVER_PORT, then 8084.
    #[arg(long, env = "PORT", global = true)]
    pub port: Option<u16>,
    /// Address of the HTTP and WebSocket listeners.
    #[arg(long, env = "HOST", default_value = "0.0.0.0", global = true)]
    pub host: String,
    /// Dedicated WebSocket port; 0 disables it.
    #[arg(long, env = "SOCKET_PORT", default_value_t = 8087, global = true)]
    pub socket_port: u16,
    /// gRPC port.
    #[arg(long, env = "GRPC_PORT", default_value_t = 50051, global = true)]
    pub grpc_port: u16,
    /// gRPC bind address (internal by default).
    #[arg(long, env = "GRPC_HOST", default_value = "127.0.0.1", global = true)]
    pub grpc_host: String,
    /// When set, every gRPC call must carry `authorization: Bearer <GRPC_TOKEN>`.
    #[arg(long, env = "GRPC_TOKEN", hide_env_values = true, global = true)]
    pub grpc_token: Option<String>,
    /// sqlite:, postgres:// or mysql:// (MariaDB too).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://messaging.db?mode=rwc",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,
    /// HS256 key for tokens. Required.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,
    /// Take the client IP from the first X-Forwarded-For address.
    #[arg(long, env = "TRUST_PROXY", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", global = true)]
    pub trust_proxy: bool,
    /// Bytes a socket may have queued and not yet taken by the kernel. Past it the sender
    /// writes the socket itself; the socket is closed with 1013 only if the kernel refuses
    /// more for SOCKET_STALL_MS, or while four times this much waits.
    #[arg(long, env = "SOCKET_QUEUE_BYTES", default_value_t = 1 << 20, global = true)]
    pub socket_queue_bytes: usize,
    /// How long a socket over SOCKET_QUEUE_BYTES may have its kernel refuse every write
    /// before it is closed with 1013 (a client that reads nothing for that long).
    #[arg(long, env = "SOCKET_STALL_MS", default_value_t = 1000, global = true)]
    pub socket_stall_ms: u64,
    /// Threads that write to sockets (0: half the cores, at least one). The rest of the
    /// cores stay free for requests, so a fan-out wave never starves the next publish.
    #[arg(long, env = "SOCKET_THREADS", default_value_t = 0, global = true)]
    pub socket_threads: usize,
    /// How many nice steps (0-19) below the process the socket threads run: above 0,
    /// requests come first when the cores are saturated and the writers catch up with
    /// larger batches. 0 (the default) = equal priority: publishers that outrun the writers
    /// wait for them in their reply instead (`hub::Hub::backlog`).
    #[arg(long, env = "SOCKET_NICE", default_value_t = crate::hub::DEFAULT_SOCKET_NICE,
          value_parser = clap::value_parser!(i32).range(0..=19), global = true)]
    pub socket_nice: i32,
    /// For a socket fed faster than one frame per interval (on average): least milliseconds
    /// between two writes to it, so that frames sent meanwhile leave in one `writev`. Other
    /// sockets are written at once. 0 (the default) = every frame as soon as a socket thread
    /// gets to it; writes still carry several frames under load (`hub::Hub::backlog`).
    #[arg(long, env = "FLUSH_INTERVAL_MS", default_value_t = crate::hub::DEFAULT_FLUSH_INTERVAL.as_millis() as u64, global = true)]
    pub flush_interval_ms: u64,
    /// Broker for delivery across nodes: `redis://host:port[/db]` or `nats://host:port`.
    /// Unset: one node, in-process delivery. Needs a shared database (PostgreSQL, MariaDB).
    #[arg(long, env = "BROKER_URL", hide_env_values = true, global = true)]
    pub broker_url: Option<String>,
    /// Starts every broker channel name, so that several deployments can share a broker.
    #[arg(
        long,
        env = "BROKER_PREFIX",
        default_value = "messaging",
        global = true
    )]
    pub broker_prefix: String,
    /// How long a node keeps a frame of another node's post in its room's order, waiting
    /// for that post's write to commit, before it gives up on it (ms). Only a publisher
    /// that died or lost the broker mid-write lets it run out (it renews it every quarter
    /// of this while its write runs), so this bounds how long such a failure can hold up
    /// the room's live frames. Set it alike on every node. 0 turns held frames off: a post's
    /// frames are published after its commit, and its reply waits for the broker's
    /// acknowledgement after the write.
    #[arg(long, env = "BROKER_HOLD_MS", default_value_t = 2000, global = true)]
    pub broker_hold_ms: u64,
    /// Positions (§5.6): most frames kept per audience for a socket that resumes.
    #[arg(long, env = "RESUME_HISTORY", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000), global = true)]
    pub resume_history: u64,
    /// Positions (§5.6): how long a frame is kept for a socket that resumes (seconds).
    #[arg(long, env = "RESUME_WINDOW_SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400), global = true)]
    pub resume_window_secs: u64,
    /// Most open sockets (and upgrades in progress); past it an upgrade gets 503 before the
    /// handshake. 0: the process's file-descriptor limit less 1024 for everything else.
    #[arg(long, env = "MAX_SOCKETS", default_value_t = 0, global = true)]
    pub max_sockets: usize,
    /// Seconds between WebSocket pings; a socket silent for a whole interval after a ping is dropped.
    #[arg(
        long,
        env = "PING_INTERVAL_SECS",
        default_value_t = 30.0,
        global = true
    )]
    pub ping_interval_secs: f64,
    /// Attendance coalescing window for rooms up to BIG_ROOM_ROWS rows (ms).
    #[arg(
        long,
        env = "ATTENDANCE_WINDOW_MS",
        default_value_t = 100,
        global = true
    )]
    pub attendance_window_ms: u64,
    /// Attendance coalescing window for bigger rooms (ms).
    #[arg(
        long,
        env = "ATTENDANCE_WINDOW_BIG_MS",
        default_value_t = 1000,
        global = true
    )]
    pub attendance_window_big_ms: u64,
    /// Rows above which a room uses the big attendance window.
    #[arg(long, env = "BIG_ROOM_ROWS", default_value_t = 100, global = true)]
    pub big_room_rows: usize,
    /// Most viewers listed in one attendance frame (totalViewers counts all).
    #[arg(long, env = "ROSTER_CAP", default_value_t = 100, global = true)]
    pub roster_cap: usize,
    /// Development mode: `GET /demo/token` mints tokens for the demo page. Never in production.
    #[arg(long, env = "DEV_MODE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", global = true)]
    pub dev: bool,
    /// Milliseconds a server-initiated WebSocket close waits for the client's close frame
    /// before dropping the connection.
    #[arg(long, env = "CLOSE_WAIT_MS", default_value_t = 1000, global = true)]
    pub close_wait_ms: u64,
    /// Seconds between node lease renewals and sweeps; the lease lasts three intervals, so a
    /// crashed node's rows are gone within four (28 s by default).
    #[arg(
        long,
        env = "SWEEP_INTERVAL_SECS",
        default_value_t = 7.0,
        global = true
    )]
    pub sweep_interval_secs: f64,
    #[command(flatten)]
    pub gateway: GatewaySettings,
}

/// Gateway mode (§5.5): what the process needs when it runs as a Lambda function behind API
/// Gateway (`AWS_LAMBDA_RUNTIME_API` set). Ignored otherwise.
#[derive(Clone, Debug, Args)]
pub struct GatewaySettings {
    /// API Gateway management endpoint for `@connections` calls, e.g. a custom domain or a
    /// local emulator (`http://127.0.0.1:28085/dev`). Unset: built from WEBSOCKET_API_ID,
    /// AWS_REGION and STAGE.
    #[arg(long, env = "WS_MANAGEMENT_ENDPOINT", global = true)]
    pub ws_management_endpoint: Option<String>,
    /// The WebSocket API's id (gateway mode, when WS_MANAGEMENT_ENDPOINT is unset).
    #[arg(long, env = "WEBSOCKET_API_ID", global = true)]
    pub websocket_api_id: Option<String>,
    /// The WebSocket API's stage (gateway mode, when WS_MANAGEMENT_ENDPOINT is unset).
    #[arg(long, env = "STAGE", global = true)]
    pub stage: Option<String>,
    /// Most `@connections` posts in flight per invocation.
    #[arg(long, env = "GATEWAY_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=1024), global = true)]
    pub gateway_concurrency: u32,
    /// Rows older than this many seconds are deleted by the scheduled sweep (API Gateway's
    /// 2 h connection limit plus a margin).
    #[arg(
        long,
        env = "GATEWAY_MAX_CONNECTION_SECS",
        default_value_t = 7500,
        global = true
    )]
    pub gateway_max_connection_secs: u64,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("port", &self.http_port())
            .field("host", &self.host)
            .field("socket_port", &self.socket_port)
            .field("grpc", &format!("{}:{}", self.grpc_host, self.grpc_port))
            .field(
                "grpc_token",
                &self.grpc_token.as_ref().map(|_| "<redacted>"),
            )
            .field("database", &redact_url(&self.database_url))
            .field("broker", &self.broker_url.as_deref().map(redact_url))
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("trust_proxy", &self.trust_proxy)
            .field("dev", &self.dev)
            .finish_non_exhaustive()
    }
}

/// A database URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..s], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl Settings {
    /// `PORT`, then `SERVER_PORT`, then 8084.
    pub fn http_port(&self) -> u16 {
        self.port
            .or_else(|| std::env::var("SERVER_PORT").ok()?.parse().ok())
            .unwrap_or(8084)
    }

    pub fn hub_config(&self) -> HubConfig {
        let defaults = HubConfig::default();
        HubConfig {
            max_queued_bytes: self.socket_queue_bytes,
            stall: Duration::from_millis(self.socket_stall_ms),
            ping_interval: Duration::from_secs_f64(self.ping_interval_secs.max(0.01)),
            socket_threads: self.socket_threads,
            socket_nice: self.socket_nice,
            flush_interval: Duration::from_millis(self.flush_interval_ms),
            max_sockets: match self.max_sockets {
                0 => defaults.max_sockets,
                n => n,
            },
            close_wait: Duration::from_millis(self.close_wait_ms),
            ..defaults
        }
    }

    /// What a node keeps for sockets that resume (§5.6).
    pub fn history_limits(&self) -> crate::cluster::HistoryLimits {
        crate::cluster::HistoryLimits {
            frames: usize::try_from(self.resume_history).unwrap_or(usize::MAX),
            window: Duration::from_secs(self.resume_window_secs),
        }
    }

    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            attendance_window: Duration::from_millis(self.attendance_window_ms),
            attendance_window_big: Duration::from_millis(self.attendance_window_big_ms),
            big_room_rows: self.big_room_rows,
            roster_cap: self.roster_cap,
            sweep_interval: self.sweep_interval(),
        }
    }

    /// `broker_hold_ms`: 0 (held frames off), or at least 100 ms.
    pub fn broker_hold(&self) -> Duration {
        match self.broker_hold_ms {
            0 => Duration::ZERO,
            ms => Duration::from_millis(ms.max(100)),
        }
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs_f64(self.sweep_interval_secs.max(0.01))
    }

    /// The secret, or the contract's refusal to start without one.
    pub fn jwt_secret(&self) -> anyhow::Result<&str> {
        match self.jwt_secret.as_deref() {
            Some(s) if !s.is_empty() => Ok(s),
            _ => anyhow::bail!(
                "JWT_SECRET is required (set the JWT_SECRET environment variable or --jwt-secret)"
            ),
        }
    }

    /// Settings for tests: every default, no environment, ports 0 on 127.0.0.1. Only in
    /// test builds (`test-support`, which the crate's dev-dependency on itself turns on).
    #[cfg(any(test, feature = "test-support"))]
    pub fn for_tests(database_url: &str, jwt_secret: &str) -> Self {
        let mut s = Cli::parse_from(["messaging"]).settings;
        s.port = Some(0);
        s.host = "127.0.0.1".into();
        s.socket_port = 0;
        s.grpc_port = 0;
        s.grpc_token = None;
        s.broker_url = None;
        s.database_url = database_url.into();
        s.jwt_secret = Some(jwt_secret.into());
        s
    }
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[arg(long)]
    pub church_id: String,
    #[arg(long)]
    pub person_id: String,
    /// Defaults to a fresh id.
    #[arg(long)]
    pub user_id: Option<String>,
    #[arg(long, default_value = "")]
    pub first_name: String,
    #[arg(long, default_value = "")]
    pub last_name: String,
    #[arg(long, default_value = "")]
    pub email: String,
    /// A permission string such as Content__Edit (repeatable).
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    #[arg(long = "group-id")]
    pub group_ids: Vec<String>,
    #[arg(long = "leader-group-id")]
    pub leader_group_ids: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 172_800)]
    pub expires_in: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("sqlite://x.db?mode=rwc"),
            "sqlite://x.db?mode=rwc"
        );
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
