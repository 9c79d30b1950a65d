//! Mandate's public-key infrastructure: the certificate authority, X.509-SVID leaves
//! carrying a grant scope, and CRLs. Nothing in here knows about Kubernetes.
//!
//! * [`CertificateAuthority`] either generates a self-signed ECDSA P-256 root or loads a
//!   user-supplied CA (root or intermediate) and validates it before use.
//! * [`CertificateAuthority::issue_leaf`] issues a SPIFFE X.509-SVID with a fresh P-256 key
//!   and Mandate's grant scope extension ([`SCOPE_EXTENSION_OID_STR`], see `scope.rs` for why
//!   that OID).
//! * [`CertificateAuthority::sign_crl`] signs an RFC 5280 §5 v2 CRL.
//! * [`inspect_leaf_pem`], [`read_scope`] and [`verify_signed_by`] read certificates back,
//!   for adopting a certificate found in a Secret and for relying parties.
//!
//! Conventions the caller relies on:
//! * Times are [`OffsetDateTime`]. Certificates and CRLs hold whole seconds in UTC, so inputs
//!   are truncated to the second and converted to UTC; the times reported back (for example
//!   [`IssuedLeaf::not_after`]) are the ones actually encoded.
//! * Serial numbers are lower-case hex of the DER INTEGER's content octets, without
//!   separators: exactly x509-parser's `raw_serial_as_string()` minus the colons, and what
//!   [`CrlEntry::serial_hex`] expects back.
//! * Private keys only leave this module as [`PrivateKeyPem`], which never prints.

mod ca;
mod crl;
mod error;
mod leaf;
mod scope;
mod secret;
mod serving;
mod util;

#[cfg(test)]
mod test_support;

pub use ca::CertificateAuthority;
pub use crl::{CrlEntry, CrlInfo, CrlRequest, RevocationReason, crl_pem, inspect_crl_der, inspect_crl_pem};
pub use error::{CaError, PkiError};
pub use leaf::{
    IssuedLeaf, LeafInfo, LeafRequest, PresentedError, inspect_leaf_pem, verify_presented, verify_signed_by,
};
pub use scope::{
    GrantScope, MAX_SCOPE_JSON_BYTES, SCOPE_EXTENSION_OID, SCOPE_EXTENSION_OID_STR, SCOPE_VERSION, ScopeTool,
    check_scope, read_scope,
};
pub use secret::PrivateKeyPem;
pub use serving::ServingRequest;
pub use time::OffsetDateTime;
pub(crate) use util::first_certificate_der;
pub use util::{hex_lower, timestamp_of};

/// One DER certificate as PEM.
pub fn pem_encode_certificate(der: &[u8]) -> String {
    util::pem_encode("CERTIFICATE", der)
}

/// The signing CA as every part of the operator sees it: usable, or not and why.
#[derive(Clone)]
pub enum CaState {
    Ready(std::sync::Arc<CertificateAuthority>),
    Unavailable { reason: &'static str, message: String },
}
