//! Leaf certificates: SPIFFE X.509-SVIDs carrying Mandate's grant scope, and reading
//! certificates back.
//!
//! The profile (SPIFFE X.509-SVID specification, "Constraints and Usage", and RFC 5280):
//! * a fresh ECDSA P-256 key per certificate, X.509 v3, a random positive 16-octet serial;
//! * subject `O=Mandate` only (see [`leaf_params`] for why);
//! * exactly one subjectAltName, the SPIFFE ID as a URI;
//! * basicConstraints CA=false and keyUsage digitalSignature, both critical;
//! * extendedKeyUsage serverAuth and clientAuth;
//! * authorityKeyIdentifier = the CA's subject key identifier, and a subjectKeyIdentifier;
//! * the grant scope extension, non-critical (see `scope.rs`);
//! * notBefore and notAfter exactly as requested (the caller backdates and caps).

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber, string::Ia5String,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::ca::ORGANIZATION;
use super::scope::{encode_scope, scope_from_certificate};
use super::util::{
    SERIAL_LEN, certificate_time, first_certificate_der, hex_lower, random_serial, rfc3339, sha256_fingerprint,
};
use super::{CertificateAuthority, GrantScope, PkiError, PrivateKeyPem, SCOPE_EXTENSION_OID};

/// Longest SPIFFE ID we accept (the SPIFFE ID specification's limit for URIs is 2048 bytes).
const MAX_SPIFFE_ID_LEN: usize = 2048;

/// What to put in a leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafRequest {
    pub spiffe_id: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub scope: GrantScope,
}

/// An issued certificate and its key. `Debug` shows the key as `<redacted>`.
#[derive(Clone, Debug)]
pub struct IssuedLeaf {
    pub cert_pem: String,
    pub key_pem: PrivateKeyPem,
    /// Lower-case hex of the serial's DER content octets, no separators.
    pub serial_hex: String,
    /// Lower-case hex SHA-256 of the DER certificate.
    pub sha256_fingerprint: String,
    /// As encoded: the request's time truncated to the second, in UTC.
    pub not_before: OffsetDateTime,
    /// As encoded: the request's time truncated to the second, in UTC.
    pub not_after: OffsetDateTime,
}

/// What a certificate says, for adopting one found in a Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafInfo {
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub sha256_fingerprint: String,
    pub uri_sans: Vec<String>,
    pub scope: Option<GrantScope>,
}

/// Reads the first certificate of a PEM text (a `tls.crt` may continue with its chain).
pub fn inspect_leaf_pem(cert_pem: &str) -> Result<LeafInfo, PkiError> {
    inspect_der(&first_certificate_der(cert_pem)?)
}

/// True when the first certificate in `cert_pem` names `ca` as its issuer and its signature
/// verifies with the CA's public key. Says nothing about validity periods or revocation.
pub fn verify_signed_by(cert_pem: &str, ca: &CertificateAuthority) -> bool {
    let Ok(der) = first_certificate_der(cert_pem) else {
        return false;
    };
    let (Ok((_, cert)), Ok((_, ca_cert))) = (
        x509_parser::parse_x509_certificate(&der),
        x509_parser::parse_x509_certificate(ca.cert_der()),
    ) else {
        return false;
    };
    cert.issuer().as_raw() == ca_cert.subject().as_raw() && cert.verify_signature(Some(ca_cert.public_key())).is_ok()
}

/// Why a presented certificate is not one of ours.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PresentedError {
    #[error("the certificate does not parse: {0}")]
    Malformed(String),
    #[error("the certificate is not signed by Mandate's CA")]
    UntrustedIssuer,
}

/// Reads a presented DER certificate and checks that one of `trusted` (CA
/// certificates, DER) issued it: the issuer name matches the CA's subject byte for
/// byte and the signature verifies with its key. Validity and revocation are the
/// caller's to check, against its own clock and record.
pub fn verify_presented(der: &[u8], trusted: &[&[u8]]) -> Result<LeafInfo, PresentedError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| PresentedError::Malformed(e.to_string()))?;
    let signed = trusted.iter().any(|ca_der| {
        x509_parser::parse_x509_certificate(ca_der).is_ok_and(|(_, ca)| {
            cert.issuer().as_raw() == ca.subject().as_raw() && cert.verify_signature(Some(ca.public_key())).is_ok()
        })
    });
    if !signed {
        return Err(PresentedError::UntrustedIssuer);
    }
    leaf_info(&cert, der).map_err(|e| PresentedError::Malformed(e.to_string()))
}

pub(super) fn issue(ca: &CertificateAuthority, req: &LeafRequest, now: OffsetDateTime) -> Result<IssuedLeaf, PkiError> {
    let spiffe_id = validated_spiffe_id(&req.spiffe_id)?;
    let (not_before, not_after) = validated_validity(ca, req, now)?;
    let scope = encode_scope(&req.scope)?;
    let serial = random_serial().map_err(PkiError::Sign)?;
    let params = leaf_params(spiffe_id, not_before, not_after, &serial, scope);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PkiError::Sign(format!("failed to generate the leaf key: {e}")))?;
    let cert = params
        .signed_by(&key, ca.issuer())
        .map_err(|e| PkiError::Sign(format!("failed to sign the leaf certificate: {e}")))?;

    let (_, parsed) = x509_parser::parse_x509_certificate(cert.der())
        .map_err(|e| PkiError::Parse(format!("failed to parse the signed certificate: {e}")))?;
    let info = leaf_info(&parsed, cert.der())?;
    check_as_intended(ca, &parsed, &info, &serial, (not_before, not_after))?;
    Ok(IssuedLeaf {
        cert_pem: cert.pem(),
        key_pem: PrivateKeyPem::new(key.serialize_pem()),
        serial_hex: info.serial_hex,
        sha256_fingerprint: info.sha256_fingerprint,
        not_before: info.not_before,
        not_after: info.not_after,
    })
}

/// The subject is `O=Mandate` alone. SPIFFE leaves the subject free; an empty one is legal
/// but forces a critical SAN (RFC 5280 §4.2.1.6) and trips up tools that print or match on
/// it. A CN is left out on purpose: some TLS clients still fall back to matching the CN as a
/// host name, and the only name this certificate vouches for is the URI SAN.
fn leaf_params(
    spiffe_id: Ia5String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    serial: &[u8; SERIAL_LEN],
    scope_der: Vec<u8>,
) -> CertificateParams {
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, ORGANIZATION);

    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.not_before = not_before;
    params.not_after = not_after;
    params.subject_alt_names = vec![SanType::URI(spiffe_id)];
    // ExplicitNoCa writes basicConstraints (critical, cA absent = FALSE) and a subject key
    // identifier; NoCa would write neither.
    params.is_ca = IsCa::ExplicitNoCa;
    // X.509-SVID "Key Usage": leaves MUST have digitalSignature and MUST NOT have keyCertSign or cRLSign.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    // RFC 5280 §4.2.1.1: the CA's key identifier, so validators can pick the right CA key.
    params.use_authority_key_identifier_extension = true;
    // from_oid_content makes the extension non-critical (see scope.rs).
    params.custom_extensions = vec![CustomExtension::from_oid_content(SCOPE_EXTENSION_OID, scope_der)];
    params
}

/// Defence in depth: the controller builds SPIFFE IDs from validated parts, but nothing
/// that could smuggle a second identity, a query, a fragment or an odd character into a URI
/// SAN is signed, whoever asks. Rules from the SPIFFE ID specification §2.
fn validated_spiffe_id(id: &str) -> Result<Ia5String, PkiError> {
    let refuse = |why: &str| {
        let shown: String = id.chars().take(80).collect();
        let ellipsis = if shown.len() < id.len() { "..." } else { "" };
        PkiError::InvalidSpiffeId(format!("SPIFFE ID {shown:?}{ellipsis} is refused: {why}"))
    };
    if id.len() > MAX_SPIFFE_ID_LEN {
        return Err(refuse("it is longer than 2048 bytes"));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse("it contains whitespace or control characters"));
    }
    if id.contains(['?', '#']) {
        return Err(refuse(
            "it contains a query or fragment ('?' or '#'), which SPIFFE IDs must not have",
        ));
    }
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return Err(refuse("it must start with \"spiffe://\""));
    };
    let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    let trust_domain_ok = !trust_domain.is_empty()
        && trust_domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    if !trust_domain_ok {
        return Err(refuse(
            "the trust domain must be non-empty lower-case letters, digits, '.', '-' and '_'",
        ));
    }
    let path_ok = !path.is_empty()
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        });
    if !path_ok {
        return Err(refuse(
            "the path must be non-empty segments of letters, digits, '.', '-' and '_', with no '.' or '..' segment \
             and no trailing '/'",
        ));
    }
    Ia5String::try_from(id).map_err(|e| refuse(&format!("it is not an IA5String: {e}")))
}

fn validated_validity(
    ca: &CertificateAuthority,
    req: &LeafRequest,
    now: OffsetDateTime,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let not_before = certificate_time(req.not_before, "the requested notBefore")?;
    let not_after = certificate_time(req.not_after, "the requested notAfter")?;
    let refuse = |why: String| Err(PkiError::InvalidValidity(why));
    if not_after <= not_before {
        return refuse(format!(
            "the requested notAfter {} is not after notBefore {}",
            rfc3339(not_after),
            rfc3339(not_before)
        ));
    }
    if not_after > ca.not_after() {
        return refuse(format!(
            "the requested notAfter {} is after the CA's notAfter {}: cap the certificate at the CA's lifetime or \
             rotate the CA",
            rfc3339(not_after),
            rfc3339(ca.not_after())
        ));
    }
    if not_after <= now {
        return refuse(format!(
            "the requested notAfter {} is not in the future (now is {})",
            rfc3339(not_after),
            rfc3339(now)
        ));
    }
    Ok((not_before, not_after))
}

fn inspect_der(der: &[u8]) -> Result<LeafInfo, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Parse(format!("failed to parse the certificate: {e}")))?;
    leaf_info(&cert, der)
}

fn leaf_info(cert: &X509Certificate<'_>, der: &[u8]) -> Result<LeafInfo, PkiError> {
    Ok(LeafInfo {
        serial_hex: hex_lower(cert.raw_serial()),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        sha256_fingerprint: sha256_fingerprint(der),
        uri_sans: uri_sans(cert)?,
        scope: scope_from_certificate(cert)?,
    })
}

fn uri_sans(cert: &X509Certificate<'_>) -> Result<Vec<String>, PkiError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Parse(format!("failed to parse the subjectAltName extension: {e}")))?;
    let names = san.map(|san| san.value.general_names.as_slice()).unwrap_or_default();
    Ok(names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect())
}

/// Reads the signed certificate back: what we report must be what it says. A mismatch is
/// a bug (for example rcgen re-encoding the CA's name differently), never the caller's fault.
fn check_as_intended(
    ca: &CertificateAuthority,
    cert: &X509Certificate<'_>,
    info: &LeafInfo,
    serial: &[u8; SERIAL_LEN],
    (not_before, not_after): (OffsetDateTime, OffsetDateTime),
) -> Result<(), PkiError> {
    let mismatch = if cert.issuer().as_raw() != ca.subject_der() {
        Some("its issuer name differs from the CA's subject")
    } else if info.serial_hex != hex_lower(serial) {
        Some("its serial differs from the generated one")
    } else if (info.not_before, info.not_after) != (not_before, not_after) {
        Some("its validity differs from the requested one")
    } else {
        None
    };
    match mismatch {
        Some(what) => Err(PkiError::Sign(format!(
            "failed to issue the leaf certificate: {what} (a bug in Mandate)"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rcgen::PublicKeyData;
    use sha2::Digest;
    use time::Duration;
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::x509::X509Version;

    use super::*;
    use crate::pki::test_support::{DAY, NOW, assert_ecdsa_p256, authority_key_id, der_of, leaf_request, parse, root};

    #[test]
    fn leaf_has_exactly_one_uri_san_and_the_svid_profile() {
        let ca = root();
        let req = leaf_request();
        let leaf = ca.issue_leaf(&req, NOW).unwrap();
        let der = der_of(&leaf.cert_pem);
        let cert = parse(&der);

        assert_eq!(cert.version(), X509Version::V3);
        assert_eq!(cert.subject().to_string(), "O=Mandate");
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(!san.critical, "subject is not empty, so the SAN need not be critical");
        assert_eq!(san.value.general_names, vec![GeneralName::URI(req.spiffe_id.as_str())]);

        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && !bc.value.ca);
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert_eq!(ku.value.flags, 1, "digitalSignature only, never keyCertSign or cRLSign");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.any && !eku.code_signing && eku.other.is_empty());

        assert_eq!(authority_key_id(cert.extensions()), ca.key_id());
        let ski = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.0.to_vec()),
            _ => None,
        });
        assert_eq!(ski.map(|id| id.len()), Some(20), "subjectKeyIdentifier present");
        assert_ecdsa_p256(&cert);
        assert_eq!(
            cert.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.2",
            "ecdsa-with-SHA256"
        );

        assert_eq!(cert.raw_serial().len(), 16);
        assert!(cert.raw_serial()[0] & 0x80 == 0 && cert.raw_serial()[0] != 0);
        assert_eq!((leaf.not_before, leaf.not_after), (req.not_before, req.not_after));
        assert_eq!(cert.validity().not_before.to_datetime(), req.not_before);
        assert_eq!(cert.validity().not_after.to_datetime(), req.not_after);
        assert_eq!(
            cert.extensions().len(),
            7,
            "AKI, SAN, KU, EKU, SKI, basicConstraints, scope"
        );
    }

    #[test]
    fn every_leaf_gets_a_fresh_key() {
        let ca = root();
        let a = ca.issue_leaf(&leaf_request(), NOW).unwrap();
        let b = ca.issue_leaf(&leaf_request(), NOW).unwrap();
        assert_ne!(a.key_pem.expose(), b.key_pem.expose());
        assert_ne!(
            parse(&der_of(&a.cert_pem)).public_key().raw,
            parse(&der_of(&b.cert_pem)).public_key().raw
        );
        let key = KeyPair::from_pem(a.key_pem.expose()).unwrap();
        assert_eq!(key.algorithm(), &PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            key.subject_public_key_info(),
            parse(&der_of(&a.cert_pem)).public_key().raw
        );
    }

    #[test]
    fn leaf_chain_verifies_against_the_ca() {
        let ca = root();
        let leaf = ca.issue_leaf(&leaf_request(), NOW).unwrap();
        assert!(verify_signed_by(&leaf.cert_pem, &ca));
        let der = der_of(&leaf.cert_pem);
        parse(&der)
            .verify_signature(Some(parse(ca.cert_der()).public_key()))
            .unwrap();

        let other = root();
        assert!(!verify_signed_by(&leaf.cert_pem, &other));
        assert!(!verify_signed_by("not a certificate", &ca));
    }

    #[test]
    fn tampered_leaf_does_not_verify() {
        let ca = root();
        let leaf = ca.issue_leaf(&leaf_request(), NOW).unwrap();
        let mut der = der_of(&leaf.cert_pem);
        let at = der.windows(6).position(|w| w == b"triage").unwrap();
        der[at] = b'T';
        let tampered = crate::pki::util::pem_encode("CERTIFICATE", &der);
        assert!(!verify_signed_by(&tampered, &ca));
    }

    #[test]
    fn threat_21_spiffe_id_with_query_is_refused() {
        let ca = root();
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        for bad in [
            "spiffe://example.org/ns/a/agent/b?admin=true",
            "spiffe://example.org/ns/a/agent/b#frag",
            "spiffe://example.org/ns/a/agent/b c",
            "spiffe://example.org/ns/a/agent/b\n",
            "spiffe://example.org/ns/a/agent/b\u{0}",
            "https://example.org/ns/a/agent/b",
            "SPIFFE://example.org/ns/a",
            "spiffe:///ns/a/agent/b",
            "spiffe://Example.org/ns/a",
            "spiffe://user@example.org/ns/a",
            "spiffe://example.org:8443/ns/a",
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://example.org/ns//a",
            "spiffe://example.org/ns/../a",
            "spiffe://example.org/ns/a/",
            "spiffe://example.org/ns/a%2Fb",
            "spiffe://example.org/ns/é",
            long.as_str(),
        ] {
            let mut req = leaf_request();
            req.spiffe_id = bad.to_string();
            let err = ca.issue_leaf(&req, NOW).unwrap_err();
            assert_eq!(
                err.reason(),
                "InvalidSpiffeId",
                "{bad:?} was accepted or failed otherwise: {err}"
            );
            assert!(err.to_string().len() < 400, "message echoes the whole input");
        }
    }

    #[test]
    fn leaf_validity_is_refused_when_empty_past_or_beyond_the_ca() {
        let ca = root();
        let cases = [
            (NOW, NOW),                                      // empty
            (NOW, NOW - Duration::minutes(1)),               // inverted
            (NOW - 2 * DAY, NOW - DAY),                      // already expired
            (NOW, ca.not_after() + Duration::seconds(1)),    // outlives the CA
            (NOW, NOW + Duration::nanoseconds(500_000_000)), // empty once truncated to seconds
        ];
        for (not_before, not_after) in cases {
            let req = LeafRequest {
                not_before,
                not_after,
                ..leaf_request()
            };
            let err = ca.issue_leaf(&req, NOW).unwrap_err();
            assert_eq!(err.reason(), "InvalidValidity", "{not_before} .. {not_after}: {err}");
        }
        let up_to_the_ca = LeafRequest {
            not_after: ca.not_after(),
            ..leaf_request()
        };
        assert_eq!(ca.issue_leaf(&up_to_the_ca, NOW).unwrap().not_after, ca.not_after());
    }

    #[test]
    fn sub_second_times_are_reported_as_encoded() {
        let ca = root();
        let req = LeafRequest {
            not_before: NOW + Duration::milliseconds(999),
            not_after: NOW + Duration::hours(1) + Duration::milliseconds(1),
            ..leaf_request()
        };
        let leaf = ca.issue_leaf(&req, NOW).unwrap();
        assert_eq!((leaf.not_before, leaf.not_after), (NOW, NOW + Duration::hours(1)));
        let info = inspect_leaf_pem(&leaf.cert_pem).unwrap();
        assert_eq!((info.not_before, info.not_after), (leaf.not_before, leaf.not_after));
    }

    #[test]
    fn serial_hex_matches_what_x509_parser_reports() {
        let ca = root();
        let mut seen = HashSet::new();
        for _ in 0..300 {
            let leaf = ca.issue_leaf(&leaf_request(), NOW).unwrap();
            let der = der_of(&leaf.cert_pem);
            let cert = parse(&der);
            assert_eq!(leaf.serial_hex, cert.raw_serial_as_string().replace(':', ""));
            assert_eq!(leaf.serial_hex.len(), 32);
            assert!(
                leaf.serial_hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
            assert_eq!(cert.serial.to_str_radix(16), leaf.serial_hex.trim_start_matches('0'));
            assert!(seen.insert(leaf.serial_hex), "serial repeated");
        }
    }

    #[test]
    fn inspect_leaf_pem_reports_what_was_issued() {
        let ca = root();
        let req = leaf_request();
        let leaf = ca.issue_leaf(&req, NOW).unwrap();
        // An adopted Secret may hold the leaf followed by the CA bundle.
        let tls_crt = format!("{}{}", leaf.cert_pem, ca.bundle_pem());
        let info = inspect_leaf_pem(&tls_crt).unwrap();
        assert_eq!(
            info,
            LeafInfo {
                serial_hex: leaf.serial_hex.clone(),
                not_before: leaf.not_before,
                not_after: leaf.not_after,
                sha256_fingerprint: leaf.sha256_fingerprint.clone(),
                uri_sans: vec![req.spiffe_id.clone()],
                scope: Some(req.scope.clone()),
            }
        );
        assert_eq!(
            info.sha256_fingerprint,
            hex_lower(&sha2::Sha256::digest(der_of(&leaf.cert_pem)))
        );
        assert_eq!(info.sha256_fingerprint.len(), 64);
        assert!(inspect_leaf_pem("").is_err());
    }

    #[test]
    fn threat_25_private_key_is_redacted_in_debug() {
        let ca = root();
        let leaf = ca.issue_leaf(&leaf_request(), NOW).unwrap();
        let body: String = leaf
            .key_pem
            .expose()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let debug = format!("{leaf:?} {leaf:#?}");
        assert!(!debug.contains("PRIVATE KEY") && !debug.contains(&body), "{debug}");
        assert!(debug.contains("key_pem: <redacted>"));
        // The certificate (public, and sharing the public key with the PKCS#8 document) is
        // printed; a marker key shows that nothing of the key field is.
        let marked = IssuedLeaf {
            key_pem: PrivateKeyPem::new("SECRET-MARKER".into()),
            ..leaf
        };
        assert!(!format!("{marked:?}").contains("SECRET-MARKER"));
    }

    #[test]
    fn unknown_scope_version_is_refused_before_signing() {
        let ca = root();
        let mut req = leaf_request();
        req.scope.version = 0;
        assert_eq!(ca.issue_leaf(&req, NOW).unwrap_err().reason(), "InvalidScope");
    }
}
