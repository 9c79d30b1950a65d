//! The signing CA: loaded from its Secret, created once when there has never been one,
//! and watched so a deleted or tampered CA stops issuance instead of being replaced.
//!
//! A new self-signed root is only ever created when there is no sign that a CA existed
//! before: no CA Secret *and* no published CRL. Otherwise a deleted CA Secret would be
//! silently replaced by a root no relying party trusts (threat 19); instead the operator
//! reports `CaMissing` and issues nothing until a valid CA is back.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::watch;
use tracing::{error, info, warn};

pub use crate::pki::CaState;
use crate::pki::{CertificateAuthority, OffsetDateTime};

/// Where the CA lives.
#[derive(Clone, Debug)]
pub struct CaSource {
    pub namespace: String,
    pub name: String,
    pub crl_configmap: String,
    pub validity: std::time::Duration,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Reads a CA from a Secret's `tls.crt` and `tls.key`.
pub fn from_secret(secret: &Secret) -> CaState {
    let get = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let (Some(cert), Some(key)) = (get("tls.crt"), get("tls.key")) else {
        return CaState::Unavailable {
            reason: "CaIncomplete",
            message: "the CA Secret needs both tls.crt and tls.key".into(),
        };
    };
    match CertificateAuthority::from_pem(&cert, &key, now()) {
        Ok(ca) => CaState::Ready(Arc::new(ca)),
        Err(e) => CaState::Unavailable {
            reason: e.reason(),
            message: format!("the CA Secret is not usable: {e}"),
        },
    }
}

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

/// Keeps `tx` current as the CA Secret changes. Deletion makes the CA unavailable.
pub async fn watch_ca(client: Client, src: CaSource, tx: watch::Sender<CaState>) {
    let secrets: Api<Secret> = Api::namespaced(client, &src.namespace);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={}", src.name));
    let mut stream = watcher(secrets, cfg).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => {
                let state = from_secret(&s);
                if let CaState::Unavailable { reason, message } = &state {
                    error!(reason, %message, "CA is not usable; issuance stopped");
                }
                tx.send_replace(state);
            }
            Ok(watcher::Event::Delete(_)) => {
                error!(namespace = %src.namespace, name = %src.name, "CA Secret deleted; issuance stopped");
                tx.send_replace(CaState::Unavailable {
                    reason: "CaMissing",
                    message: format!(
                        "CA Secret {}/{} was deleted; restore it to resume issuance",
                        src.namespace, src.name
                    ),
                });
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "CA Secret watch error"),
        }
    }
}
