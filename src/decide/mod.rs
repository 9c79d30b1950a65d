//! Pure decisions: given the observed objects and `now`, what should exist.
//!
//! Nothing here talks to the API server, so every rule is unit-tested with a fixed
//! clock. The controllers fetch, call these, then apply what they return.

pub mod approval;
pub mod authorize;
pub mod grant;
pub mod grant_status;
pub mod lifetime;
pub mod scope;
pub mod task;

#[cfg(test)]
mod properties;
