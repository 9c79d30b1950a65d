//! The one type private keys leave this module in.

use std::fmt;

/// A PKCS#8 private key in PEM form that never prints: `Debug` and `Display` show
/// `<redacted>`, and there is deliberately no `Serialize`, so a key cannot end up in a log
/// line, an event, a status field or an error message by accident. Call
/// [`expose`](Self::expose) only where the key is written to its Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKeyPem(String);

impl PrivateKeyPem {
    pub(crate) fn new(pem: String) -> Self {
        PrivateKeyPem(pem)
    }

    /// The PEM text, for writing into a Secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threat_25_private_key_pem_never_prints() {
        let key = PrivateKeyPem::new("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n".into());
        assert_eq!(format!("{key:?}"), "<redacted>");
        assert_eq!(format!("{key:#?}"), "<redacted>");
        assert_eq!(key.to_string(), "<redacted>");
        assert!(key.expose().contains("c2VjcmV0"));
    }
}
