//! The install manifest on the real control plane: every object in
//! `manifests/install.yaml` is accepted by the API server, and the RBAC it grants the
//! operator's ServiceAccount is enough for a grant's whole life. The operator runs
//! here as that ServiceAccount (impersonated: there is no kubelet to run its Pod).

use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams},
    discovery,
};
use mandate::api::GrantPhase;
use serde::Deserialize as _;

use crate::{
    grants::{Fixture, github},
    support::{
        PERMIT_ALL, TestNamespace, agent_policy, client, install_crds, kubeconfig_path,
        kubelet::{self, Outcome},
        operator::Operator,
        repo_root,
    },
};

/// The namespace and ServiceAccount the manifest installs the operator as.
const SERVICE_ACCOUNT: (&str, &str) = ("mandate-system", "mandate");

/// Server-side applies every document of `manifests/install.yaml`.
async fn apply_install_manifest(client: &Client) -> Vec<DynamicObject> {
    let text = std::fs::read_to_string(repo_root().join("manifests/install.yaml")).expect("manifest readable");
    let mut applied = vec![];
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = serde_yaml_ng::Value::deserialize(doc).expect("YAML document");
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_yaml_ng::from_value(value).expect("a Kubernetes object");
        let types = obj.types.clone().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(&types).expect("valid apiVersion");
        let (ar, caps) = discovery::pinned_kind(client, &gvk).await.expect("kind served");
        let api: Api<DynamicObject> = match (caps.scope, obj.namespace()) {
            (discovery::Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), &ns, &ar),
            (discovery::Scope::Namespaced, None) => panic!("{} {} has no namespace", types.kind, obj.name_any()),
            (discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
        };
        let out = api
            .patch(
                &obj.name_any(),
                &PatchParams::apply("mandate-e2e").force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap_or_else(|e| panic!("{} {} rejected: {e}", types.kind, obj.name_any()));
        applied.push(out);
    }
    applied
}

/// The local kubeconfig, acting as the manifest's ServiceAccount; written for `test`.
fn impersonating_kubeconfig(test: &str) -> std::path::PathBuf {
    let (ns, sa) = SERVICE_ACCOUNT;
    let text = std::fs::read_to_string(kubeconfig_path()).expect("kubeconfig readable");
    let mut cfg: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("kubeconfig parses");
    for user in cfg["users"].as_sequence_mut().expect("users") {
        let user = &mut user["user"];
        user["as"] = format!("system:serviceaccount:{ns}:{sa}").into();
        user["as-groups"] = serde_yaml_ng::to_value([
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".to_string(),
        ])
        .unwrap();
    }
    let dir = repo_root().join("target/e2e-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    let path = dir.join(format!("{test}-kubeconfig-as-operator"));
    std::fs::write(&path, serde_yaml_ng::to_string(&cfg).unwrap()).expect("kubeconfig written");
    path
}

#[tokio::test]
async fn the_install_manifest_applies_and_its_rbac_is_enough_to_issue_and_revoke() {
    let admin = client().await;
    install_crds(&admin).await;
    let applied = apply_install_manifest(&admin).await;
    let kinds: Vec<String> = applied
        .iter()
        .filter_map(|o| o.types.as_ref())
        .map(|t| t.kind.clone())
        .collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
        "CustomResourceDefinition",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "the manifest has no {kind}: {kinds:?}");
    }

    let ns = TestNamespace::new(&admin, "install").await;
    agent_policy(&ns, "permit-all", "Enforce", PERMIT_ALL).await;
    // The CA (and with it the revocation record) lives in the test namespace here, not
    // in mandate-system: bind the chart's ledger role there, as such an install would.
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "mandate-ledger" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "mandate-ledger" },
        "subjects": [{ "kind": "ServiceAccount", "name": SERVICE_ACCOUNT.1, "namespace": SERVICE_ACCOUNT.0 }],
    }))
    .unwrap();
    ns.api::<k8s_openapi::api::rbac::v1::RoleBinding>()
        .create(&Default::default(), &binding)
        .await
        .expect("ledger role bound in the CA namespace");
    let kubeconfig = impersonating_kubeconfig(&ns.name);
    let args = [
        format!("--ca-secret-namespace={}", ns.name),
        "--trust-domain=e2e.example".to_string(),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // The operator applies its webhook configuration and admission policy, publishes
    // the trust bundle and CRL, reads tasks, writes Secrets, Events and status: all as
    // the ServiceAccount. Its webhook answering at all proves the first of these.
    let op = Operator::start_as(&ns.name, &refs, kubeconfig).await;
    let f = Fixture::with_operator(ns, op);
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", ("batch/v1", "Job", "work"), github(), Some("10m"))
        .await;
    let serial = f.issued_serial("g").await;
    kubelet::finish_job_pod(&f.pods, "work", Outcome::Succeeded).await;
    f.wait_phase("g", GrantPhase::Revoked).await;
    f.wait_revoked_in_crl(&serial).await;
    assert!(f.secrets.get_opt("g").await.unwrap().is_none(), "Secret left behind");
    assert!(
        !f.op.log_text().contains("forbidden"),
        "the operator was refused something as its ServiceAccount:\n{}",
        f.op.log_text()
    );
    f.ns.cleanup().await;
}
