//! A TLS server certificate that can be swapped while connections are served.

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

pub fn server_config(cert: Arc<RotatingCert>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
