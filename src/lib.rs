//! Mandate: task-scoped identities for AI agents on Kubernetes.
//!
//! The library holds everything; the `mandate` binary only parses flags and wires
//! tasks together (see `main.rs`).

pub mod allocator;
pub mod api;
pub mod audit;
pub mod cli;
pub mod conditions;
pub mod controller;
pub mod decide;
pub mod decision;
pub mod failpoint;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod runtime;
pub mod spiffe;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod webhook;
