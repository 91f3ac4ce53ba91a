//! The gRPC door: `Delivery` and `Connection` as thin adapters onto the service layer, plus
//! the gRPC server (reflection v1 + v1alpha, health, the `GRPC_TOKEN` check).
pub mod connection;
pub mod delivery;
mod error;
pub mod node;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

pub use connection::ConnectionService;
pub use delivery::DeliveryService;
pub use node::NodeService;

use crate::pb;

/// The gRPC router: both services, reflection (v1 and v1alpha: grpcurl 1.8.6 only speaks
/// v1alpha) and health, behind the token check when `token` is set.
pub fn router(
    connection: ConnectionService,
    delivery: DeliveryService,
    node: NodeService,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    token: Option<String>,
) -> anyhow::Result<axum::Router> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let router = tonic::service::Routes::new(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(pb::connection_server::ConnectionServer::new(connection))
        .add_service(pb::delivery_server::DeliveryServer::new(delivery))
        .add_service(pb::node_server::NodeServer::new(node))
        .prepare()
        .into_axum_router();
    Ok(match token {
        Some(t) if !t.is_empty() => {
            let expected: std::sync::Arc<[u8]> = format!("Bearer {t}").into_bytes().into();
            router.layer(axum::middleware::from_fn(
                move |req: Request, next: Next| {
                    let expected = expected.clone();
                    async move { check_token(&expected, req, next).await }
                },
            ))
        }
        _ => router,
    })
}

async fn check_token(expected: &[u8], req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get("authorization")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if constant_time_eq(given, expected) {
        next.run(req).await
    } else {
        tonic::Status::unauthenticated("missing or wrong GRPC_TOKEN").into_http()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
