//! Tests that need an operator watching every namespace. `make e2e` runs them one at a
//! time, after the rest (`--skip cluster_wide::`), because such an operator would also
//! reconcile every other test's grants.

use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
    runtime::watcher,
};
use mandate::api::{CertificateRecord, GrantPhase, ToolGrant};
use serde_json::json;

use crate::{
    grants::{Fixture, github},
    support::{
        TestNamespace, client, install_crds,
        kubelet::{self, Outcome},
        operator::Operator,
        wait::wait_deleted,
        wait_for,
    },
};

/// Revoked records in the order the API server committed their revocation, as one
/// watch delivers them: (serial, grant namespace).
#[derive(Default)]
struct RevocationOrder {
    seen: Mutex<Vec<(String, String)>>,
    changed: tokio::sync::Notify,
}

impl RevocationOrder {
    fn note(&self, r: &CertificateRecord) {
        if r.spec.revocation.is_none() {
            return;
        }
        let mut seen = self.seen.lock().unwrap();
        if !seen.iter().any(|(s, _)| *s == r.name_any()) {
            seen.push((r.name_any(), r.spec.grant.namespace.clone()));
        }
        self.changed.notify_waiters();
    }

    /// Revocations seen so far.
    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until `serial` is revoked; returns the namespaces of those revoked before.
    async fn before(&self, serial: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + crate::support::TIMEOUT;
        loop {
            let changed = self.changed.notified();
            {
                let seen = self.seen.lock().unwrap();
                if let Some(at) = seen.iter().position(|(s, _)| s == serial) {
                    return seen[..at].iter().map(|(_, ns)| ns.clone()).collect();
                }
            }
            assert!(
                tokio::time::timeout_at(deadline, changed).await.is_ok(),
                "{serial} was never revoked"
            );
        }
    }
}

/// Deletes the admission configurations of every cluster-wide operator these tests
/// started (named `mandate-<CA namespace>`, CA namespaces `e2e-fair-ca-*`): unlike a
/// namespaced operator's, they select every namespace, and would outlive the test.
async fn remove_cluster_wide_admission(c: &kube::Client) {
    for (kind, plural) in [
        ("MutatingAdmissionPolicy", "mutatingadmissionpolicies"),
        ("MutatingAdmissionPolicyBinding", "mutatingadmissionpolicybindings"),
        ("ValidatingAdmissionPolicy", "validatingadmissionpolicies"),
        ("ValidatingAdmissionPolicyBinding", "validatingadmissionpolicybindings"),
        ("MutatingWebhookConfiguration", "mutatingwebhookconfigurations"),
        ("ValidatingWebhookConfiguration", "validatingwebhookconfigurations"),
    ] {
        let ar = kube::api::ApiResource {
            group: "admissionregistration.k8s.io".into(),
            version: "v1".into(),
            api_version: "admissionregistration.k8s.io/v1".into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        let api: Api<kube::api::DynamicObject> = Api::all_with(c.clone(), &ar);
        let Ok(list) = api.list_metadata(&Default::default()).await else {
            continue;
        };
        for o in list.items {
            if o.name_any().starts_with("mandate-e2e-fair-ca-") {
                let _ = api.delete(&o.name_any(), &DeleteParams::default()).await;
            }
        }
    }
}

#[tokio::test]
async fn threat_39_one_namespaces_mass_revocation_does_not_hold_up_anothers() {
    const FLOOD: usize = 150;
    let c = client().await;
    install_crds(&c).await;
    remove_cluster_wide_admission(&c).await;
    let ca = TestNamespace::new(&c, "fair-ca").await;
    let flood = TestNamespace::new(&c, "fair-flood").await;
    let quiet = TestNamespace::new(&c, "fair-quiet").await;
    for ns in [&flood, &quiet] {
        crate::support::agent_policy(ns, "permit-all", "Enforce", crate::support::PERMIT_ALL).await;
    }
    // Few permits, so the flood alone could fill them for a long time.
    let op = Operator::start_cluster_wide(
        &ca.name,
        &flood.name,
        &["--trust-domain=e2e.example", "--grant-concurrency=4"],
    )
    .await;
    let f = Fixture::with_operator(flood, op);
    let q_grants: Api<ToolGrant> = quiet.api();
    let q_pods: Api<Pod> = quiet.api();
    f.identity("triage").await;
    Api::<mandate::api::AgentIdentity>::namespaced(c.clone(), &quiet.name)
        .create(&PostParams::default(), &crate::identity::identity("triage"))
        .await
        .unwrap();
    for (pods, name) in [(&f.pods, "work"), (&q_pods, "solo")] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": { "restartPolicy": "Never", "containers": [{ "name": "a", "image": "example.invalid/a" }] },
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        kubelet::start_pod(pods, name).await;
    }
    for i in 0..FLOOD {
        f.grant(&format!("g{i:03}"), "triage", ("v1", "Pod", "work"), github(), None)
            .await;
    }
    let q: ToolGrant = serde_json::from_value(json!({
        "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant", "metadata": { "name": "solo" },
        "spec": { "identityRef": { "name": "triage" }, "taskRef": { "apiVersion": "v1", "kind": "Pod", "name": "solo" },
                  "tools": github(), "purpose": "one small task" },
    }))
    .unwrap();
    q_grants.create(&PostParams::default(), &q).await.unwrap();
    for i in 0..FLOOD {
        f.wait_phase(&format!("g{i:03}"), GrantPhase::Issued).await;
    }
    let quiet_serial = wait_for(&q_grants, "solo", "Issued", |g: &ToolGrant| {
        g.status.as_ref().and_then(|s| s.phase) == Some(GrantPhase::Issued)
    })
    .await
    .status
    .and_then(|s| s.certificate)
    .unwrap()
    .serial_number;

    // Every revocation, in the order the API server commits it.
    let order = Arc::new(RevocationOrder::default());
    let records: Api<CertificateRecord> = ca.api();
    let watch = {
        let order = order.clone();
        tokio::spawn(async move {
            let mut events = watcher(records, watcher::Config::default()).boxed();
            while let Ok(Some(ev)) = events.try_next().await {
                if let watcher::Event::Apply(r) | watcher::Event::InitApply(r) = ev {
                    order.note(&r);
                }
            }
        })
    };

    // The flood: every grant of one namespace deleted at once. Then one task ends in
    // the other namespace.
    f.grants
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .expect("the flood's grants deleted");
    let done_at_trigger = order.len();
    kubelet::finish_pod(&q_pods, "solo", Outcome::Succeeded).await;

    let before = order.before(&quiet_serial).await;
    let waiting = FLOOD - done_at_trigger;
    let flood_between = before[done_at_trigger.min(before.len())..]
        .iter()
        .filter(|n| **n == f.ns.name)
        .count();
    eprintln!("{flood_between} of the flood's {waiting} waiting revocations went before the quiet namespace's one");
    assert!(
        waiting >= 30,
        "only {waiting} of the flood's revocations were still waiting: raise FLOOD"
    );
    // First scheduled, first run, the quiet namespace's revocation would come after all
    // of the flood's still waiting; taking turns, it waits behind about one reconcile
    // per permit.
    assert!(
        flood_between < waiting / 2,
        "{flood_between} of the flood's {waiting} waiting revocations went before the quiet namespace's one"
    );
    let q_secrets: Api<k8s_openapi::api::core::v1::Secret> = quiet.api();
    wait_deleted(&q_secrets, "solo", "withdrawn").await;
    watch.abort();
    drop(f.op);
    remove_cluster_wide_admission(&c).await;
    f.ns.cleanup().await;
    quiet.cleanup().await;
    ca.cleanup().await;
}
