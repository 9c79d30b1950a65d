//! The controllers: the only part of Mandate that writes to the Kubernetes API. They
//! are wired together (with the watches they read) in `runtime`.
//!
//! Each reconcile is fetch, decide (pure functions in `decide`, with `now` passed in),
//! apply, then status.

pub(crate) mod backoff;
pub mod ca;
pub(crate) mod decision;
pub(crate) mod grant;
pub(crate) mod identity;
pub mod ledger;
pub mod policy;
pub(crate) mod queue;
pub(crate) mod recorder;
pub(crate) mod sweeper;
pub(crate) mod task_watch;
pub(crate) mod trail;
pub(crate) mod written;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api, Client, Resource,
    api::ApiResource,
    runtime::{controller::Action, reflector::Store, watcher},
};
use tokio::sync::watch;
use tracing::warn;

use crate::{
    api::{AgentIdentity, ToolGrantApproval, names::MANAGER},
    decide::task::FinishedConditions,
    spiffe,
};

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
    #[error("failed to read ToolGrant {name}: {source}")]
    FetchGrant {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to read AgentIdentity {name}: {source}")]
    FetchIdentity {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to read task {name}: {source}")]
    FetchTask {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to discover task kind {kind} (is its CRD installed?): {source}")]
    DiscoverTaskKind {
        kind: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to read Secret {name}: {source}")]
    FetchSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to write Secret {name}: {source}")]
    WriteSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to delete Secret {name}: {source}")]
    DeleteSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to update finalizers of {name}: {source}")]
    WriteFinalizer {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to record the revocation: {0}")]
    RecordRevocation(#[source] ledger::LedgerError),
    #[error("failed to record the certificate before writing it: {0}")]
    RecordCertificate(#[source] ledger::LedgerError),
    #[error("failed to issue the certificate: {0}")]
    Issue(#[source] crate::pki::PkiError),
    #[error("failed to build the SPIFFE ID: {0}")]
    SpiffeId(#[source] spiffe::SpiffeIdError),
    #[error("failed to publish the trust bundle in {namespace}: {source}")]
    WriteTrustBundle {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("the reconcile did not finish within {after:?}; it was abandoned and will be retried")]
    Deadline { after: Duration },
    #[error("failed to list ToolGrants in {namespace}: {source}")]
    ListGrants {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// CamelCase reason for conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::WriteStatus { .. } => "WriteStatusFailed",
            Error::MissingNamespace => "MissingNamespace",
            Error::FetchGrant { .. } => "FetchGrantFailed",
            Error::FetchIdentity { .. } => "FetchIdentityFailed",
            Error::FetchTask { .. } => "FetchTaskFailed",
            Error::DiscoverTaskKind { .. } => "UnknownTaskKind",
            Error::FetchSecret { .. } => "FetchSecretFailed",
            Error::WriteSecret { .. } => "WriteSecretFailed",
            Error::DeleteSecret { .. } => "DeleteSecretFailed",
            Error::WriteFinalizer { .. } => "WriteFinalizerFailed",
            Error::RecordRevocation(e) | Error::RecordCertificate(e) => e.reason(),
            Error::Issue(_) => "IssueFailed",
            Error::SpiffeId(_) => "InvalidSpiffeID",
            Error::WriteTrustBundle { .. } => "WriteTrustBundleFailed",
            Error::ListGrants { .. } => "ListGrantsFailed",
            Error::Deadline { .. } => "ReconcileTimedOut",
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: recorder::Recorder,
    pub trust_domain: String,
    pub ca: watch::Receiver<ca::CaState>,
    pub ledger: ledger::Ledger,
    /// Whether the revocation record is in memory (see `state::ready`).
    pub records_ready: crate::state::ready::Ready,
    pub operator_max_ttl: Duration,
    pub finished_conditions: FinishedConditions,
    /// API resources of task kinds found by discovery, by `apiVersion/kind`.
    pub task_kinds: Mutex<HashMap<String, ApiResource>>,
    /// Watches of task kinds other than Jobs and Pods, started as grants name them.
    pub task_watches: Arc<task_watch::TaskWatches>,
    /// Caches fed by the controllers' watches. A miss is confirmed with a GET before
    /// anything is revoked, so a cache that lags can delay but never wrongly revoke.
    pub grants: crate::state::grants::GrantCache,
    pub identities: Store<AgentIdentity>,
    pub jobs: crate::state::tasks::TaskStore,
    pub pods: crate::state::tasks::TaskStore,
    /// Grant Secrets (labelled `mandate.dev/grant`), without their private keys.
    pub secrets: crate::state::cached::SecretStore,
    /// Whether `secrets` holds its initial list (see `ready` for why not the store's own).
    pub secrets_ready: crate::state::ready::Ready,
    /// The policy store (`None` until the AgentPolicies are first loaded).
    pub policies: watch::Receiver<Option<Arc<crate::policy::PolicyStore>>>,
    pub policy_compiler: policy::CompileCache,
    pub audit: policy::AuditLog,
    /// Names of AgentPolicies whose audit summary changed, to refresh their status.
    pub audit_changed: tokio::sync::mpsc::UnboundedSender<String>,
    pub approvals: Store<ToolGrantApproval>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The audit trail: certificate lifecycle and grant decisions go here.
    pub trail: crate::audit::AuditLog,
    /// Consecutive reconcile failures per object, for backoff and Event de-duplication.
    pub errors: backoff::ErrorBackoff,
    /// The resourceVersions of our own latest writes, per grant UID. A cached grant or
    /// Secret is used only when it is that version; a grant cached at an earlier
    /// version of ours waits for the event of our write; anything else is read fresh.
    /// The Secret watch also uses it to drop the events of our own Secret writes.
    pub written: Arc<written::Written>,
    /// The trust bundle last published per namespace, so it is written only on change.
    pub published_bundles: Mutex<HashMap<String, String>>,
}

pub(crate) fn api_for<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Passes on objects whose spec changed (a new generation) or that were deleted, and
/// drops status-only updates. An identity's status changes with every grant issued for
/// it; re-checking all its grants on each of those would cost O(grants²).
pub(crate) fn spec_changes<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + Send + 'static,
{
    let mut seen: HashMap<String, Option<i64>> = HashMap::new();
    events.filter_map(move |ev| {
        let out = match ev {
            Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                let uid = o.meta().uid.clone().unwrap_or_default();
                let generation = o.meta().generation;
                (seen.insert(uid, generation) != Some(generation)).then_some(Ok(o))
            }
            Ok(watcher::Event::Delete(o)) => {
                seen.remove(&o.meta().uid.clone().unwrap_or_default());
                Some(Ok(o))
            }
            Ok(watcher::Event::Init) | Ok(watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(out)
    })
}

/// How long one reconcile may run. Every request it makes has its own timeout, but a
/// reconcile that waits forever (on a lost wake-up, say) would hold its object's slot
/// in the controller, and every later change to that object would wait behind it.
/// Abandoning a reconcile is as safe as a crash at the same point (see `grant`).
const RECONCILE_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `reconcile`, or fails with [`Error::Deadline`] once it has taken too long.
pub(crate) async fn within_deadline<T>(
    reconcile: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    within(RECONCILE_DEADLINE, reconcile).await
}

async fn within<T>(
    after: Duration,
    reconcile: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(after, reconcile)
        .await
        .unwrap_or(Err(Error::Deadline { after }))
}

/// Delete options that delete exactly `obj`, not a later object of the same name.
pub(crate) fn delete_exactly<K: Resource>(obj: &K) -> kube::api::DeleteParams {
    kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: obj.meta().uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    }
}

/// Server-side applies `status` to the status subresource of `name` under Mandate's
/// status field manager; returns the object as written.
pub(crate) async fn apply_status<K>(
    api: &Api<K>,
    kind: &'static str,
    name: &str,
    status: &impl serde::Serialize,
) -> Result<K, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({ "apiVersion": crate::api::api_version(), "kind": kind, "status": status });
    api.patch_status(
        name,
        &kube::api::PatchParams::apply(&format!("{MANAGER}/status")).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::WriteStatus {
        kind,
        namespace: api.namespace().unwrap_or_default().to_string(),
        name: name.to_string(),
        source,
    })
}

/// Requeues a failed object after its own backoff (see `backoff`), with a Warning
/// Event when the reason is new for it.
pub(crate) fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(retry_after(obj.as_ref(), err, &ctx))
}

/// How long until a failed object is tried again (its own backoff, see `backoff`);
/// posts a Warning Event when the reason is new for it.
pub(crate) fn retry_after<K: Resource<DynamicType = ()>>(obj: &K, err: &Error, ctx: &Arc<Context>) -> Duration {
    let m = obj.meta();
    retry_after_for(
        m.uid.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default(),
        || obj.object_ref(&()),
        err,
        ctx,
    )
}

/// `retry_after` for an object known by its UID, name and reference.
pub(crate) fn retry_after_for(
    uid: &str,
    name: &str,
    reference: impl FnOnce() -> k8s_openapi::api::core::v1::ObjectReference,
    err: &Error,
    ctx: &Arc<Context>,
) -> Duration {
    let retry = ctx.errors.failed(uid, err.reason());
    ctx.metrics.reconcile_error(err.reason());
    warn!(error = %err, reason = err.reason(), object = %name, retry_in = ?retry.after, "reconcile error, retrying");
    if retry.announce {
        let ev = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: err.reason().into(),
            note: Some(backoff::truncate_note(err.to_string())),
            action: "Reconcile".into(),
            secondary: None,
        };
        let reference = reference();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = ctx.recorder.publish(&ev, &reference).await;
        });
    }
    retry.after
}

/// Clears an object's failure count once a reconcile of it succeeds.
pub(crate) fn succeeded<K: Resource, T>(ctx: &Context, obj: &K, res: &Result<T, Error>) {
    if res.is_ok() {
        ctx.errors.succeeded(obj.meta().uid.as_deref().unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reconcile_that_never_finishes_is_abandoned_with_a_reason() {
        let err = within(Duration::from_millis(10), std::future::pending::<Result<(), Error>>())
            .await
            .expect_err("a reconcile that never finishes must not hold its object forever");
        assert_eq!(err.reason(), "ReconcileTimedOut");
        assert!(err.to_string().contains("retried"), "{err}");
        let done = within(Duration::from_secs(60), async { Ok(Action::await_change()) }).await;
        assert!(done.is_ok(), "a finished reconcile keeps its result");
    }
}
