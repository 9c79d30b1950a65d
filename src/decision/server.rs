//! The decision service's TLS listener: one port for `POST /v1/authorize`, Envoy's
//! ext_authz over gRPC and HTTP, the audit trail, the trust bundle and the CRL.
//!
//! Every replica serves it, from its own serving certificate (issued by Mandate's CA
//! in memory, rotated at two thirds of its life and whenever the CA changes). Clients
//! may present a certificate of the same CA; it is verified in the handshake and is
//! then the caller's identity for every request on the connection.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info, warn};

use super::{
    api::{self, Api, Peer},
    caller::CallerPolicy,
    ext_authz,
};
use crate::{
    pki::{CaState, OffsetDateTime, ServingRequest},
    tls::RotatingCert,
};

/// Where and as what the service is served.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
    pub cert_validity: Duration,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("failed to listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the port (a bad address fails the start) and returns the server future.
pub async fn start(
    config: ServerConfig,
    api: Arc<Api>,
    extra: Router,
    ca: watch::Receiver<CaState>,
) -> Result<impl std::future::Future<Output = ()>, ServeError> {
    // Bound here, so a bad address fails the start; registered with a runtime where the
    // future is first polled (the decision service's own, see `runtime`).
    let listener = std::net::TcpListener::bind(config.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    info!(listen = %config.listen, "decision service listening");
    let cert = Arc::new(RotatingCert::default());
    let (tls_tx, tls_rx) = watch::channel(None);
    let rotation = rotate(config, ca, cert, tls_tx);
    let callers = Arc::new(api.callers.clone());
    let grpc = tonic::service::Routes::new(envoy_types::ext_authz::v3::pb::AuthorizationServer::new(
        ext_authz::ExtAuthzGrpc(api.clone()),
    ))
    .into_axum_router();
    let app = api::routes()
        .route("/v1/ext-authz", axum::routing::any(ext_authz::http))
        .route("/v1/ext-authz/{*path}", axum::routing::any(ext_authz::http))
        .with_state(api)
        .merge(extra)
        .merge(grpc);
    Ok(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "decision service could not register its listener");
                return;
            }
        };
        futures::join!(rotation, accept_loop(listener, app, callers, tls_rx));
    })
}

/// Issues the serving certificate and the TLS configuration (whose client trust is the
/// current CA), and repeats at two thirds of the certificate's life or on a CA change.
async fn rotate(
    config: ServerConfig,
    mut ca: watch::Receiver<CaState>,
    cert: Arc<RotatingCert>,
    tls: watch::Sender<Option<tokio_rustls::TlsAcceptor>>,
) {
    loop {
        let state = ca.borrow_and_update().clone();
        let mut next = Duration::from_secs(5);
        match &state {
            CaState::Ready(ca) => {
                let now = OffsetDateTime::now_utc();
                let req = ServingRequest {
                    dns_names: config.dns_names.clone(),
                    ip_addresses: config.ip_addresses.clone(),
                    not_before: now - time::Duration::minutes(5),
                    not_after: now + config.cert_validity,
                };
                match ca.issue_serving(&req).map(|leaf| (cert.install(&leaf), leaf)) {
                    Ok((Ok(()), leaf)) => {
                        let roots = [ca.cert_der().to_vec()];
                        let server = crate::tls::server_config(cert.clone(), Some(&roots));
                        tls.send_replace(Some(tokio_rustls::TlsAcceptor::from(server)));
                        info!(serial = %leaf.serial_hex, not_after = %leaf.not_after, "decision service certificate rotated");
                        let lifetime = (leaf.not_after - now).unsigned_abs();
                        next = lifetime.mul_f64(2.0 / 3.0).max(Duration::from_secs(1));
                    }
                    Ok((Err(e), _)) => {
                        warn!(error = %e, "failed to install the decision service certificate; retrying")
                    }
                    Err(e) => warn!(error = %e, "failed to issue the decision service certificate; retrying"),
                }
            }
            CaState::Unavailable { reason, .. } => {
                // Without a CA nothing can be verified: keep serving with the last
                // configuration (every decision is NotReady meanwhile).
                warn!(
                    reason,
                    "no usable CA: the decision service answers NotReady until there is one"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            changed = ca.changed() => if changed.is_err() { return },
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    callers: Arc<CallerPolicy>,
    mut tls: watch::Receiver<Option<tokio_rustls::TlsAcceptor>>,
) {
    // No connection is accepted before the first certificate is in place.
    if tls.wait_for(Option::is_some).await.is_err() {
        return;
    }
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "decision service accept failed");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = tls.borrow().clone() else { continue };
        let (app, callers) = (app.clone(), callers.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(%peer, error = %e, "decision service TLS handshake failed");
                    return;
                }
            };
            let client = stream.get_ref().1.peer_certificates().and_then(|c| c.first());
            let caller = Peer {
                presented: client.is_some(),
                caller: client.and_then(|der| callers.for_certificate(der)).map(Arc::new),
            };
            let app = app.layer(axum::Extension(caller));
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                .await
            {
                debug!(%peer, error = %e, "decision service connection ended with an error");
            }
        });
    }
}
