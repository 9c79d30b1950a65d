//! Fixtures shared by the PKI tests. Times are fixed; nothing reads the wall clock.

use std::time::Duration as StdDuration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{ParsedExtension, X509Extension};

use super::util::first_certificate_der;
use super::{CertificateAuthority, GrantScope, LeafRequest, ScopeTool};

/// 2025-06-15T15:06:40Z.
pub(crate) const NOW: OffsetDateTime = match OffsetDateTime::from_unix_timestamp(1_750_000_000) {
    Ok(t) => t,
    Err(_) => panic!("NOW is a valid timestamp"),
};

pub(crate) const DAY: Duration = Duration::days(1);

pub(crate) fn root() -> CertificateAuthority {
    CertificateAuthority::generate_root("Mandate test root", NOW, StdDuration::from_secs(365 * 86_400)).unwrap()
}

pub(crate) fn sample_scope() -> GrantScope {
    GrantScope {
        version: 1,
        grant_uid: "6f1c2a9e-0d3b-4c55-9a57-2f4e8b7c1d20".into(),
        grant_generation: 3,
        grant_name: "triage-readonly".into(),
        namespace: "team-a".into(),
        task_uid: "1b7e4c3a-5d2f-4e8a-b6c9-0a1d2e3f4a5b".into(),
        task_kind: "AgentTask".into(),
        task_name: "triage-1234".into(),
        tools: vec![ScopeTool {
            name: "github".into(),
            actions: vec!["issues.read".into(), "issues.comment".into()],
            destinations: vec!["api.github.com:443".into()],
        }],
    }
}

pub(crate) fn leaf_request() -> LeafRequest {
    LeafRequest {
        spiffe_id: "spiffe://example.org/ns/team-a/agent/triage-bot".into(),
        not_before: NOW - Duration::minutes(5),
        not_after: NOW + Duration::hours(1),
        scope: sample_scope(),
    }
}

/// Parses a certificate PEM for assertions.
pub(crate) fn der_of(cert_pem: &str) -> Vec<u8> {
    first_certificate_der(cert_pem).unwrap()
}

pub(crate) fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

/// CA parameters that pass every check at [`NOW`]; tests break one property at a time.
pub(crate) fn valid_ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Example Corp");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from_slice(&[0x01, 0x02, 0x03]));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = NOW - DAY;
    params.not_after = NOW + 365 * DAY;
    params
}

/// A self-signed CA built from `params` with a fresh P-256 key: (certificate PEM, key PEM).
pub(crate) fn self_signed(params: &CertificateParams) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// An external root and an intermediate it signed: (intermediate PEM, intermediate key PEM,
/// root PEM).
pub(crate) fn external_intermediate() -> (String, String, String) {
    let root_key = KeyPair::generate().unwrap();
    let root_params = valid_ca_params("Example Root");
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);

    let mut params = valid_ca_params("Example Intermediate for Mandate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(&[0x42]));
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &root_issuer).unwrap();
    (cert.pem(), key.serialize_pem(), root_cert.pem())
}

/// The keyIdentifier of the authorityKeyIdentifier extension (certificates and CRLs).
pub(crate) fn authority_key_id(extensions: &[X509Extension<'_>]) -> Vec<u8> {
    extensions
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|k| k.0.to_vec()),
            _ => None,
        })
        .expect("an authorityKeyIdentifier with a keyIdentifier")
}

/// Asserts the certificate's key is ECDSA (id-ecPublicKey) on P-256 (prime256v1).
pub(crate) fn assert_ecdsa_p256(cert: &X509Certificate<'_>) {
    let alg = &cert.public_key().algorithm;
    assert_eq!(alg.algorithm.to_id_string(), "1.2.840.10045.2.1", "id-ecPublicKey");
    let curve = alg
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .expect("named curve");
    assert_eq!(curve.to_id_string(), "1.2.840.10045.3.1.7", "prime256v1");
}
