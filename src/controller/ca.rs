//! Creating the signing CA, once, when there has never been one.
//!
//! A new self-signed root is only ever created when there is no sign that a CA existed
//! before: no CA Secret *and* no published CRL. Otherwise a deleted CA Secret would be
//! silently replaced by a root no relying party trusts (threat 19); instead the operator
//! reports `CaMissing` and issues nothing until a valid CA is back. Reading and
//! watching the CA is `state::ca`.

use std::sync::Arc;

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tracing::info;

pub use crate::state::ca::{CaSource, CaState, from_secret, watch_ca};
use crate::{pki::CertificateAuthority, state::ca::now};

/// Loads the CA, creating the root on the very first start. Create-only: when two
/// operators race, one create wins and the other reloads what the winner wrote.
pub async fn load_or_bootstrap(client: &Client, src: &CaSource) -> Result<CaState, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &src.namespace);
    if let Some(secret) = secrets.get_opt(&src.name).await? {
        return Ok(from_secret(&secret));
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &src.namespace);
    if cms.get_opt(&src.crl_configmap).await?.is_some() {
        return Ok(CaState::Unavailable {
            reason: "CaMissing",
            message: format!(
                "CA Secret {}/{} is missing but a CRL from an earlier CA exists; restore the CA Secret (a new root would not be trusted by relying parties)",
                src.namespace, src.name
            ),
        });
    }
    let ca = match CertificateAuthority::generate_root("Mandate root CA", now(), src.validity) {
        Ok(ca) => ca,
        Err(e) => {
            return Ok(CaState::Unavailable {
                reason: e.reason(),
                message: e.to_string(),
            });
        }
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(src.name.clone()),
            namespace: Some(src.namespace.clone()),
            labels: Some([("app.kubernetes.io/managed-by".to_string(), "mandate".to_string())].into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_string(), ByteString(ca.cert_pem().as_bytes().to_vec())),
                (
                    "tls.key".to_string(),
                    ByteString(ca.key_pem().expose().as_bytes().to_vec()),
                ),
                ("ca.crt".to_string(), ByteString(ca.cert_pem().as_bytes().to_vec())),
            ]
            .into(),
        ),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(namespace = %src.namespace, name = %src.name, key_id = %ca.key_id_hex(), "created self-signed root CA");
            Ok(CaState::Ready(Arc::new(ca)))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            info!("another operator created the CA first; loading it");
            Ok(secrets.get(&src.name).await.map(|s| from_secret(&s))?)
        }
        Err(e) => Err(e),
    }
}
