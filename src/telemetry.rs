//! Logging and the Prometheus recorder.
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Buckets of the request and write latencies: 100 µs to 2.5 s.
const LATENCY_BUCKETS: &[f64] = &[
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The process-wide recorder (installing a second one fails, and tests build many apps).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("messaging_fanout_seconds".into()),
                    &[
                        1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(
                            "messaging_http_request_seconds".into(),
                        ),
                        LATENCY_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(
                            "messaging_message_write_seconds".into(),
                        ),
                        LATENCY_BUCKETS,
                    )
                })
                .and_then(|b| b.install_recorder());
            match handle {
                Ok(h) => {
                    describe();
                    h
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// HELP lines for the metrics whose meaning is a rule, not just a count.
fn describe() {
    metrics::describe_counter!(
        "messaging_sockets_evicted_total",
        "Sockets closed with 1013 slow consumer, by cause. Past SOCKET_QUEUE_BYTES unsent \
         bytes the sender writes the socket itself; a socket whose kernel takes them is only \
         behind this server's writer and is never evicted (messaging_socket_catch_up_writes_total). \
         stalled: the kernel refused every write for SOCKET_STALL_MS with the queue over the \
         bound (the client reads nothing). over_cap: the kernel refused and 4 x \
         SOCKET_QUEUE_BYTES waited (the client reads slower than its room)."
    );
    metrics::describe_counter!(
        "messaging_socket_catch_up_writes_total",
        "Sockets past SOCKET_QUEUE_BYTES whose sender wrote them itself and found the kernel \
         taking the bytes: this server's writer was behind, not the client."
    );
}
