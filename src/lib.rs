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
pub mod service;
pub mod store;
pub mod telemetry;
pub mod time;

pub mod pb {
    //! Generated from `proto/messaging.proto`.
    tonic::include_proto!("messaging.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("messaging_descriptor");
}

pub use app::{Application, Listeners};
pub use config::Settings;
