//! TLS serving certificates for Mandate's own endpoints (the admission webhook).
//!
//! Signed by the same CA as the agents' certificates, so the webhook configuration's
//! `caBundle` is the trust bundle Mandate already publishes. The profile is a plain
//! TLS server certificate: DNS and IP subjectAltNames, serverAuth only, never a CA.

use std::net::IpAddr;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber, string::Ia5String,
};
use time::OffsetDateTime;

use super::ca::ORGANIZATION;
use super::util::{certificate_time, hex_lower, random_serial, rfc3339, sha256_fingerprint};
use super::{CertificateAuthority, IssuedLeaf, PkiError, PrivateKeyPem};

/// What to put in a serving certificate.
#[derive(Clone, Debug)]
pub struct ServingRequest {
    /// DNS names, for example `mandate-webhook.mandate-system.svc`. The first is also
    /// the subject's common name.
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

pub(super) fn issue(ca: &CertificateAuthority, req: &ServingRequest) -> Result<IssuedLeaf, PkiError> {
    if req.dns_names.is_empty() && req.ip_addresses.is_empty() {
        return Err(PkiError::Sign(
            "a serving certificate needs at least one DNS name or IP address".into(),
        ));
    }
    let not_before = certificate_time(req.not_before, "the requested notBefore")?;
    let not_after = certificate_time(req.not_after.min(ca.not_after()), "the requested notAfter")?;
    if not_after <= not_before {
        return Err(PkiError::InvalidValidity(format!(
            "the serving certificate's notAfter {} is not after its notBefore {}",
            rfc3339(not_after),
            rfc3339(not_before)
        )));
    }
    let mut sans = vec![];
    for name in &req.dns_names {
        let ia5 = Ia5String::try_from(name.as_str())
            .map_err(|e| PkiError::Sign(format!("DNS name {name:?} is not an IA5String: {e}")))?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.extend(req.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));

    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, ORGANIZATION);
    let cn = req
        .dns_names
        .first()
        .cloned()
        .unwrap_or_else(|| "mandate-webhook".to_string());
    subject.push(DnType::CommonName, cn);
    let serial = random_serial().map_err(PkiError::Sign)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = not_before;
    params.not_after = not_after;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PkiError::Sign(format!("failed to generate the serving key: {e}")))?;
    let cert = params
        .signed_by(&key, ca.issuer())
        .map_err(|e| PkiError::Sign(format!("failed to sign the serving certificate: {e}")))?;
    Ok(IssuedLeaf {
        cert_pem: cert.pem(),
        key_pem: PrivateKeyPem::new(key.serialize_pem()),
        serial_hex: hex_lower(&serial),
        sha256_fingerprint: sha256_fingerprint(cert.der()),
        not_before,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use x509_parser::extensions::GeneralName;

    #[test]
    fn serving_certificate_names_the_service_and_loopback_and_chains_to_the_ca() {
        let now = OffsetDateTime::now_utc();
        let ca = CertificateAuthority::generate_root("test", now, Duration::from_secs(86400)).unwrap();
        let leaf = ca
            .issue_serving(&ServingRequest {
                dns_names: vec!["mandate-webhook.mandate-system.svc".into()],
                ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                not_before: now - time::Duration::minutes(1),
                not_after: now + time::Duration::hours(1),
            })
            .unwrap();
        assert!(super::super::verify_signed_by(&leaf.cert_pem, &ca));
        let der = super::super::util::first_certificate_der(&leaf.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(ip) => format!("{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["mandate-webhook.mandate-system.svc", "[127, 0, 0, 1]"]);
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
    }

    #[test]
    fn serving_certificate_needs_a_name_and_never_outlives_the_ca() {
        let now = OffsetDateTime::now_utc();
        let ca = CertificateAuthority::generate_root("test", now, Duration::from_secs(3600)).unwrap();
        let req = ServingRequest {
            dns_names: vec![],
            ip_addresses: vec![],
            not_before: now,
            not_after: now + time::Duration::hours(1),
        };
        assert!(ca.issue_serving(&req).is_err());
        let leaf = ca
            .issue_serving(&ServingRequest {
                dns_names: vec!["localhost".into()],
                not_after: now + time::Duration::days(30),
                ..req
            })
            .unwrap();
        assert!(leaf.not_after <= ca.not_after());
    }
}
