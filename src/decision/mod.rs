//! The request-time side: what relying parties ask of every replica. Reads `state`,
//! never writes the API, and never calls it on the request path (a TokenReview of a
//! caller's token is the one exception, cached).
//!
//! - `service`: one decision from the indexes, whatever protocol asked;
//! - `subject`: the certificate a decision is about, verified and cached;
//! - `caller`: who is asking, and whether it may name a subject;
//! - `api`: `POST /v1/authorize`, `/v1/audit`, `/v1/trust-bundle`;
//! - `ext_authz`: Envoy's ext_authz, gRPC and HTTP;
//! - `server`: the TLS listener serving all of it; `crl`: `GET /v1/crl`.

pub mod api;
pub mod caller;
pub mod crl;
pub mod ext_authz;
pub mod health;
pub mod server;
pub mod service;
pub mod subject;
