//! End-to-end tests against the real local control plane (`make cluster-up`).
//!
//! Run with `make e2e` (or `make test`), which starts the control plane when needed
//! and sets `KUBECONFIG`. Every test works in a namespace of its own, so tests run in
//! parallel; a test that needs the operator starts its own process, scoped to that
//! namespace, so it can kill and restart it without disturbing the others.

mod support;

mod authorize;

mod cluster_wide;
mod controlplane;
mod crash;
mod envoy;
mod faults;
mod grants;
mod identity;
mod install;
mod policy;
mod revocation;
mod threats;
