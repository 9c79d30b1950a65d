//! AgentIdentity: report its SPIFFE ID and whether grants can be issued for it.

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use tracing::info;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{Context, Error};
use crate::{
    api::{
        AgentIdentity, AgentIdentityStatus, GrantPhase,
        names::{MANAGER, TRUST_BUNDLE_CONFIGMAP},
    },
    conditions::{self, Desired},
    pki::CaState,
    spiffe::SpiffeId,
};

/// Decides the identity's status from its spec alone (pure, `now` passed in).
pub fn desired_status(
    identity: &AgentIdentity,
    trust_domain: &str,
    active_grants: i32,
    now: Timestamp,
) -> AgentIdentityStatus {
    let current = identity.status.clone().unwrap_or_default();
    let ns = identity.namespace().unwrap_or_default();
    let generation = identity.metadata.generation;
    let (spiffe_id, ready) = match SpiffeId::for_agent(trust_domain, &ns, &identity.name_any()) {
        Ok(id) if identity.spec.suspended => (
            Some(id.to_string()),
            Desired {
                type_: conditions::READY,
                status: false,
                reason: "Suspended",
                message: "spec.suspended is true: nothing is issued and live certificates are revoked".into(),
            },
        ),
        Ok(id) => (
            Some(id.to_string()),
            Desired {
                type_: conditions::READY,
                status: true,
                reason: "Valid",
                message: format!("grants for {id} can be issued"),
            },
        ),
        Err(e) => (
            None,
            Desired {
                type_: conditions::READY,
                status: false,
                reason: "InvalidSpiffeID",
                message: e.to_string(),
            },
        ),
    };
    AgentIdentityStatus {
        spiffe_id,
        active_grants,
        observed_generation: generation,
        conditions: conditions::merge(&current.conditions, vec![ready], generation, now),
    }
}

pub async fn reconcile(identity: Arc<AgentIdentity>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = identity.namespace().ok_or(Error::MissingNamespace)?;
    let name = identity.name_any();

    // Every namespace with an identity gets the trust bundle, so relying parties there
    // can verify the agents' certificates.
    let ca_state = ctx.ca.borrow().clone();
    if let CaState::Ready(ca) = &ca_state {
        let bundle = ca.bundle_pem();
        let published = ctx.published_bundles.lock().expect("bundle cache").get(&ns) == Some(&bundle);
        if !published {
            let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            let cm = json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": TRUST_BUNDLE_CONFIGMAP, "labels": { "app.kubernetes.io/managed-by": "mandate" } },
                "data": { "ca.crt": bundle },
            });
            cms.patch(
                TRUST_BUNDLE_CONFIGMAP,
                &PatchParams::apply(&format!("{MANAGER}/trust-bundle")).force(),
                &Patch::Apply(&cm),
            )
            .await
            .map_err(|source| Error::WriteTrustBundle {
                namespace: ns.clone(),
                source,
            })?;
            ctx.published_bundles
                .lock()
                .expect("bundle cache")
                .insert(ns.clone(), bundle);
        }
    }

    // Counted from the watch cache: an identity's status is a report, and a count that
    // lags a moment is corrected by the next grant event.
    let active = ctx
        .grants
        .count_where(&ns, |g| g.identity == name && g.phase == Some(GrantPhase::Issued)) as i32;

    let status = desired_status(&identity, &ctx.trust_domain, active, Timestamp::now());
    if identity.status.as_ref() != Some(&status) {
        let api: Api<AgentIdentity> = Api::namespaced(ctx.client.clone(), &ns);
        super::apply_status(&api, "AgentIdentity", &name, &status).await?;
        info!(identity = %name, namespace = %ns, spiffe_id = ?status.spiffe_id, active_grants = active, "identity status updated");
    }
    Ok(Action::requeue(Duration::from_secs(3600)))
}
