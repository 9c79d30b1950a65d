//! The admission webhook: records who created each ToolGrant and ToolGrantApproval
//! where the API server has no MutatingAdmissionPolicy (before Kubernetes 1.36, or
//! with `--admission-mutation=webhook`); otherwise that policy records them and the
//! webhook is served but not called. `registration` applies whichever is in use.
//!
//! Served over TLS with a certificate from Mandate's own CA, issued in memory at start
//! and rotated at two thirds of its lifetime (and whenever the CA changes). Every
//! replica issues its own; the webhook configuration trusts the CA, not one
//! certificate, so rotation needs no coordination. The operator applies the webhook
//! configurations itself and keeps their `caBundle` current.

pub mod admission;
mod registration;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Json, Router, extract::State, routing::post};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use kube::{
    Client,
    api::DynamicObject,
    core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info, warn};

pub use registration::{Registration, Target};

use crate::pki::{CaState, CertificateAuthority, OffsetDateTime, ServingRequest};

/// How the webhook is served and registered.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
    pub cert_validity: Duration,
    /// `None`: serve only; the webhook configurations are managed elsewhere.
    pub registration: Option<Registration>,
}

/// Why the webhook server could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("failed to listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the listener (so a bad address fails the start) and returns the server future.
pub async fn start(
    client: Client,
    config: WebhookConfig,
    ca: watch::Receiver<CaState>,
) -> Result<impl std::future::Future<Output = ()>, WebhookError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| WebhookError::Listen {
            addr: config.listen,
            source,
        })?;
    let resolver = Arc::new(crate::tls::RotatingCert::default());
    let rotation = rotate(client, config.clone(), ca, resolver.clone());
    let serve = accept_loop(listener, resolver);
    info!(listen = %config.listen, "admission webhook listening");
    Ok(async move {
        futures::join!(rotation, serve);
    })
}

/// Issues the serving certificate, installs it, keeps the webhook configurations'
/// `caBundle` current, and repeats at two thirds of the certificate's lifetime or when
/// the CA changes.
///
/// Without a usable CA (deleted, or an invalid user-supplied one) nothing can be issued
/// to agents, but requesters must still be recorded and grants must still be able to
/// report why they wait. So the webhook then serves from a throwaway self-signed
/// signer held only in memory, trusted through the configurations' `caBundle`, until
/// the real CA is back.
async fn rotate(
    client: Client,
    config: WebhookConfig,
    mut ca: watch::Receiver<CaState>,
    cert: Arc<crate::tls::RotatingCert>,
) {
    let mut registered_bundle: Option<String> = None;
    let mut fallback: Option<Arc<CertificateAuthority>> = None;
    loop {
        let state = ca.borrow_and_update().clone();
        let now = OffsetDateTime::now_utc();
        let signer = match &state {
            CaState::Ready(ca) => {
                fallback = None;
                Some(ca.clone())
            }
            CaState::Unavailable { reason, .. } => {
                if fallback.is_none() {
                    warn!(
                        reason,
                        "no usable CA: the webhook serves from a temporary in-memory signer until there is one"
                    );
                    fallback = CertificateAuthority::generate_root(
                        "Mandate webhook (temporary)",
                        now,
                        config.cert_validity * 2,
                    )
                    .map(Arc::new)
                    .map_err(|e| warn!(error = %e, "failed to create the temporary webhook signer"))
                    .ok();
                }
                fallback.clone()
            }
        };
        let mut next = Duration::from_secs(5);
        if let Some(signer) = signer {
            // A new signer is trusted (alongside the one it replaces, for requests already
            // in flight) before any certificate from it is served.
            let bundle = signer.bundle_pem();
            if let Some(reg) = &config.registration
                && registered_bundle.as_ref() != Some(&bundle)
            {
                let trusted = match &registered_bundle {
                    Some(old) => format!("{bundle}{old}"),
                    None => bundle.clone(),
                };
                match registration::apply(&client, reg, &trusted).await {
                    Ok(mutation) => {
                        info!(configuration = %reg.name, ?mutation, "admission configurations applied with the current CA bundle");
                        registered_bundle = Some(bundle.clone());
                    }
                    Err(e) => warn!(error = %e, "failed to apply the admission configurations; retrying"),
                }
            }
            let req = ServingRequest {
                dns_names: config.dns_names.clone(),
                ip_addresses: config.ip_addresses.clone(),
                not_before: now - time::Duration::minutes(5),
                not_after: now + config.cert_validity,
            };
            match signer.issue_serving(&req).and_then(|leaf| {
                cert.install(&leaf)
                    .map(|()| leaf)
                    .map_err(|e| crate::pki::PkiError::Sign(e.to_string()))
            }) {
                Ok(leaf) => {
                    info!(serial = %leaf.serial_hex, not_after = %leaf.not_after, "webhook serving certificate rotated");
                    let lifetime = (leaf.not_after - now).unsigned_abs();
                    next = lifetime.mul_f64(2.0 / 3.0).max(Duration::from_secs(1));
                }
                Err(e) => warn!(error = %e, "failed to issue the webhook serving certificate; retrying"),
            }
            if config.registration.is_some() && registered_bundle.as_ref() != Some(&bundle) {
                next = next.min(Duration::from_secs(5));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            changed = ca.changed() => if changed.is_err() { return },
        }
    }
}

async fn accept_loop(listener: TcpListener, cert: Arc<crate::tls::RotatingCert>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(cert, None));
    let app = Router::new().route("/mutate", post(mutate)).with_state(());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "webhook accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
            };
            let service = TowerToHyperService::new(app);
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

async fn mutate(
    State(()): State<()>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    Json(review_with(review, "mutate", admission::mutate))
}

fn review_with(
    review: AdmissionReview<DynamicObject>,
    pass: &str,
    decide: fn(&AdmissionRequest<DynamicObject>) -> AdmissionResponse,
) -> AdmissionReview<DynamicObject> {
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(req) => req,
        Err(e) => {
            warn!(error = %e, pass, "malformed AdmissionReview");
            return AdmissionResponse::invalid(e.to_string()).into_review();
        }
    };
    let res = decide(&req);
    let name = req.name.clone();
    let user = req.user_info.username.clone().unwrap_or_default();
    if res.allowed {
        debug!(pass, kind = %req.kind.kind, namespace = ?req.namespace, %name, %user, operation = ?req.operation, "admitted");
    } else {
        info!(pass, kind = %req.kind.kind, namespace = ?req.namespace, %name, %user, operation = ?req.operation,
              reason = %res.result.message, "refused");
    }
    res.into_review()
}

/// Why the webhook flags cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--webhook-url {0:?} must be an https:// URL with a host")]
    Url(String),
    #[error("--webhook-service {0:?} must be namespace/name:port")]
    Service(String),
}

/// Builds the webhook configuration from the flags: the serving certificate names
/// whatever the API server will dial.
pub fn config_from_args(args: &crate::cli::RunArgs) -> Result<WebhookConfig, ConfigError> {
    let mut dns_names = vec![];
    let mut ip_addresses = vec![];
    let target = if let Some(url) = &args.webhook_url {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| ConfigError::Url(url.clone()))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.rsplit_once(':') {
            Some((h, port)) if port.parse::<u16>().is_ok() => h,
            _ => authority,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(ConfigError::Url(url.clone()));
        }
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip_addresses.push(ip),
            Err(_) => dns_names.push(host.to_string()),
        }
        Some(Target::Url(url.clone()))
    } else if let Some(svc) = &args.webhook_service {
        let bad = || ConfigError::Service(svc.clone());
        let (namespace, rest) = svc.split_once('/').ok_or_else(bad)?;
        let (name, port) = rest.split_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if namespace.is_empty() || name.is_empty() {
            return Err(bad());
        }
        dns_names.push(format!("{name}.{namespace}.svc"));
        dns_names.push(format!("{name}.{namespace}.svc.cluster.local"));
        Some(Target::Service {
            namespace: namespace.to_string(),
            name: name.to_string(),
            port,
        })
    } else {
        // Serving only (the configurations are managed elsewhere): name the loopback.
        ip_addresses.push(std::net::Ipv4Addr::LOCALHOST.into());
        None
    };
    Ok(WebhookConfig {
        listen: args.webhook_listen,
        dns_names,
        ip_addresses,
        cert_validity: args.webhook_cert_validity.into(),
        registration: target.map(|target| Registration {
            name: args.webhook_configuration_name.clone(),
            target,
            namespace: args.watch_namespace.clone(),
            mutation: args.admission_mutation,
        }),
    })
}
