//! Certificates the tests need beyond what Mandate issues (a gateway's client
//! certificate from Mandate's CA, a certificate from another CA, an expired copy of an
//! agent's), and an HTTPS client that can present one.

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, string::Ia5String,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use time::OffsetDateTime;

/// A signer: Mandate's CA (read from its Secret) or one of the test's own.
pub struct Signer {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl Signer {
    /// Mandate's CA, from the `mandate-ca` Secret in `namespace`.
    pub async fn mandate(secrets: &Api<Secret>) -> Signer {
        let s = secrets.get("mandate-ca").await.expect("the CA Secret");
        let data = s.data.expect("CA data");
        let cert = String::from_utf8(data["tls.crt"].0.clone()).unwrap();
        let key = String::from_utf8(data["tls.key"].0.clone()).unwrap();
        let key = KeyPair::from_pem(&key).expect("CA key");
        Signer {
            issuer: Issuer::from_ca_cert_pem(&cert, key).expect("CA issuer"),
            cert_pem: cert,
        }
    }

    /// A CA that is not Mandate's.
    pub fn other() -> Signer {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "not mandate");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Signer {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A client certificate with URI SAN `spiffe_id`, valid in `[not_before,
    /// not_after]`, optionally carrying the grant scope extension of `scope_of` (an
    /// agent certificate, PEM).
    pub fn client(
        &self,
        spiffe_id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        scope_of: Option<&str>,
    ) -> Pair {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(spiffe_id).unwrap())];
        params.not_before = not_before;
        params.not_after = not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(positive_serial());
        if let Some(pem) = scope_of {
            params.custom_extensions.push(scope_extension(pem));
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A TLS server certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Pair {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        // The profile of Mandate's own serving certificates, which Go's TLS stack
        // (vegeta) accepts; with rcgen's default validity (1975 to 4096) it does not.
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "localhost");
        params.distinguished_name = dn;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::hours(12);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(positive_serial());
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// A random 16-byte serial that is positive in DER (Go refuses negative serials).
fn positive_serial() -> rcgen::SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] = (b[0] & 0x7f) | 0x01;
    rcgen::SerialNumber::from_slice(&b)
}

/// The grant scope extension of an agent certificate, to copy into a forged one.
fn scope_extension(pem: &str) -> CustomExtension {
    let der = ::pem::parse(pem).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == mandate::pki::SCOPE_EXTENSION_OID_STR)
        .expect("the agent certificate carries a scope");
    CustomExtension::from_oid_content(mandate::pki::SCOPE_EXTENSION_OID, ext.value.to_vec())
}

/// The response of [`https`].
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTPS/1.1 request to `127.0.0.1:port`, trusting `roots_pem`, presenting
/// `client` if given.
pub async fn https(
    port: u16,
    roots_pem: &str,
    client: Option<&Pair>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(p) => {
            let certs = CertificateDer::pem_slice_iter(p.cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(p.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", "localhost");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(bytes::Bytes::from(body))).unwrap())
        .await
        .expect("a response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    Reply { status, headers, body }
}
