//! Errors of the PKI module. Messages say what failed and how to fix it; none of them ever
//! contains key material (key parsing errors are described, never echoed).

use time::OffsetDateTime;

use super::util::rfc3339;

/// Why a CA could not be loaded or generated. Each check of
/// [`CertificateAuthority::from_pem`](super::CertificateAuthority::from_pem) has its own variant
/// so the controller can surface a precise condition reason.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("failed to parse the CA certificate: {0}")]
    ParseCertificate(String),
    #[error("failed to parse the CA private key: {0}")]
    ParseKey(String),
    #[error(
        "the CA private key does not match the CA certificate's public key: check that the key and the certificate \
         belong together and that the CA itself is the first certificate in the PEM"
    )]
    KeyMismatch,
    #[error(
        "the CA certificate is not a CA (basicConstraints CA=true is missing): supply a CA certificate, not a leaf"
    )]
    NotACa,
    #[error(
        "the CA certificate's keyUsage lacks {}: reissue the CA with keyUsage keyCertSign and cRLSign",
        missing.join(" and ")
    )]
    MissingKeyUsage { missing: Vec<&'static str> },
    #[error("the CA certificate expired at {}: rotate the CA", rfc3339(*not_after))]
    Expired { not_after: OffsetDateTime },
    #[error(
        "the CA certificate is not valid before {}: check the CA's notBefore and this machine's clock",
        rfc3339(*not_before)
    )]
    NotYetValid { not_before: OffsetDateTime },
    #[error("the CA certificate's subject cannot be used as the issuer of Mandate certificates: {0}")]
    UnsupportedSubject(String),
    #[error("failed to generate the CA: {0}")]
    Generate(String),
}

impl CaError {
    /// A CamelCase reason for Kubernetes conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            CaError::ParseCertificate(_) => "CaCertificateUnparsable",
            CaError::ParseKey(_) => "CaKeyUnparsable",
            CaError::KeyMismatch => "CaKeyMismatch",
            CaError::NotACa => "CaNotACa",
            CaError::MissingKeyUsage { .. } => "CaMissingKeyUsage",
            CaError::Expired { .. } => "CaExpired",
            CaError::NotYetValid { .. } => "CaNotYetValid",
            CaError::UnsupportedSubject(_) => "CaUnsupportedSubject",
            CaError::Generate(_) => "CaGenerateFailed",
        }
    }
}

/// Why issuing, signing or reading a certificate or CRL failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The SPIFFE ID is not one we will put in a URI SAN.
    #[error("{0}")]
    InvalidSpiffeId(String),
    /// The requested validity window is empty, in the past or outlives the CA.
    #[error("{0}")]
    InvalidValidity(String),
    /// The grant scope cannot be encoded (wrong version, too large).
    #[error("{0}")]
    InvalidScope(String),
    /// A serial number given as hex is not the hex of a certificate serial.
    #[error("{0}")]
    InvalidSerial(String),
    /// The CRL request is inconsistent (dates, duplicate serials).
    #[error("{0}")]
    InvalidCrl(String),
    /// Key generation or signing failed.
    #[error("{0}")]
    Sign(String),
    /// DER or PEM encoding failed.
    #[error("{0}")]
    Encode(String),
    /// A certificate or extension could not be parsed.
    #[error("{0}")]
    Parse(String),
}

impl PkiError {
    /// A CamelCase reason for Kubernetes conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            PkiError::InvalidSpiffeId(_) => "InvalidSpiffeId",
            PkiError::InvalidValidity(_) => "InvalidValidity",
            PkiError::InvalidScope(_) => "InvalidScope",
            PkiError::InvalidSerial(_) => "InvalidSerial",
            PkiError::InvalidCrl(_) => "InvalidCrlRequest",
            PkiError::Sign(_) => "SigningFailed",
            PkiError::Encode(_) => "EncodingFailed",
            PkiError::Parse(_) => "CertificateUnparsable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_camel_case(s: &str) -> bool {
        s.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric())
    }

    #[test]
    fn every_reason_is_camel_case() {
        let t = OffsetDateTime::UNIX_EPOCH;
        let ca_errors = [
            CaError::ParseCertificate(String::new()),
            CaError::ParseKey(String::new()),
            CaError::KeyMismatch,
            CaError::NotACa,
            CaError::MissingKeyUsage {
                missing: vec!["cRLSign"],
            },
            CaError::Expired { not_after: t },
            CaError::NotYetValid { not_before: t },
            CaError::UnsupportedSubject(String::new()),
            CaError::Generate(String::new()),
        ];
        for e in &ca_errors {
            assert!(
                is_camel_case(e.reason()) && e.reason().starts_with("Ca"),
                "{}",
                e.reason()
            );
        }
        let pki_errors = [
            PkiError::InvalidSpiffeId(String::new()),
            PkiError::InvalidValidity(String::new()),
            PkiError::InvalidScope(String::new()),
            PkiError::InvalidSerial(String::new()),
            PkiError::InvalidCrl(String::new()),
            PkiError::Sign(String::new()),
            PkiError::Encode(String::new()),
            PkiError::Parse(String::new()),
        ];
        for e in &pki_errors {
            assert!(is_camel_case(e.reason()), "{}", e.reason());
        }
    }

    #[test]
    fn ca_error_messages_say_how_to_fix_them() {
        let missing = CaError::MissingKeyUsage {
            missing: vec!["keyCertSign", "cRLSign"],
        };
        assert_eq!(
            missing.to_string(),
            "the CA certificate's keyUsage lacks keyCertSign and cRLSign: reissue the CA with keyUsage keyCertSign \
             and cRLSign"
        );
        let expired = CaError::Expired {
            not_after: OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(
            expired.to_string(),
            "the CA certificate expired at 1970-01-01T00:00:00Z: rotate the CA"
        );
    }
}
