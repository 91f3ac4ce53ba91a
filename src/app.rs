//! Building and running the service: `Application::build` binds (or takes) the listeners,
//! connects and migrates the database, starts the hub (with its own socket runtime), wires
//! the delivery seam and the service layer, and registers the node; `run_until_stopped`
//! serves until the shutdown future resolves, then closes sockets with 1001, removes the
//! node and stops the socket runtime. Everything it starts is its own: two applications in
//! one process share nothing.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::auth::TokenKeys;
use crate::cluster::Cluster;
use crate::cluster::{self, Seam};
use crate::config::{Settings, redact_url};
use crate::edge::{self, EdgeState};
use crate::grpc::{self, ConnectionService, DeliveryService, NodeService};
use crate::hub::Hub;
use crate::service::Services;
use crate::store::Store;

/// Already-bound listeners (tests bind port 0).
pub struct Listeners {
    pub http: TcpListener,
    pub socket: Option<TcpListener>,
    pub grpc: TcpListener,
}

impl Listeners {
    pub async fn bind(s: &Settings) -> anyhow::Result<Self> {
        let bind = |host: String, port: u16| async move {
            listen(&host, port)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))
        };
        Ok(Self {
            http: bind(s.host.clone(), s.http_port()).await?,
            socket: match s.socket_port {
                0 => None,
                p => Some(bind(s.host.clone(), p).await?),
            },
            grpc: bind(s.grpc_host.clone(), s.grpc_port).await?,
        })
    }
}

/// Binds with a deep accept backlog: after a deploy every tab reconnects at once, and the
/// default of 128 drops SYNs that then wait out a 1 s retransmit.
async fn listen(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let mut last_err = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(4096)) {
            Ok(l) => return Ok(l),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no address to bind")))
}

pub struct Application {
    listeners: Listeners,
    settings: Settings,
    services: Services,
    /// Delivery across nodes, when a broker is configured.
    cluster: Option<Arc<Cluster>>,
    room_changes: Option<tokio::sync::mpsc::UnboundedReceiver<cluster::RoomChange>>,
    state: Arc<EdgeState>,
    grpc_router: axum::Router,
    health: tonic_health::server::HealthReporter,
    ready: Arc<AtomicBool>,
    /// Dropped last, with whatever is left of the application.
    _hub: HubGuard,
}

/// Stops the hub when the application goes away, however it goes: a build that fails
/// after the hub started, the end of `run_until_stopped`, or a drop before or during it
/// (an aborted task, a runtime that ends). The hub holds the service layer for its socket
/// events and the service layer holds the hub, so without this an application that never
/// finished `run_until_stopped` kept its socket threads and database pools for good.
pub(crate) struct HubGuard(pub(crate) Arc<Hub>);

impl Drop for HubGuard {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listeners = Listeners::bind(&settings).await?;
        Self::build_with_listeners(settings, listeners).await
    }

    pub async fn build_with_listeners(
        settings: Settings,
        listeners: Listeners,
    ) -> anyhow::Result<Self> {
        // The recorder first: series that start at 0 (`Hub::new` registers the eviction
        // causes) are lost if they are recorded before it is installed.
        let metrics = crate::telemetry::metrics_handle();
        let keys = TokenKeys::new(settings.jwt_secret()?);
        if settings.dev {
            tracing::warn!(
                "DEV MODE: GET /demo/token mints tokens for anyone; never enable this in production"
            );
        }
        if settings.broker_url.is_some() && settings.database_url.starts_with("sqlite:") {
            anyhow::bail!(
                "BROKER_URL needs a database that every node shares (PostgreSQL or MariaDB); \
                 SQLite is one node's file"
            );
        }
        let store = Store::connect(&settings.database_url).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot open database {}: {e}",
                redact_url(&settings.database_url)
            )
        })?;
        store.migrate().await?;
        let node_id = crate::ids::new_id();
        let hub = Hub::new(settings.hub_config())
            .map_err(|e| anyhow::anyhow!("cannot start the socket runtime: {e}"))?;
        let hub_guard = HubGuard(hub.clone());
        let (seam, cluster, room_changes): (Arc<dyn Seam>, _, _) = match &settings.broker_url {
            None => (
                Arc::new(cluster::Local::new(hub.clone(), settings.history_limits())),
                None,
                None,
            ),
            Some(url) => {
                let (c, rx) = Cluster::connect(
                    url,
                    &settings.broker_prefix,
                    hub.clone(),
                    &node_id,
                    store.clone(),
                    settings.grpc_token.clone(),
                    settings.broker_hold(),
                )
                .await?;
                let c = Arc::new(c);
                (c.clone(), Some(c), Some(rx))
            }
        };
        let services = Services::new(node_id, store, hub, seam, settings.service_config());
        services
            .register_node(Some(listeners.grpc.local_addr()?.to_string()))
            .await?;
        let connection = ConnectionService {
            svc: services.clone(),
        };
        let delivery = DeliveryService {
            svc: services.clone(),
        };
        let node = NodeService {
            svc: services.clone(),
        };
        let (health, health_service) = tonic_health::server::health_reporter();
        let grpc_router = grpc::router(
            connection,
            delivery,
            node,
            health_service,
            settings.grpc_token.clone(),
        )?;
        let ready = Arc::new(AtomicBool::new(false));
        let state = Arc::new(EdgeState {
            services: services.clone(),
            keys,
            trust_proxy: settings.trust_proxy,
            dev: settings.dev,
            ready: ready.clone(),
            metrics,
            openapi: edge::openapi::document(),
        });
        Ok(Self {
            listeners,
            settings,
            services,
            cluster,
            room_changes,
            state,
            grpc_router,
            health,
            ready,
            _hub: hub_guard,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listeners.http.local_addr().expect("bound listener")
    }

    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .socket
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.listeners.grpc.local_addr().expect("bound listener")
    }

    /// The domain layer (tests reach the store and the hub through it).
    pub fn services(&self) -> Services {
        self.services.clone()
    }

    pub fn node_id(&self) -> String {
        self.services.node_id.to_string()
    }

    /// Serves until `shutdown` resolves; then stops accepting, closes every socket with
    /// 1001, deletes this node's rows and `nodes` row, stops the socket runtime and
    /// returns (bounded to ~10 s).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let Listeners { http, socket, grpc } = self.listeners;
        tracing::info!(
            http = %http.local_addr()?,
            socket = ?socket.as_ref().and_then(|l| l.local_addr().ok()),
            grpc = %grpc.local_addr()?,
            node = %self.services.node_id,
            settings = ?self.settings,
            "listening"
        );
        tasks.spawn(edge::serve::serve_http1(
            http,
            edge::http_router(self.state.clone()),
            stop.clone(),
        ));
        if let Some(socket) = socket {
            tasks.spawn(edge::serve::serve_http1(
                socket,
                edge::socket_router(self.state.clone()),
                stop.clone(),
            ));
        }
        // gRPC needs HTTP/2: axum's server.
        let grpc_stop = stop.clone();
        let grpc_router = self.grpc_router;
        tasks.spawn(async move {
            let svc = grpc_router.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(grpc, svc)
                .with_graceful_shutdown(async move { grpc_stop.cancelled().await })
                .await
            {
                tracing::warn!(error = %e, "gRPC server stopped with an error");
            }
        });

        for name in ["", "messaging.v1.Delivery", "messaging.v1.Connection"] {
            self.health
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
        self.ready.store(true, Ordering::Release);

        // Aborted if this future is dropped before the end, like the servers in `tasks`.
        let background = AbortOnDropHandle::new(spawn_background(
            self.services.clone(),
            self.health.clone(),
            stop.clone(),
        ));
        // Rooms other nodes changed: raise attendance for this node's sockets in them.
        let remote_changes = self.room_changes.map(|mut rx| {
            let svc = self.services.clone();
            AbortOnDropHandle::new(tokio::spawn(async move {
                while let Some((church, room, with_blocked_ip)) = rx.recv().await {
                    svc.raise_attendance(&church, &room, with_blocked_ip);
                }
            }))
        });

        shutdown.await;
        tracing::info!("shutting down");
        self.ready.store(false, Ordering::Release);
        for name in ["", "messaging.v1.Delivery", "messaging.v1.Connection"] {
            self.health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        stop.cancel();
        let hub = self.services.hub.clone();
        hub.close_all(Duration::from_secs(5)).await;
        background.abort();
        if let Err(e) = self.services.remove_node().await {
            tracing::warn!(error = %e, "could not remove this node's rows");
        }
        // In-flight HTTP requests get what is left of the 10 s budget.
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if let Some(c) = &self.cluster {
            c.close().await;
        }
        if let Some(t) = remote_changes {
            t.abort();
        }
        hub.shutdown();
        tracing::info!("stopped");
        Ok(())
    }
}

/// Pings (§2.2), the lease renewal and the sweep (§5.3), and gRPC health following the
/// broker's reachability (as `/ready` does).
fn spawn_background(
    services: Services,
    health: tonic_health::server::HealthReporter,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let ping_every = services.hub.config.ping_interval;
    let sweep_every = services.config.sweep_interval;
    tokio::spawn(async move {
        let mut ping = tokio::time::interval(ping_every);
        let mut sweep = tokio::time::interval(sweep_every);
        let mut check = tokio::time::interval(Duration::from_secs(1));
        for t in [&mut ping, &mut sweep, &mut check] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        ping.tick().await;
        sweep.tick().await;
        let mut serving = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ping.tick() => services.hub.ping_round(),
                _ = sweep.tick() => services.sweep_round().await,
                _ = check.tick() => {
                    let now = services.unready().is_none();
                    if now != serving {
                        serving = now;
                        let status = if now {
                            tonic_health::ServingStatus::Serving
                        } else {
                            tonic_health::ServingStatus::NotServing
                        };
                        for name in ["", "messaging.v1.Delivery", "messaging.v1.Connection"] {
                            health.set_service_status(name, status).await;
                        }
                    }
                }
            }
        }
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
