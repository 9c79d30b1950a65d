//! The request-time side: what relying parties ask of every replica. Reads `state`,
//! never writes the API.

pub mod crl;
