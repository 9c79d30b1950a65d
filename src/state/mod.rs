//! What the operator knows of the cluster, in memory: watch caches, their readiness
//! and the indexes every part reads. Nothing here writes to the API.
//!
//! - `records`: the revocation record (every CertificateRecord, by serial and grant);
//! - `crl`: the published CRL as stored and served, read strictly;
//! - `ca`: the signing CA, loaded and watched;
//! - `policies`: the policy store, built from the AgentPolicies and namespaces;
//! - `ready`: readiness of a watch's first list; `slim`: what the caches keep;
//! - `cached`: the compact types Pods, Jobs and grant Secrets are decoded into;
//! - `grants`: every ToolGrant as its readers read it, and packed whole for its reconcile;
//! - `named`: caches by namespace and name that keep only what was read of each object
//!   (Pods and Jobs in `tasks::TaskStore`, grant Secrets).
//!
//! The controllers, the sweeper, the CRL writer, the HTTP servers and, next, the
//! decision service all read these; none of them is imported from here.

pub mod ca;
pub mod cached;
pub mod crl;
pub mod grants;
pub mod named;
pub mod policies;
pub mod ready;
pub mod records;
pub mod slim;
pub mod tasks;
