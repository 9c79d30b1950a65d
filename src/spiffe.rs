//! SPIFFE IDs: `spiffe://<trust-domain>/ns/<namespace>/agent/<name>`.
//!
//! The operator builds every ID itself from validated parts, so a crafted name can
//! never smuggle a second path, a query or a fragment into a certificate's URI SAN.

use std::fmt;

/// A SPIFFE ID built from a validated trust domain, namespace and agent name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId(String);

/// Why a SPIFFE ID could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error("trust domain {0:?} is invalid: use lower-case letters, digits, '.', '-' and '_', at most 255 characters")]
    TrustDomain(String),
    #[error("{what} {value:?} is not a DNS-1123 label (lower-case letters, digits and '-', at most 63 characters)")]
    Segment { what: &'static str, value: String },
}

impl SpiffeId {
    /// The ID of agent `name` in `namespace` under `trust_domain`.
    pub fn for_agent(trust_domain: &str, namespace: &str, name: &str) -> Result<Self, SpiffeIdError> {
        validate_trust_domain(trust_domain)?;
        validate_label("namespace", namespace)?;
        validate_label("agent name", name)?;
        Ok(SpiffeId(format!("spiffe://{trust_domain}/ns/{namespace}/agent/{name}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SPIFFE spec, section 2.1: the trust domain is lower-case letters, digits, dots,
/// dashes and underscores. We also refuse empty labels (`a..b`) and leading dots.
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
        && !td.starts_with('.')
        && !td.ends_with('.')
        && !td.contains("..");
    if ok {
        Ok(())
    } else {
        Err(SpiffeIdError::TrustDomain(td.to_string()))
    }
}

/// Namespaces are DNS-1123 labels; we hold agent names to the same rule so every path
/// segment is plain ASCII with no `.`, `%` or `/`.
fn validate_label(what: &'static str, v: &str) -> Result<(), SpiffeIdError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(SpiffeIdError::Segment {
            what,
            value: v.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_documented_path() {
        let id = SpiffeId::for_agent("example.org", "team-a", "triage-bot").unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/ns/team-a/agent/triage-bot");
    }

    #[test]
    fn threat_22_malformed_names_are_rejected() {
        for bad in [
            "..", "a..b", "a%2Fb", "a/b", "A", "agent.v1", "é", "-a", "a-", "", "a b", "a\0b", "a?x", "a#x",
        ] {
            assert!(
                SpiffeId::for_agent("example.org", "ns", bad).is_err(),
                "{bad:?} accepted as agent name"
            );
            assert!(
                SpiffeId::for_agent("example.org", bad, "agent").is_err(),
                "{bad:?} accepted as namespace"
            );
        }
        let long = "a".repeat(64);
        assert!(SpiffeId::for_agent("example.org", "ns", &long).is_err());
    }

    #[test]
    fn threat_21_trust_domain_cannot_inject_uri_parts() {
        for bad in [
            "",
            "Example.org",
            "ex/ample",
            "ex:8443",
            "ex?q",
            "ex#f",
            "a..b",
            ".a",
            "a.",
            "user@host",
            "spiffe://x",
        ] {
            assert!(validate_trust_domain(bad).is_err(), "{bad:?} accepted as trust domain");
        }
        assert!(validate_trust_domain("prod.example_corp-1.io").is_ok());
    }
}
