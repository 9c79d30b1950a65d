//! Certificate revocation lists, RFC 5280 §5: version 2, signed by the CA key, issuer = the
//! CA's subject, nextUpdate always present, with the CRL number and authority key
//! identifier extensions (§5.2: both REQUIRED of conforming issuers).

use std::collections::HashSet;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::OffsetDateTime;

use super::util::{certificate_time, rfc3339, serial_from_hex};
use super::{CertificateAuthority, PkiError};

/// A CRL to sign.
#[derive(Clone, Debug)]
pub struct CrlRequest {
    /// Monotonically increasing per CA (RFC 5280 §5.2.3); the caller persists it.
    pub crl_number: u64,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
    pub entries: Vec<CrlEntry>,
}

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlEntry {
    /// As reported by [`IssuedLeaf::serial_hex`](super::IssuedLeaf::serial_hex) or
    /// [`LeafInfo::serial_hex`](super::LeafInfo::serial_hex).
    pub serial_hex: String,
    pub revoked_at: OffsetDateTime,
    pub reason: RevocationReason,
}

/// The RFC 5280 §5.3.1 reason codes that apply to leaf certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// Written as no reason code at all, as §5.3.1 recommends.
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl RevocationReason {
    fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

pub(super) fn sign(ca: &CertificateAuthority, req: &CrlRequest) -> Result<Vec<u8>, PkiError> {
    let this_update = crl_time(req.this_update, "thisUpdate")?;
    let next_update = crl_time(req.next_update, "nextUpdate")?;
    if next_update <= this_update {
        return Err(PkiError::InvalidCrl(format!(
            "the CRL's nextUpdate {} is not after its thisUpdate {}",
            rfc3339(next_update),
            rfc3339(this_update)
        )));
    }
    let params = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from_slice(&req.crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked_certs(&req.entries)?,
        // The CA's own subject key identifier, not one recomputed from the key: a CA made
        // elsewhere may have derived it differently (RFC 5280 §4.2.1.2 allows several methods).
        key_identifier_method: KeyIdMethod::PreSpecified(ca.key_id().to_vec()),
    };
    let crl = params
        .signed_by(ca.issuer())
        .map_err(|e| PkiError::Sign(format!("failed to sign the CRL: {e}")))?;
    Ok(crl.der().to_vec())
}

/// A DER CRL as PEM (`X509 CRL`).
pub fn crl_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("X509 CRL", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn revoked_certs(entries: &[CrlEntry]) -> Result<Vec<RevokedCertParams>, PkiError> {
    let mut seen = HashSet::new();
    entries
        .iter()
        .map(|entry| {
            let serial = serial_from_hex(&entry.serial_hex)?;
            if !seen.insert(serial.clone()) {
                return Err(PkiError::InvalidCrl(format!(
                    "serial {} is listed twice: list each revoked certificate once",
                    entry.serial_hex
                )));
            }
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: crl_time(entry.revoked_at, "revocationDate")?,
                reason_code: Some(entry.reason.to_rcgen()),
                invalidity_date: None,
            })
        })
        .collect()
}

/// What a stored CRL says, read back to check it before it is replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    /// The CRL number; `None` when it has none or it does not fit 64 bits.
    pub crl_number: Option<u64>,
    /// The revoked serials, lower-case hex as elsewhere in this module.
    pub serials: Vec<String>,
}

/// Parses a PEM CRL. Any defect is an error: a CRL that cannot be read is never taken
/// for an empty one.
pub fn inspect_crl_pem(crl_pem: &str) -> Result<CrlInfo, PkiError> {
    let block = pem::parse(crl_pem).map_err(|e| PkiError::InvalidCrl(format!("the CRL is not PEM: {e}")))?;
    if block.tag() != "X509 CRL" {
        return Err(PkiError::InvalidCrl(format!(
            "the PEM block is {:?}, not \"X509 CRL\"",
            block.tag()
        )));
    }
    inspect_crl_der(block.contents())
}

/// Parses a DER CRL, as strictly as [`inspect_crl_pem`].
pub fn inspect_crl_der(der: &[u8]) -> Result<CrlInfo, PkiError> {
    let (rest, crl) =
        x509_parser::parse_x509_crl(der).map_err(|e| PkiError::InvalidCrl(format!("the CRL does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidCrl("the CRL has trailing bytes".into()));
    }
    let crl_number = crl.crl_number().and_then(|n| {
        let bytes = n.to_bytes_be();
        (bytes.len() <= 8).then(|| bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    });
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial_as_string().replace(':', ""))
        .collect();
    Ok(CrlInfo { crl_number, serials })
}

fn crl_time(t: OffsetDateTime, what: &str) -> Result<OffsetDateTime, PkiError> {
    certificate_time(t, what).map_err(|e| PkiError::InvalidCrl(e.to_string()))
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use x509_parser::num_bigint::BigUint;
    use x509_parser::revocation_list::CertificateRevocationList;
    use x509_parser::x509::X509Version;

    use super::*;
    use crate::pki::CertificateAuthority;
    use crate::pki::test_support::{
        DAY, NOW, authority_key_id, der_of, leaf_request, parse, root, self_signed, valid_ca_params,
    };

    fn request(entries: Vec<CrlEntry>) -> CrlRequest {
        CrlRequest {
            crl_number: 42,
            this_update: NOW,
            next_update: NOW + DAY,
            entries,
        }
    }

    fn parse_crl(crl_pem: &str) -> (Vec<u8>, String) {
        let block = pem::parse(crl_pem).unwrap();
        (block.contents().to_vec(), block.tag().to_string())
    }

    fn crl_of(der: &[u8]) -> CertificateRevocationList<'_> {
        let (rest, crl) = x509_parser::parse_x509_crl(der).unwrap();
        assert!(rest.is_empty());
        crl
    }

    #[test]
    fn crl_lists_serials_with_number_and_next_update() {
        let ca = root();
        let a = ca.issue_leaf(&leaf_request(), NOW).unwrap();
        let b = ca.issue_leaf(&leaf_request(), NOW).unwrap();
        let c = ca.issue_leaf(&leaf_request(), NOW).unwrap();
        let entries = vec![
            CrlEntry {
                serial_hex: a.serial_hex.clone(),
                revoked_at: NOW - Duration::minutes(3),
                reason: RevocationReason::KeyCompromise,
            },
            CrlEntry {
                serial_hex: b.serial_hex.clone(),
                revoked_at: NOW - Duration::minutes(2),
                reason: RevocationReason::Unspecified,
            },
            CrlEntry {
                serial_hex: c.serial_hex.clone(),
                revoked_at: NOW - Duration::minutes(1),
                reason: RevocationReason::PrivilegeWithdrawn,
            },
        ];
        let pem_text = ca.sign_crl(&request(entries.clone())).unwrap();
        let (der, label) = parse_crl(&pem_text);
        assert_eq!(label, "X509 CRL");
        assert!(pem_text.starts_with("-----BEGIN X509 CRL-----\n"));
        let crl = crl_of(&der);

        assert_eq!(crl.version(), Some(X509Version::V2));
        assert_eq!(crl.issuer().as_raw(), parse(ca.cert_der()).subject().as_raw());
        assert_eq!(crl.last_update().to_datetime(), NOW);
        assert_eq!(crl.next_update().unwrap().to_datetime(), NOW + DAY);
        assert_eq!(crl.crl_number(), Some(&BigUint::from(42u32)));
        assert_eq!(authority_key_id(crl.extensions()), ca.key_id());

        let revoked: Vec<_> = crl.iter_revoked_certificates().collect();
        assert_eq!(revoked.len(), 3);
        for (got, want) in revoked.iter().zip(&entries) {
            assert_eq!(got.raw_serial_as_string().replace(':', ""), want.serial_hex);
            assert_eq!(got.revocation_date.to_datetime(), want.revoked_at);
        }
        assert_eq!(revoked[0].reason_code().map(|(_, r)| r.0), Some(1), "keyCompromise");
        assert_eq!(
            revoked[1].reason_code(),
            None,
            "unspecified is written as no reason code"
        );
        assert_eq!(
            revoked[2].reason_code().map(|(_, r)| r.0),
            Some(9),
            "privilegeWithdrawn"
        );

        crl.verify_signature(parse(ca.cert_der()).public_key()).unwrap();
        crl.verify_signature(parse(root().cert_der()).public_key()).unwrap_err();
    }

    #[test]
    fn user_ca_key_identifier_is_used_as_authority_key_identifier() {
        // A CA made elsewhere may derive its key identifier differently from rcgen (e.g.
        // SHA-1, RFC 5280 §4.2.1.2); leaves and CRLs must carry the CA's own value.
        let mut params = valid_ca_params("SHA-1 style key id");
        params.key_identifier_method = KeyIdMethod::PreSpecified(vec![0xde, 0xad, 0xbe, 0xef]);
        let (cert_pem, key_pem) = self_signed(&params);
        let ca = CertificateAuthority::from_pem(&cert_pem, &key_pem, NOW).unwrap();
        assert_eq!(ca.key_id_hex(), "deadbeef");

        let leaf = ca.issue_leaf(&leaf_request(), NOW).unwrap();
        let leaf_der = der_of(&leaf.cert_pem);
        assert_eq!(
            authority_key_id(parse(&leaf_der).extensions()),
            [0xde, 0xad, 0xbe, 0xef]
        );
        let (der, _) = parse_crl(&ca.sign_crl(&request(vec![])).unwrap());
        assert_eq!(authority_key_id(crl_of(&der).extensions()), [0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn every_reason_maps_to_its_rfc_5280_code() {
        let ca = root();
        let reasons = [
            (RevocationReason::KeyCompromise, 1),
            (RevocationReason::AffiliationChanged, 3),
            (RevocationReason::Superseded, 4),
            (RevocationReason::CessationOfOperation, 5),
            (RevocationReason::PrivilegeWithdrawn, 9),
        ];
        let entries = reasons
            .iter()
            .enumerate()
            .map(|(i, (reason, _))| CrlEntry {
                serial_hex: format!("{:02x}", i + 1),
                revoked_at: NOW,
                reason: *reason,
            })
            .collect();
        let (der, _) = parse_crl(&ca.sign_crl(&request(entries)).unwrap());
        let codes: Vec<u8> = crl_of(&der)
            .iter_revoked_certificates()
            .filter_map(|r| r.reason_code())
            .map(|(_, r)| r.0)
            .collect();
        assert_eq!(codes, reasons.iter().map(|(_, code)| *code).collect::<Vec<u8>>());
    }

    #[test]
    fn crl_with_no_entries_omits_the_list_and_keeps_large_numbers() {
        let ca = root();
        let req = CrlRequest {
            crl_number: u64::MAX,
            ..request(vec![])
        };
        let (der, _) = parse_crl(&ca.sign_crl(&req).unwrap());
        let crl = crl_of(&der);
        assert_eq!(crl.iter_revoked_certificates().count(), 0);
        assert_eq!(crl.crl_number(), Some(&BigUint::from(u64::MAX)));
        crl.verify_signature(parse(ca.cert_der()).public_key()).unwrap();

        let first = CrlRequest {
            crl_number: 0,
            ..request(vec![])
        };
        let (der, _) = parse_crl(&ca.sign_crl(&first).unwrap());
        assert_eq!(crl_of(&der).crl_number(), Some(&BigUint::from(0u32)));
    }

    #[test]
    fn a_signed_crl_reads_back_and_a_damaged_one_is_an_error() {
        let ca = root();
        let leaf = ca.issue_leaf(&leaf_request(), NOW).unwrap();
        let entry = CrlEntry {
            serial_hex: leaf.serial_hex.clone(),
            revoked_at: NOW,
            reason: RevocationReason::Superseded,
        };
        let pem_text = ca.sign_crl(&request(vec![entry])).unwrap();
        let info = inspect_crl_pem(&pem_text).unwrap();
        assert_eq!(info.crl_number, Some(42));
        assert_eq!(info.serials, [leaf.serial_hex]);
        let truncated = &pem_text[..pem_text.len() / 2];
        assert!(inspect_crl_pem(truncated).is_err());
        assert!(inspect_crl_pem("not a CRL at all").is_err());
        assert!(inspect_crl_pem(&ca.bundle_pem()).is_err(), "a certificate is not a CRL");
    }

    #[test]
    fn crl_refuses_bad_serials() {
        let ca = root();
        for bad in ["", "abc", "0a:1b", "ff01", "0001", "xyz1"] {
            let entry = CrlEntry {
                serial_hex: bad.into(),
                revoked_at: NOW,
                reason: RevocationReason::Superseded,
            };
            let err = ca.sign_crl(&request(vec![entry])).unwrap_err();
            assert_eq!(err.reason(), "InvalidSerial", "{bad:?}: {err}");
        }
    }

    #[test]
    fn crl_refuses_duplicate_serials() {
        let ca = root();
        let entry = CrlEntry {
            serial_hex: "0a1b".into(),
            revoked_at: NOW,
            reason: RevocationReason::Superseded,
        };
        let upper = CrlEntry {
            serial_hex: "0A1B".into(),
            ..entry.clone()
        };
        let err = ca.sign_crl(&request(vec![entry, upper])).unwrap_err();
        assert_eq!(err.reason(), "InvalidCrlRequest", "{err}");
    }

    #[test]
    fn crl_refuses_next_update_not_after_this_update() {
        let ca = root();
        for next_update in [NOW, NOW - DAY, NOW + Duration::milliseconds(10)] {
            let req = CrlRequest {
                next_update,
                ..request(vec![])
            };
            assert_eq!(ca.sign_crl(&req).unwrap_err().reason(), "InvalidCrlRequest");
        }
    }
}
