//! The certificate authority: a generated self-signed root, or a user-supplied CA that is
//! validated before Mandate signs anything with it.

use std::fmt;
use std::time::Duration as StdDuration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;

use super::util::{certificate_time, hex_lower, pem_encode, random_serial};
use super::{CaError, CrlRequest, IssuedLeaf, LeafRequest, PkiError, PrivateKeyPem, crl, leaf};

/// Organisation in the subject of generated roots (and of leaves, see `leaf.rs`).
pub(crate) const ORGANIZATION: &str = "Mandate";

/// How far a generated root's notBefore is backdated, so that relying parties whose clocks
/// run a little behind ours still accept it.
const ROOT_BACKDATE: Duration = Duration::hours(1);

/// X.520 upper bound for a commonName (RFC 5280 Appendix A, `ub-common-name`).
const MAX_COMMON_NAME_LEN: usize = 64;

/// A CA that Mandate signs leaves and CRLs with. Holds the signing key; `Debug` never shows it.
pub struct CertificateAuthority {
    /// rcgen's view of the CA: its subject, key identifier and signing key.
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
    /// Certificates that followed the CA in the user's PEM (its chain), kept for the bundle.
    chain_der: Vec<Vec<u8>>,
    /// The CA's subject exactly as encoded, to check issued certificates name it byte for byte.
    subject_der: Vec<u8>,
    /// The CA's subject key identifier, which leaves and CRLs carry as authority key identifier.
    key_id: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl CertificateAuthority {
    /// A self-signed ECDSA P-256 root: CA=true with pathLenConstraint 0 (it only ever signs
    /// leaves), keyUsage keyCertSign, cRLSign and digitalSignature, subject
    /// `O=Mandate, CN=<common_name>`, a random serial, a subject key identifier, and validity
    /// `[now - 1h, now + validity]`.
    pub fn generate_root(common_name: &str, now: OffsetDateTime, validity: StdDuration) -> Result<Self, CaError> {
        let params = root_params(common_name, now, validity)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Generate(format!("failed to generate the root key: {e}")))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Generate(format!("failed to self-sign the root: {e}")))?;
        // The generated root goes through exactly the checks a user-supplied CA does, so
        // there is one way to build a CertificateAuthority.
        Self::from_parts(cert.der().to_vec(), Vec::new(), key, now)
            .map_err(|e| CaError::Generate(format!("the generated root failed validation: {e}")))
    }

    /// Loads and validates a user-supplied CA, root or intermediate.
    ///
    /// `cert_pem`: the first certificate is the CA; any further certificates are its chain
    /// and are kept for [`bundle_pem`](Self::bundle_pem). `key_pem`: one unencrypted PKCS#8
    /// private key (`-----BEGIN PRIVATE KEY-----`), ECDSA P-256 or P-384, Ed25519 or RSA.
    ///
    /// Checks, in order, each with its own error: the certificates parse; the key parses; the
    /// key matches the CA certificate's SubjectPublicKeyInfo; basicConstraints CA=true;
    /// keyUsage has keyCertSign and cRLSign; `now` is within [notBefore, notAfter]; the
    /// subject can be reproduced exactly as the issuer of the certificates we sign.
    pub fn from_pem(cert_pem: &str, key_pem: &str, now: OffsetDateTime) -> Result<Self, CaError> {
        let mut certs = parse_certificate_pems(cert_pem)?.into_iter();
        let ca_der = certs.next().ok_or_else(|| {
            CaError::ParseCertificate("the PEM text contains no CERTIFICATE block: supply the CA certificate".into())
        })?;
        let chain_der: Vec<Vec<u8>> = certs.collect();
        check_parses(&ca_der, 1)?;
        for (i, der) in chain_der.iter().enumerate() {
            check_parses(der, i + 2)?;
        }
        let key = parse_private_key(key_pem)?;
        Self::from_parts(ca_der, chain_der, key, now)
    }

    /// The CA certificate alone, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate alone, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate followed by the chain given to [`from_pem`](Self::from_pem), for
    /// `ca.crt` and trust bundles.
    pub fn bundle_pem(&self) -> String {
        std::iter::once(&self.cert_der)
            .chain(&self.chain_der)
            .map(|der| pem_encode("CERTIFICATE", der))
            .collect()
    }

    /// The CA's private key as PKCS#8 PEM, for writing a generated root into its Secret once.
    pub fn key_pem(&self) -> PrivateKeyPem {
        PrivateKeyPem::new(self.issuer.key().serialize_pem())
    }

    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Lower-case hex of the subject key identifier that issued leaves and CRLs carry as
    /// their authority key identifier.
    pub fn key_id_hex(&self) -> String {
        hex_lower(&self.key_id)
    }

    /// Issues an X.509-SVID; see `leaf.rs` for the profile.
    pub fn issue_leaf(&self, req: &LeafRequest, now: OffsetDateTime) -> Result<IssuedLeaf, PkiError> {
        leaf::issue(self, req, now)
    }

    /// Issues a TLS serving certificate (DNS and IP SANs, serverAuth) with a fresh P-256 key,
    /// never outliving the CA.
    pub fn issue_serving(&self, req: &super::ServingRequest) -> Result<IssuedLeaf, PkiError> {
        super::serving::issue(self, req)
    }

    /// Signs an RFC 5280 v2 CRL; returns PEM labelled `X509 CRL`.
    pub fn sign_crl(&self, req: &CrlRequest) -> Result<String, PkiError> {
        crl::sign(self, req).map(|der| crl::crl_pem(&der))
    }

    /// Signs a CRL; DER.
    pub fn sign_crl_der(&self, req: &CrlRequest) -> Result<Vec<u8>, PkiError> {
        crl::sign(self, req)
    }

    pub(super) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    pub(super) fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }

    pub(super) fn key_id(&self) -> &[u8] {
        &self.key_id
    }

    /// Runs the checks of [`from_pem`](Self::from_pem) from the key parse on, in order.
    fn from_parts(
        cert_der: Vec<u8>,
        chain_der: Vec<Vec<u8>>,
        key: KeyPair,
        now: OffsetDateTime,
    ) -> Result<Self, CaError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CaError::ParseCertificate(format!("the CA certificate is not valid DER X.509: {e}")))?;
        check_key_matches(&cert, &key)?;
        check_is_ca(&cert)?;
        check_key_usage(&cert)?;
        let (not_before, not_after) = check_validity(&cert, now)?;
        check_subject_reproducible(cert.subject())?;
        let key_id = subject_key_id(&cert)?.unwrap_or_else(|| CertificateParams::default().key_identifier(&key));
        let subject_der = cert.subject().as_raw().to_vec();
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
            .map_err(|e| CaError::UnsupportedSubject(format!("rcgen cannot use it as an issuer: {e}")))?;
        Ok(CertificateAuthority {
            issuer,
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            cert_der,
            chain_der,
            subject_der,
            key_id,
            not_before,
            not_after,
        })
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("key_id", &self.key_id_hex())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain_der.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

fn root_params(common_name: &str, now: OffsetDateTime, validity: StdDuration) -> Result<CertificateParams, CaError> {
    if common_name.is_empty() || common_name.chars().count() > MAX_COMMON_NAME_LEN {
        return Err(CaError::Generate(format!(
            "the root common name {common_name:?} must be 1 to {MAX_COMMON_NAME_LEN} characters"
        )));
    }
    let now = certificate_time(now, "now").map_err(|e| CaError::Generate(e.to_string()))?;
    let validity = Duration::try_from(validity)
        .ok()
        .filter(|v| v.is_positive())
        .ok_or_else(|| CaError::Generate(format!("the root validity {validity:?} must be positive and finite")))?;
    let not_after = now
        .checked_add(validity)
        .ok_or_else(|| CaError::Generate(format!("the root validity {validity} is too long")))
        .and_then(|t| certificate_time(t, "the root's notAfter").map_err(|e| CaError::Generate(e.to_string())))?;
    let serial = random_serial().map_err(CaError::Generate)?;

    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, ORGANIZATION);
    subject.push(DnType::CommonName, common_name);

    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = now - ROOT_BACKDATE;
    params.not_after = not_after;
    // pathLenConstraint 0: the root signs leaves only, never another CA (RFC 5280 §4.2.1.9).
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Every PEM block must be a certificate: a private key pasted into the certificate field
/// would otherwise sit next to certificates that get copied into trust bundles.
fn parse_certificate_pems(cert_pem: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let blocks = pem::parse_many(cert_pem)
        .map_err(|e| CaError::ParseCertificate(format!("the certificate PEM is malformed: {e}")))?;
    blocks
        .into_iter()
        .map(|block| {
            if block.tag() == "CERTIFICATE" {
                Ok(block.into_contents())
            } else {
                Err(CaError::ParseCertificate(format!(
                    "the certificate PEM contains a {:?} block: it must hold only CERTIFICATE blocks, the CA first",
                    block.tag()
                )))
            }
        })
        .collect()
}

fn check_parses(der: &[u8], position: usize) -> Result<(), CaError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], _)) => Ok(()),
        Ok(_) => Err(CaError::ParseCertificate(format!(
            "certificate #{position} in the PEM has trailing bytes"
        ))),
        Err(e) => Err(CaError::ParseCertificate(format!(
            "certificate #{position} in the PEM is not valid X.509: {e}"
        ))),
    }
}

/// Exactly one unencrypted PKCS#8 key. Errors describe the input, never echo it.
fn parse_private_key(key_pem: &str) -> Result<KeyPair, CaError> {
    const CONVERT: &str = "convert it with `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key.pkcs8.pem`";
    let blocks = pem::parse_many(key_pem)
        .map_err(|_| CaError::ParseKey("the private key is not valid PEM".into()))?
        .into_iter()
        .filter(|block| block.tag().ends_with("PRIVATE KEY"))
        .collect::<Vec<_>>();
    let [block] = blocks.as_slice() else {
        return Err(CaError::ParseKey(format!(
            "expected exactly one PEM private key block, found {}",
            blocks.len()
        )));
    };
    match block.tag() {
        "PRIVATE KEY" => KeyPair::try_from(block.contents()).map_err(|_| {
            CaError::ParseKey(
                "the PKCS#8 key is not an ECDSA P-256/P-384, Ed25519 or RSA key that can be used for signing".into(),
            )
        }),
        "ENCRYPTED PRIVATE KEY" => Err(CaError::ParseKey(format!(
            "the key is encrypted, which is not supported: store it unencrypted in the Secret; {CONVERT}"
        ))),
        "EC PRIVATE KEY" | "RSA PRIVATE KEY" => Err(CaError::ParseKey(format!(
            "the key is in {} format, but PKCS#8 (-----BEGIN PRIVATE KEY-----) is required; {CONVERT}",
            if block.tag() == "EC PRIVATE KEY" {
                "SEC1"
            } else {
                "PKCS#1"
            }
        ))),
        other => Err(CaError::ParseKey(format!(
            "unsupported private key type {other:?}; {CONVERT}"
        ))),
    }
}

/// The whole SubjectPublicKeyInfo (algorithm, parameters such as the curve, and key) must
/// be identical: the key must be the one the certificate certifies.
fn check_key_matches(cert: &X509Certificate<'_>, key: &KeyPair) -> Result<(), CaError> {
    if cert.public_key().raw == key.subject_public_key_info().as_slice() {
        Ok(())
    } else {
        Err(CaError::KeyMismatch)
    }
}

/// RFC 5280 §4.2.1.9: only a certificate with basicConstraints cA=TRUE may sign certificates.
fn check_is_ca(cert: &X509Certificate<'_>) -> Result<(), CaError> {
    let constraints = cert
        .basic_constraints()
        .map_err(|e| CaError::ParseCertificate(format!("the basicConstraints extension is malformed: {e}")))?;
    match constraints {
        Some(bc) if bc.value.ca => Ok(()),
        _ => Err(CaError::NotACa),
    }
}

/// RFC 5280 §4.2.1.3: keyCertSign to sign certificates, cRLSign to sign CRLs. A CA without
/// keyUsage is allowed by the RFC for old roots, but we require it so that the CA's owner
/// has stated both purposes.
fn check_key_usage(cert: &X509Certificate<'_>) -> Result<(), CaError> {
    let usage = cert
        .key_usage()
        .map_err(|e| CaError::ParseCertificate(format!("the keyUsage extension is malformed: {e}")))?;
    let (cert_sign, crl_sign) = usage.map_or((false, false), |ku| (ku.value.key_cert_sign(), ku.value.crl_sign()));
    let missing: Vec<&'static str> = [(cert_sign, "keyCertSign"), (crl_sign, "cRLSign")]
        .into_iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, n)| n)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CaError::MissingKeyUsage { missing })
    }
}

fn check_validity(
    cert: &X509Certificate<'_>,
    now: OffsetDateTime,
) -> Result<(OffsetDateTime, OffsetDateTime), CaError> {
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if now < not_before {
        Err(CaError::NotYetValid { not_before })
    } else if now > not_after {
        Err(CaError::Expired { not_after })
    } else {
        Ok((not_before, not_after))
    }
}

/// rcgen rebuilds the issuer name of what it signs from the CA's subject, one attribute per
/// type: a repeated type (two OU or DC values) would be collapsed and a multi-valued RDN is
/// refused. Either way issued certificates would name a different issuer than the CA's
/// subject and fail path validation, so such CAs are refused up front with a clear reason.
fn check_subject_reproducible(subject: &X509Name<'_>) -> Result<(), CaError> {
    let mut seen = Vec::new();
    for rdn in subject.iter() {
        let [attr] = rdn.iter().collect::<Vec<_>>()[..] else {
            return Err(CaError::UnsupportedSubject(
                "it has a multi-valued RDN (several attributes joined with '+'): use a CA whose subject has one \
                 attribute per RDN"
                    .into(),
            ));
        };
        if seen.contains(attr.attr_type()) {
            return Err(CaError::UnsupportedSubject(format!(
                "attribute {} appears more than once: use a CA whose subject has each attribute type at most once",
                attr.attr_type().to_id_string()
            )));
        }
        seen.push(attr.attr_type().clone());
    }
    if seen.is_empty() {
        // RFC 5280 §4.1.2.6: a CA's subject MUST be a non-empty distinguished name.
        return Err(CaError::UnsupportedSubject(
            "it is empty; a CA needs a non-empty subject".into(),
        ));
    }
    Ok(())
}

/// The subjectKeyIdentifier extension, if the CA has one (RFC 5280 §4.2.1.2 requires it of
/// CAs, but old roots may lack it; then rcgen derives one from the key, as we do too).
fn subject_key_id(cert: &X509Certificate<'_>) -> Result<Option<Vec<u8>>, CaError> {
    let mut ids = cert.extensions().iter().filter_map(|ext| match ext.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
        _ => None,
    });
    let id = ids.next();
    if ids.next().is_some() {
        return Err(CaError::ParseCertificate(
            "the CA certificate has two subjectKeyIdentifier extensions".into(),
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use rcgen::{CustomExtension, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};
    use x509_parser::x509::X509Version;

    use super::*;
    use crate::pki::test_support::{
        DAY, NOW, assert_ecdsa_p256, authority_key_id, der_of, external_intermediate, leaf_request, parse, root,
        self_signed, valid_ca_params,
    };
    use crate::pki::verify_signed_by;

    #[test]
    fn generated_root_is_a_p256_ca_with_cert_and_crl_sign() {
        let ca = root();
        let der = der_of(ca.cert_pem());
        let cert = parse(&der);
        assert_eq!(cert.version(), X509Version::V3);
        assert_eq!(cert.subject().to_string(), "O=Mandate, CN=Mandate test root");
        assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw());
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign() && ku.value.digital_signature());
        assert_eq!(cert.validity().not_before.to_datetime(), NOW - Duration::hours(1));
        assert_eq!(cert.validity().not_after.to_datetime(), NOW + 365 * DAY);
        assert_eq!(
            (ca.not_before(), ca.not_after()),
            (NOW - Duration::hours(1), NOW + 365 * DAY)
        );
        assert_ecdsa_p256(&cert);
        assert_eq!(cert.raw_serial().len(), 16);
        assert_eq!(subject_key_id(&cert).unwrap(), Some(ca.key_id().to_vec()));
        cert.verify_signature(None).unwrap();
    }

    #[test]
    fn generated_root_serials_are_random() {
        let a = parse(&der_of(root().cert_pem())).raw_serial().to_vec();
        let b = parse(&der_of(root().cert_pem())).raw_serial().to_vec();
        assert_ne!(a, b);
    }

    #[test]
    fn generated_root_reloads_from_its_own_pem() {
        let ca = root();
        let reloaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem().expose(), NOW).unwrap();
        assert_eq!(reloaded.cert_der(), ca.cert_der());
        assert_eq!(reloaded.key_id(), ca.key_id());
        assert_eq!(reloaded.bundle_pem(), ca.cert_pem());
        let leaf = reloaded.issue_leaf(&leaf_request(), NOW).unwrap();
        assert!(verify_signed_by(&leaf.cert_pem, &ca));
    }

    #[test]
    fn generate_root_refuses_bad_names_and_validity() {
        let year = StdDuration::from_secs(365 * 86_400);
        assert_eq!(
            CertificateAuthority::generate_root("", NOW, year).unwrap_err().reason(),
            "CaGenerateFailed"
        );
        assert!(CertificateAuthority::generate_root(&"x".repeat(65), NOW, year).is_err());
        assert!(CertificateAuthority::generate_root("ok", NOW, StdDuration::ZERO).is_err());
        assert!(CertificateAuthority::generate_root("ok", NOW, StdDuration::MAX).is_err());
    }

    #[test]
    fn threat_20_ca_with_mismatched_key_is_refused() {
        let (cert_pem, _) = self_signed(&valid_ca_params("A"));
        let (_, other_key_pem) = self_signed(&valid_ca_params("B"));
        let err = CertificateAuthority::from_pem(&cert_pem, &other_key_pem, NOW).unwrap_err();
        assert!(matches!(err, CaError::KeyMismatch), "{err}");
        assert_eq!(err.reason(), "CaKeyMismatch");
    }

    #[test]
    fn threat_20_ca_with_key_of_another_algorithm_is_refused() {
        let (cert_pem, _) = self_signed(&valid_ca_params("A"));
        let other = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap().serialize_pem();
        assert!(matches!(
            CertificateAuthority::from_pem(&cert_pem, &other, NOW),
            Err(CaError::KeyMismatch)
        ));
    }

    #[test]
    fn threat_20_ca_without_crl_sign_is_refused() {
        let mut params = valid_ca_params("No CRL");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let (cert_pem, key_pem) = self_signed(&params);
        let err = CertificateAuthority::from_pem(&cert_pem, &key_pem, NOW).unwrap_err();
        assert!(
            matches!(&err, CaError::MissingKeyUsage { missing } if missing == &["cRLSign"]),
            "{err}"
        );
        assert_eq!(err.reason(), "CaMissingKeyUsage");
    }

    #[test]
    fn threat_20_ca_without_key_usage_is_refused() {
        let mut params = valid_ca_params("No KU");
        params.key_usages = vec![];
        let (cert_pem, key_pem) = self_signed(&params);
        let err = CertificateAuthority::from_pem(&cert_pem, &key_pem, NOW).unwrap_err();
        assert!(matches!(&err, CaError::MissingKeyUsage { missing } if missing == &["keyCertSign", "cRLSign"]));
    }

    #[test]
    fn threat_20_expired_ca_is_refused() {
        let mut params = valid_ca_params("Old");
        params.not_before = NOW - 730 * DAY;
        params.not_after = NOW - DAY;
        let (cert_pem, key_pem) = self_signed(&params);
        let err = CertificateAuthority::from_pem(&cert_pem, &key_pem, NOW).unwrap_err();
        assert!(
            matches!(err, CaError::Expired { not_after } if not_after == NOW - DAY),
            "{err}"
        );
        assert_eq!(err.reason(), "CaExpired");
    }

    #[test]
    fn threat_20_not_yet_valid_ca_is_refused() {
        let mut params = valid_ca_params("Future");
        params.not_before = NOW + DAY;
        let (cert_pem, key_pem) = self_signed(&params);
        let err = CertificateAuthority::from_pem(&cert_pem, &key_pem, NOW).unwrap_err();
        assert!(
            matches!(err, CaError::NotYetValid { not_before } if not_before == NOW + DAY),
            "{err}"
        );
        assert_eq!(err.reason(), "CaNotYetValid");
    }

    #[test]
    fn threat_20_leaf_certificate_is_not_accepted_as_ca() {
        let ca = root();
        let leaf = ca.issue_leaf(&leaf_request(), NOW).unwrap();
        let err = CertificateAuthority::from_pem(&leaf.cert_pem, leaf.key_pem.expose(), NOW).unwrap_err();
        assert!(matches!(err, CaError::NotACa), "{err}");
        assert_eq!(err.reason(), "CaNotACa");
    }

    #[test]
    fn threat_20_certificate_without_basic_constraints_is_not_accepted_as_ca() {
        let mut params = valid_ca_params("No BC");
        params.is_ca = IsCa::NoCa;
        let (cert_pem, key_pem) = self_signed(&params);
        assert!(matches!(
            CertificateAuthority::from_pem(&cert_pem, &key_pem, NOW),
            Err(CaError::NotACa)
        ));
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        // Wrong key AND not a CA AND expired: the key mismatch is reported first.
        let mut params = valid_ca_params("Everything wrong");
        params.is_ca = IsCa::ExplicitNoCa;
        params.not_after = NOW - DAY;
        params.not_before = NOW - 2 * DAY;
        let (cert_pem, key_pem) = self_signed(&params);
        let (_, other_key) = self_signed(&valid_ca_params("B"));
        assert!(matches!(
            CertificateAuthority::from_pem(&cert_pem, &other_key, NOW),
            Err(CaError::KeyMismatch)
        ));
        // Right key: not a CA comes before the key usage and validity checks.
        assert!(matches!(
            CertificateAuthority::from_pem(&cert_pem, &key_pem, NOW),
            Err(CaError::NotACa)
        ));
        // Unparsable key comes before the key match.
        let err = CertificateAuthority::from_pem(&cert_pem, "garbage", NOW).unwrap_err();
        assert_eq!(err.reason(), "CaKeyUnparsable");
        // Unparsable certificate comes first of all.
        let err = CertificateAuthority::from_pem("garbage", "garbage", NOW).unwrap_err();
        assert_eq!(err.reason(), "CaCertificateUnparsable");
    }

    #[test]
    fn user_supplied_intermediate_is_accepted_and_its_chain_kept() {
        let (intermediate_pem, key_pem, root_pem) = external_intermediate();
        let ca = CertificateAuthority::from_pem(&format!("{intermediate_pem}{root_pem}"), &key_pem, NOW).unwrap();
        assert_eq!(ca.cert_pem(), intermediate_pem);
        assert_eq!(ca.bundle_pem(), format!("{intermediate_pem}{root_pem}"));
        let bundle = pem::parse_many(ca.bundle_pem()).unwrap();
        assert_eq!(bundle.len(), 2);
        assert_eq!(bundle[1].contents(), der_of(&root_pem));

        let leaf = ca.issue_leaf(&leaf_request(), NOW).unwrap();
        assert!(verify_signed_by(&leaf.cert_pem, &ca));
        let leaf_der = der_of(&leaf.cert_pem);
        let intermediate_der = der_of(&intermediate_pem);
        assert_eq!(
            parse(&leaf_der).issuer().as_raw(),
            parse(&intermediate_der).subject().as_raw()
        );
        assert_eq!(ca.key_pem().expose(), key_pem);
    }

    #[test]
    fn ed25519_and_p384_cas_are_accepted_and_sign_leaves() {
        for alg in [&PKCS_ED25519, &PKCS_ECDSA_P384_SHA384] {
            let key = KeyPair::generate_for(alg).unwrap();
            let cert = valid_ca_params("Other algorithm").self_signed(&key).unwrap();
            let ca = CertificateAuthority::from_pem(&cert.pem(), &key.serialize_pem(), NOW).unwrap();
            let leaf = ca.issue_leaf(&leaf_request(), NOW).unwrap();
            assert!(verify_signed_by(&leaf.cert_pem, &ca), "{alg:?}");
        }
    }

    #[test]
    fn ca_with_repeated_subject_attribute_is_refused() {
        let mut params = valid_ca_params("Two OUs");
        params.distinguished_name.push(DnType::OrganizationalUnitName, "a");
        params
            .distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 11]), "b");
        let (cert_pem, key_pem) = self_signed(&params);
        let err = CertificateAuthority::from_pem(&cert_pem, &key_pem, NOW).unwrap_err();
        assert_eq!(err.reason(), "CaUnsupportedSubject", "{err}");
        assert!(err.to_string().contains("2.5.4.11 appears more than once"), "{err}");
    }

    #[test]
    fn ca_without_subject_key_identifier_still_issues_consistently() {
        // rcgen always writes a subjectKeyIdentifier for CAs, so emulate an old root: no CA
        // extensions from rcgen, basicConstraints CA=true added by hand.
        let mut params = valid_ca_params("Old style");
        params.is_ca = IsCa::NoCa;
        let basic_constraints = yasna::construct_der(|w| w.write_sequence(|w| w.next().write_bool(true)));
        let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 19], basic_constraints);
        ext.set_criticality(true);
        params.custom_extensions = vec![ext];
        let (cert_pem, key_pem) = self_signed(&params);
        assert_eq!(subject_key_id(&parse(&der_of(&cert_pem))).unwrap(), None);

        let ca = CertificateAuthority::from_pem(&cert_pem, &key_pem, NOW).unwrap();
        let leaf = ca.issue_leaf(&leaf_request(), NOW).unwrap();
        assert!(verify_signed_by(&leaf.cert_pem, &ca));
        let leaf_der = der_of(&leaf.cert_pem);
        assert_eq!(authority_key_id(parse(&leaf_der).extensions()), ca.key_id());
    }

    #[test]
    fn key_pem_in_other_formats_gets_a_conversion_hint() {
        let (cert_pem, _) = self_signed(&valid_ca_params("A"));
        for (label, format) in [("EC PRIVATE KEY", "SEC1"), ("RSA PRIVATE KEY", "PKCS#1")] {
            let key_pem = pem_encode(label, &[0x30, 0x00]);
            let err = CertificateAuthority::from_pem(&cert_pem, &key_pem, NOW).unwrap_err();
            assert!(
                err.to_string().contains(format) && err.to_string().contains("openssl pkcs8"),
                "{err}"
            );
        }
        let encrypted = pem_encode("ENCRYPTED PRIVATE KEY", &[0x30, 0x00]);
        let err = CertificateAuthority::from_pem(&cert_pem, &encrypted, NOW).unwrap_err();
        assert!(err.to_string().contains("encrypted"), "{err}");
    }

    #[test]
    fn key_errors_never_echo_the_key() {
        let (cert_pem, key_pem) = self_signed(&valid_ca_params("A"));
        let body: String = key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let corrupted = key_pem.replacen(&body[10..20], "!!!!!!!!!!", 1);
        let doubled = format!("{key_pem}{key_pem}");
        let truncated = pem_encode("PRIVATE KEY", &pem::parse(&key_pem).unwrap().contents()[..40]);
        for bad in [corrupted, doubled, truncated] {
            let err = CertificateAuthority::from_pem(&cert_pem, &bad, NOW).unwrap_err();
            assert_eq!(err.reason(), "CaKeyUnparsable", "{err}");
            let message = format!("{err} {err:?}");
            for chunk in body.as_bytes().chunks(8) {
                assert!(!message.contains(std::str::from_utf8(chunk).unwrap()), "{message}");
            }
        }
    }

    #[test]
    fn private_key_in_the_certificate_pem_is_refused() {
        let (cert_pem, key_pem) = self_signed(&valid_ca_params("A"));
        let err = CertificateAuthority::from_pem(&format!("{cert_pem}{key_pem}"), &key_pem, NOW).unwrap_err();
        assert_eq!(err.reason(), "CaCertificateUnparsable");
        assert!(!err.to_string().contains(&key_pem[30..60]));
    }

    #[test]
    fn threat_25_ca_debug_does_not_print_the_key() {
        let ca = root();
        let debug = format!("{ca:?}");
        let key = ca.key_pem();
        let body: String = key.expose().lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!debug.contains(&body) && !debug.contains("PRIVATE KEY"), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn certificate_authority_can_be_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CertificateAuthority>();
    }
}
