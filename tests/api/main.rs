//! Integration tests: real sockets on port 0, real HTTP/WebSocket/gRPC, real databases.
// Tests unwrap: a panic is the failure report (the workspace denies unwrap elsewhere).
#![allow(clippy::unwrap_used)]
/// The API Gateway emulator of `tests/gateway`: the `gateway_*` variants run scenarios of
/// this suite through it (the binary as Lambda instances).
#[path = "../gateway/emulator/mod.rs"]
#[allow(unused_imports)]
mod emulator;
mod helpers;
mod own_server;

mod access_matrix;
mod alerts_flow;
mod broker;
mod chat;
mod checkpoint;
mod cluster;
mod db_restart;
mod errors;
mod grpc_api;
mod migrate;
mod nodes;
mod outage;
mod positions;
mod rooms;
mod service_access;
mod socket;
mod wire;
