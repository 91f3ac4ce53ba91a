//! Real-time delivery service: browser WebSockets, rooms, fan-out and presence, behind one
//! gRPC service layer (`messaging.v1`) that the REST/WebSocket edge calls in-process.
pub mod app;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod error;
pub mod grpc;
pub mod hub;
pub mod ids;
pub mod lambda;
pub mod memory;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod time;

pub mod pb {
    //! Generated from `proto/messaging.proto`, and the service's `Connection` as a row.
    tonic::include_proto!("messaging.v1");
    // Protobuf's JSON mapping of the messages above (pbjson), for Lambda's direct invocations.
    include!(concat!(env!("OUT_DIR"), "/messaging.v1.serde.rs"));
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("messaging_descriptor");

    use crate::service::model::Connection;

    impl From<Connection> for ConnectionRow {
        fn from(r: Connection) -> Self {
            Self {
                id: r.id,
                church_id: r.church_id,
                conversation_id: r.conversation_id,
                person_id: r.person_id,
                display_name: r.display_name,
                time_joined: crate::time::format_ms(r.time_joined),
                socket_id: r.socket_id,
                ip_address: r.ip_address,
                node_id: r.node_id,
                position: r.position.map(|p| Position {
                    epoch: p.epoch,
                    seq: p.seq,
                }),
            }
        }
    }

    /// A row as another node or a backend sent it; fails on an unreadable `timeJoined`.
    impl TryFrom<ConnectionRow> for Connection {
        type Error = chrono::ParseError;

        fn try_from(r: ConnectionRow) -> Result<Self, Self::Error> {
            let time_joined = chrono::DateTime::parse_from_rfc3339(&r.time_joined)?;
            Ok(Self {
                id: r.id,
                church_id: r.church_id,
                conversation_id: r.conversation_id,
                person_id: r.person_id,
                display_name: r.display_name,
                time_joined: time_joined.timestamp_millis(),
                socket_id: r.socket_id,
                ip_address: r.ip_address,
                node_id: r.node_id,
                position: r.position.map(|p| crate::cluster::Position {
                    epoch: p.epoch,
                    seq: p.seq,
                }),
            })
        }
    }
}

pub use app::{Application, Listeners};
pub use config::Settings;
