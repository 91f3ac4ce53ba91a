//! Gateway mode (PROTOCOL.md §5.5) against a test-owned API Gateway and Lambda Runtime API
//! (`emulator/`): real child processes of the binary, real WebSockets, real HTTP, SigV4
//! checked on every `@connections` call, a fresh database per test.
//!
//! - `selftest`: the emulator itself, with the test playing the function (no binary needed);
//! - `events`: the events it builds are the shapes `lambda_http` dispatches on;
//! - `scenarios`, `rest_front`: the binary's gateway mode, on PostgreSQL and MariaDB.
// Tests unwrap: a panic is the failure report (the workspace denies unwrap elsewhere).
#![allow(clippy::unwrap_used)]

mod emulator;
#[path = "../api/helpers.rs"]
mod helpers;
mod support;

mod events;
mod rest_front;
mod scenarios;
mod selftest;
