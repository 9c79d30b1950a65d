//! What the operator knows of the cluster, in memory: watch caches, their readiness
//! and the indexes every part reads. Nothing here writes to the API.
//!
//! The revocation record (`records`) lives here so the controllers, the sweeper, the
//! CRL writer and, next, the decision service all read the same one.

pub mod crl;
pub mod ready;
pub mod records;
