//! The signing CA as every part reads it: loaded from its Secret and watched, so a
//! deleted or tampered CA stops issuance (and CRL signing) at once. Creating the very
//! first root is a write, and stays with the controllers (`controller::ca`).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::watch;
use tracing::{error, warn};

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

pub(crate) fn now() -> OffsetDateTime {
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
