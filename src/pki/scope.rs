//! Mandate's grant scope certificate extension: what a leaf certificate's holder was granted.
//!
//! # Encoding
//!
//! `extnValue` holds a DER `UTF8String` whose content is the compact JSON of [`GrantScope`]
//! (camelCase keys). The extension is non-critical, so TLS stacks that do not know it still
//! accept the certificate as a plain X.509-SVID; relying parties that enforce scopes read it
//! with [`read_scope`]. The JSON carries its own `version` (1); readers refuse versions they
//! do not know and fields they do not know, so a newer, narrower scope is never read as a
//! wider older one.
//!
//! # Why this OID
//!
//! The first choice was ITU-T X.667's UUID arc, `2.25.<UUID as one decimal integer>`, which
//! needs no registration. It cannot be used here: a UUID is a 128-bit arc, and rcgen 0.14
//! writes extension OIDs from `&[u64]` arcs only (`CustomExtension::from_oid_content`, via
//! yasna's `ObjectIdentifier`). A `2.25` OID with a 64-bit arc would not be a UUID OID and
//! could collide, and an invented `1.3.6.1.4.1.<n>` would squat on somebody's IANA Private
//! Enterprise Number.
//!
//! So the OID lives under `1.2.840.113556.1.8000.2554`, the arc Microsoft set aside for
//! GUID-based OIDs that anyone may derive without registering, for exactly this case of a
//! 128-bit arc not fitting an implementation's integers. A GUID `aaaabbbb-cccc-dddd-eeee-
//! ffffffgggggg` maps to `1.2.840.113556.1.8000.2554.A.B.C.D.E.F.G`, each group read as hex.
//! Mandate's root is derived from the random (version 4) UUID
//! `c0612270-7ee9-433f-a2f6-e2cb407688bd`, generated once for this purpose:
//!
//! ```text
//! 1.2.840.113556.1.8000.2554.49249.8816.32489.17215.41718.14863168.7768253      Mandate's OID root
//! 1.2.840.113556.1.8000.2554.49249.8816.32489.17215.41718.14863168.7768253.1    grant scope extension (v1)
//! ```
//!
//! (The same UUID in X.667 form would be `2.25.255716126500739560157800377009189587133`.)
//! Further Mandate OIDs, if ever needed, go under the same root as `.2`, `.3`, ...

use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::Oid;

use super::PkiError;

/// Mandate's grant scope extension, `<Mandate OID root>.1` (see the module documentation).
pub const SCOPE_EXTENSION_OID: &[u64] = &[
    1, 2, 840, 113556, 1, 8000, 2554, 49249, 8816, 32489, 17215, 41718, 14863168, 7768253, 1,
];

/// [`SCOPE_EXTENSION_OID`] in dotted form, for documentation and relying parties.
pub const SCOPE_EXTENSION_OID_STR: &str = "1.2.840.113556.1.8000.2554.49249.8816.32489.17215.41718.14863168.7768253.1";

/// The only [`GrantScope::version`] this build writes and reads.
pub const SCOPE_VERSION: u32 = 1;

/// Upper bound on the scope's JSON. Every TLS handshake carries the certificate, and a
/// Secret is at most 1 MiB; a scope this large means a grant that should be split.
pub const MAX_SCOPE_JSON_BYTES: usize = 16 * 1024;

/// What a task was granted, as carried in its certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantScope {
    /// Encoding version; must be [`SCOPE_VERSION`].
    pub version: u32,
    pub grant_uid: String,
    pub grant_generation: i64,
    pub grant_name: String,
    pub namespace: String,
    pub task_uid: String,
    pub task_kind: String,
    pub task_name: String,
    pub tools: Vec<ScopeTool>,
}

/// One tool the task may use, the actions allowed on it and where it may reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeTool {
    pub name: String,
    pub actions: Vec<String>,
    pub destinations: Vec<String>,
}

/// Reads the grant scope extension from a DER certificate: `Ok(None)` when the certificate
/// has none, an error when it is present but malformed or of an unknown version.
pub fn read_scope(cert_der: &[u8]) -> Result<Option<GrantScope>, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::Parse(format!("failed to parse the certificate: {e}")))?;
    scope_from_certificate(&cert)
}

/// Whether `scope` can go into a certificate (its version is known and it fits), with
/// the reason when it cannot.
pub fn check_scope(scope: &GrantScope) -> Result<(), PkiError> {
    encode_scope(scope).map(|_| ())
}

/// The extension's DER value (a UTF8String of the scope's JSON), after checking the scope
/// is one we are willing to put in a certificate.
pub(crate) fn encode_scope(scope: &GrantScope) -> Result<Vec<u8>, PkiError> {
    check_version(scope.version).map_err(PkiError::InvalidScope)?;
    let json = serde_json::to_string(scope)
        .map_err(|e| PkiError::Encode(format!("failed to encode the grant scope as JSON: {e}")))?;
    if json.len() > MAX_SCOPE_JSON_BYTES {
        return Err(PkiError::InvalidScope(format!(
            "the grant scope encodes to {} bytes, above the {MAX_SCOPE_JSON_BYTES}-byte limit for a certificate: \
             grant fewer tools, actions or destinations per grant",
            json.len()
        )));
    }
    Ok(yasna::construct_der(|writer| writer.write_utf8_string(&json)))
}

/// The scope in an already parsed certificate.
pub(crate) fn scope_from_certificate(cert: &X509Certificate<'_>) -> Result<Option<GrantScope>, PkiError> {
    let mut matching = cert.extensions().iter().filter(|ext| is_scope_oid(&ext.oid));
    let Some(ext) = matching.next() else {
        return Ok(None);
    };
    if matching.next().is_some() {
        // RFC 5280 §4.2: a certificate MUST NOT include more than one instance of an extension.
        return Err(PkiError::Parse(
            "the certificate carries the grant scope extension more than once".into(),
        ));
    }
    decode_scope(ext.value).map(Some)
}

fn is_scope_oid(oid: &Oid<'_>) -> bool {
    oid.iter()
        .is_some_and(|arcs| arcs.eq(SCOPE_EXTENSION_OID.iter().copied()))
}

fn decode_scope(value: &[u8]) -> Result<GrantScope, PkiError> {
    let json = yasna::parse_der(value, |reader| reader.read_utf8string())
        .map_err(|e| PkiError::Parse(format!("the grant scope extension is not a DER UTF8String: {e}")))?;
    // The version is read on its own first, so a newer scope is reported as such rather
    // than as a JSON document with unknown fields.
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let Versioned { version } = serde_json::from_str(&json)
        .map_err(|e| PkiError::Parse(format!("the grant scope extension has no readable version: {e}")))?;
    check_version(version).map_err(PkiError::Parse)?;
    serde_json::from_str(&json)
        .map_err(|e| PkiError::Parse(format!("the grant scope extension is not a valid version 1 scope: {e}")))
}

fn check_version(version: u32) -> Result<(), String> {
    if version == SCOPE_VERSION {
        Ok(())
    } else {
        Err(format!(
            "grant scope version {version} is not supported: this build reads and writes version {SCOPE_VERSION}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, CustomExtension, KeyPair};

    use super::*;
    use crate::pki::test_support::{NOW, leaf_request, root, sample_scope};

    /// A self-signed certificate carrying `extensions`, for feeding the reader malformed input.
    fn certificate_with(extensions: Vec<CustomExtension>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.custom_extensions = extensions;
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec()
    }

    fn raw_extension(content: Vec<u8>) -> CustomExtension {
        CustomExtension::from_oid_content(SCOPE_EXTENSION_OID, content)
    }

    #[test]
    fn scope_extension_round_trips() {
        let ca = root();
        let mut req = leaf_request();
        req.scope.tools[0].destinations.push("ünïcode.example:443".into());
        let leaf = ca.issue_leaf(&req, NOW).unwrap();
        let der = crate::pki::util::first_certificate_der(&leaf.cert_pem).unwrap();
        assert_eq!(read_scope(&der).unwrap(), Some(req.scope));
    }

    #[test]
    fn scope_value_is_a_utf8string_of_compact_camel_case_json() {
        let scope = sample_scope();
        let der = encode_scope(&scope).unwrap();
        let json = yasna::parse_der(&der, |r| r.read_utf8string()).unwrap();
        assert_eq!(der[0], 0x0c, "UTF8String tag");
        assert!(json.starts_with(r#"{"version":1,"grantUid":"#), "{json}");
        assert!(json.contains(r#""taskKind":"#) && !json.contains(' '), "{json}");
    }

    #[test]
    fn scope_extension_is_non_critical_with_the_documented_oid() {
        let ca = root();
        let leaf = ca.issue_leaf(&leaf_request(), NOW).unwrap();
        let der = crate::pki::util::first_certificate_der(&leaf.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = cert.extensions().iter().find(|e| is_scope_oid(&e.oid)).unwrap();
        assert!(!ext.critical);
        assert_eq!(ext.oid.to_id_string(), SCOPE_EXTENSION_OID_STR);
    }

    #[test]
    fn oid_root_is_the_documented_uuid_under_the_guid_arc() {
        let uuid = "c06122707ee9433fa2f6e2cb407688bd";
        let groups = [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (20, 26), (26, 32)];
        let mut expected = vec![1, 2, 840, 113556, 1, 8000, 2554];
        expected.extend(
            groups
                .iter()
                .map(|&(a, b)| u64::from_str_radix(&uuid[a..b], 16).unwrap()),
        );
        expected.push(1);
        assert_eq!(SCOPE_EXTENSION_OID, expected.as_slice());
        let dotted: Vec<String> = SCOPE_EXTENSION_OID.iter().map(u64::to_string).collect();
        assert_eq!(dotted.join("."), SCOPE_EXTENSION_OID_STR);
        // The UUID is random (version 4, RFC 4122 variant), so the root collides with no one.
        assert_eq!(&uuid[12..13], "4");
        assert!(matches!(&uuid[16..17], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn certificate_without_scope_reads_as_none() {
        assert_eq!(read_scope(&certificate_with(vec![])).unwrap(), None);
    }

    #[test]
    fn scope_of_another_version_is_refused_when_issuing_and_reading() {
        let mut scope = sample_scope();
        scope.version = 2;
        assert_eq!(encode_scope(&scope).unwrap_err().reason(), "InvalidScope");

        let json = serde_json::to_string(&scope).unwrap();
        let der = certificate_with(vec![raw_extension(yasna::construct_der(|w| {
            w.write_utf8_string(&json)
        }))]);
        let err = read_scope(&der).unwrap_err();
        assert!(err.to_string().contains("version 2 is not supported"), "{err}");
    }

    #[test]
    fn scope_with_unknown_fields_is_refused_when_reading() {
        let mut value = serde_json::to_value(sample_scope()).unwrap();
        value["deniedTools"] = serde_json::json!(["shell"]);
        let der = certificate_with(vec![raw_extension(yasna::construct_der(|w| {
            w.write_utf8_string(&value.to_string())
        }))]);
        assert!(read_scope(&der).unwrap_err().to_string().contains("deniedTools"));
    }

    #[test]
    fn scope_that_is_not_a_utf8string_is_refused_when_reading() {
        let der = certificate_with(vec![raw_extension(yasna::construct_der(|w| w.write_bytes(b"{}")))]);
        assert!(
            read_scope(&der)
                .unwrap_err()
                .to_string()
                .contains("not a DER UTF8String")
        );
    }

    #[test]
    fn repeated_scope_extension_is_refused_when_reading() {
        let value = encode_scope(&sample_scope()).unwrap();
        let der = certificate_with(vec![raw_extension(value.clone()), raw_extension(value)]);
        assert!(read_scope(&der).is_err());
    }

    #[test]
    fn oversized_scope_is_refused() {
        let mut scope = sample_scope();
        scope.tools[0].destinations = vec!["x".repeat(MAX_SCOPE_JSON_BYTES)];
        assert_eq!(encode_scope(&scope).unwrap_err().reason(), "InvalidScope");
    }
}
