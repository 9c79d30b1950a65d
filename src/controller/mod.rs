//! The controllers: the only part of Mandate that writes to the Kubernetes API.
//!
//! Each reconcile is fetch, decide (pure functions in other modules, with `now`
//! passed in), apply, then status.

mod identity;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{
    Api, Client,
    runtime::{
        Controller,
        controller::Action,
        events::{Recorder, Reporter},
        watcher,
    },
};
use tracing::{info, warn};

use crate::{api::AgentIdentity, cli::RunArgs, spiffe};

/// Field manager of every server-side apply the operator makes, suffixed per call site.
pub const MANAGER: &str = "mandate";

/// Why a reconcile failed; each variant names the step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to write status of {kind} {namespace}/{name}: {source}")]
    WriteStatus {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("object has no namespace")]
    MissingNamespace,
}

impl Error {
    /// CamelCase reason for conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::WriteStatus { .. } => "WriteStatusFailed",
            Error::MissingNamespace => "MissingNamespace",
        }
    }
}

/// Why the operator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("failed to build a Kubernetes client from kubeconfig or in-cluster config: {0}")]
    Client(#[source] kube::Error),
    #[error("invalid --trust-domain: {0}")]
    TrustDomain(#[source] spiffe::SpiffeIdError),
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub trust_domain: String,
}

/// Runs the controllers until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    spiffe::validate_trust_domain(&args.trust_domain).map_err(RunError::TrustDomain)?;
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "mandate".into(),
            instance: None,
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder,
        trust_domain: args.trust_domain.clone(),
    });
    info!(trust_domain = %args.trust_domain, "mandate operator starting");

    let identities: Api<AgentIdentity> = match &args.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    Controller::new(identities, watcher::Config::default())
        .shutdown_on_signal()
        .run(identity::reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
    info!("mandate operator stopped");
    Ok(())
}

/// Requeue a failed object soon; kube's controller does not back off on its own, so
/// the delay is short but not zero.
fn error_policy<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(error = %err, reason = err.reason(), "reconcile error, retrying");
    Action::requeue(Duration::from_secs(5))
}
