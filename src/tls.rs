//! TLS for Mandate's own servers (the admission webhook, the decision service): a
//! serving certificate that can be swapped while connections are served, and
//! optional client certificates checked against Mandate's CA.

use std::sync::{Arc, RwLock};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::pki::IssuedLeaf;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The current serving certificate; new handshakes pick up a rotation at once.
#[derive(Debug, Default)]
pub struct RotatingCert {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl RotatingCert {
    pub fn install(&self, leaf: &IssuedLeaf) -> Result<(), rustls::Error> {
        let certs = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| rustls::Error::General(format!("serving certificate PEM: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.expose().as_bytes())
            .map_err(|e| rustls::Error::General(format!("serving key PEM: {e}")))?;
        let certified = CertifiedKey::from_der(certs, key, &provider())?;
        *self.current.write().expect("serving certificate lock") = Some(Arc::new(certified));
        Ok(())
    }
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().expect("serving certificate lock").clone()
    }
}

/// A server configuration serving `cert`; with `client_roots` (CA certificates, DER),
/// clients may present a certificate, which must chain to one of them. A client
/// without one still connects (the server then asks for another credential).
pub fn server_config(cert: Arc<RotatingCert>, client_roots: Option<&[Vec<u8>]>) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match client_roots.and_then(client_verifier) {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

fn client_verifier(roots: &[Vec<u8>]) -> Option<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        if let Err(e) = store.add(CertificateDer::from(der.clone())) {
            tracing::warn!(error = %e, "a CA certificate cannot be a client trust anchor");
        }
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tracing::warn!(error = %e, "no client certificate verifier: clients must use tokens"))
        .ok()
}
