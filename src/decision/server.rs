//! The decision service's TLS listener: one port for `POST /v1/authorize`, Envoy's
//! ext_authz over gRPC and HTTP, the audit trail, the trust bundle and the CRL.
//!
//! Every replica serves it, from its own serving certificate (issued by Mandate's CA
//! in memory, rotated at two thirds of its life and whenever the CA changes). Clients
//! may present a certificate of the same CA; it is verified in the handshake and is
//! then the caller's identity for every request on the connection.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
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
    #[error("failed to start a thread of the decision service: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Binds the port (a bad address fails the start) and starts serving on `threads`
/// threads of its own (at least one), until the process exits.
///
/// Why threads of its own, and not the controllers' runtime: a tokio worker runs each
/// task until it yields, so a decision queued behind a relist of 10,000 grants, a CRL
/// rebuild or an identity status over all its grants would wait for them. On its own
/// threads the kernel shares the cores between the two fairly.
///
/// Why one single-threaded runtime per thread, each serving whole connections, and not
/// one work-stealing runtime: an HTTP/2 connection is a task and each of its requests
/// another. On a work-stealing runtime a request's task is often woken or stolen on
/// the other thread, so a decision crosses threads (a futex wake, on a virtual machine
/// an interrupt to a halted vCPU) two or more times between its frames and its answer,
/// and those wakes, not the decision, set the tail. Here a connection, its requests and
/// its answers stay on one thread; only the connection itself is handed over once,
/// from the accepting thread to the worker with the fewest open connections
/// (docs/benchmarks.md, session 17).
pub fn start(
    config: ServerConfig,
    api: Arc<Api>,
    extra: Router,
    ca: watch::Receiver<CaState>,
    threads: usize,
) -> Result<(), ServeError> {
    let listener = std::net::TcpListener::bind(config.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    info!(listen = %config.listen, threads, "decision service listening");
    let cert = Arc::new(RotatingCert::default());
    let (tls_tx, tls_rx) = watch::channel(None);
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
    let serve = Serve {
        app,
        callers,
        tls: tls_rx,
    };
    let (workers, mut incoming): (Vec<Worker>, Vec<_>) = (0..threads.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            let worker = Worker {
                connections: tx,
                open: open.clone(),
            };
            (worker, (rx, open))
        })
        .unzip();
    // The first thread accepts, rotates the certificate, and serves its share.
    let (rx, open) = incoming.remove(0);
    for (index, (rx, open)) in incoming.into_iter().enumerate() {
        let serve = serve.clone();
        on_thread(index + 1, async move { serve.connections(rx, open).await })?;
    }
    let rotation = rotate(config, ca, cert, tls_tx);
    let accepting = accept_loop(listener, workers, serve.tls.clone());
    let serving = serve.connections(rx, open);
    on_thread(0, async move {
        futures::join!(rotation, accepting, serving);
    })
}

/// Runs `future` on a new thread's own single-threaded runtime.
fn on_thread(index: usize, future: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    std::thread::Builder::new()
        .name(format!("decision-{index}"))
        .spawn(move || runtime.block_on(future))
        .map(drop)
        .map_err(ServeError::Runtime)
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

/// A serving thread, as the accepting thread sees it.
struct Worker {
    connections: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    /// Connections it is serving now.
    open: Arc<AtomicUsize>,
}

/// What every serving thread needs to serve a connection.
#[derive(Clone)]
struct Serve {
    app: Router,
    callers: Arc<CallerPolicy>,
    tls: watch::Receiver<Option<tokio_rustls::TlsAcceptor>>,
}

/// Accepts connections and hands each to the thread serving the fewest.
async fn accept_loop(
    listener: std::net::TcpListener,
    workers: Vec<Worker>,
    mut tls: watch::Receiver<Option<tokio_rustls::TlsAcceptor>>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "decision service could not register its listener");
            return;
        }
    };
    // No connection is accepted before the first certificate is in place.
    if tls.wait_for(Option::is_some).await.is_err() {
        return;
    }
    let mut next = 0;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "decision service accept failed");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // Deregistered here, registered again on the thread that serves it.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                debug!(%peer, error = %e, "decision service could not hand a connection over");
                continue;
            }
        };
        let open: Vec<usize> = workers.iter().map(|w| w.open.load(Ordering::Relaxed)).collect();
        let pick = least_loaded(&open, next);
        next = (pick + 1) % workers.len();
        workers[pick].open.fetch_add(1, Ordering::Relaxed);
        if workers[pick].connections.send((tcp, peer)).is_err() {
            workers[pick].open.fetch_sub(1, Ordering::Relaxed);
            warn!(%peer, thread = pick, "decision service thread is gone; connection dropped");
        }
    }
}

/// The thread with the fewest open connections; among equals, the first from `next`
/// on, so that threads take turns while they are even.
fn least_loaded(open: &[usize], next: usize) -> usize {
    let n = open.len().max(1);
    (0..n).map(|i| (next + i) % n).min_by_key(|&i| open.get(i)).unwrap_or(0)
}

impl Serve {
    /// Serves the connections handed to this thread, each as a task of its own.
    async fn connections(
        self,
        mut incoming: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
        open: Arc<AtomicUsize>,
    ) {
        while let Some((tcp, peer)) = incoming.recv().await {
            let serve = self.clone();
            let open = OpenGuard(open.clone());
            tokio::spawn(async move {
                let _open = open;
                serve.connection(tcp, peer).await;
            });
        }
    }

    async fn connection(self, tcp: std::net::TcpStream, peer: SocketAddr) {
        let tcp = match tokio::net::TcpStream::from_std(tcp) {
            Ok(tcp) => tcp,
            Err(e) => {
                debug!(%peer, error = %e, "decision service could not register a connection");
                return;
            }
        };
        let Some(acceptor) = self.tls.borrow().clone() else {
            return;
        };
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
            caller: client.and_then(|der| self.callers.for_certificate(der)).map(Arc::new),
        };
        let app = self.app.layer(axum::Extension(caller));
        if let Err(e) = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
            .await
        {
            debug!(%peer, error = %e, "decision service connection ended with an error");
        }
    }
}

/// Counts a connection as open on its thread until it ends.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::least_loaded;

    #[test]
    fn a_connection_goes_to_the_thread_serving_fewest() {
        assert_eq!(least_loaded(&[3, 1, 2], 0), 1);
        assert_eq!(least_loaded(&[0, 5], 1), 0);
    }

    #[test]
    fn even_threads_take_turns() {
        let mut open = [0usize; 3];
        let mut next = 0;
        let mut order = vec![];
        for _ in 0..6 {
            let pick = least_loaded(&open, next);
            order.push(pick);
            open[pick] += 1;
            next = (pick + 1) % open.len();
        }
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
        // A thread whose connections ended is refilled first.
        open[1] = 0;
        assert_eq!(least_loaded(&open, next), 1);
    }

    #[test]
    fn one_thread_takes_everything() {
        assert_eq!(least_loaded(&[7], 0), 0);
        assert_eq!(least_loaded(&[], 0), 0);
    }
}
