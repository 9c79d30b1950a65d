//! The end-to-end test library: a fresh namespace per test, waits on conditions with
//! timeouts, the kubelet's part (finishing Pods), and the operator process under test.

#![allow(dead_code)] // not every test binary uses every helper

pub mod envoy;
pub mod kubelet;
pub mod operator;
pub mod tls;
pub mod wait;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use k8s_openapi::{
    api::core::v1::Namespace, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

pub use wait::{TIMEOUT, wait_for};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The kubeconfig the tests use: `KUBECONFIG`, or the local control plane's.
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cluster/kubeconfig"))
}

/// A client for the cluster under test.
pub async fn client() -> Client {
    let path = kubeconfig_path();
    let kc = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("no kubeconfig at {}: run `make cluster-up` first ({e})", path.display()));
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(config).expect("client builds")
}

/// A namespace that exists for one test. Deleted on `cleanup`; a failed test leaves it
/// behind for inspection (the control plane is torn down after the run anyway).
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestNamespace {
    /// Creates `e2e-<prefix>-<pid>-<n>`; labelled so leftovers are easy to find.
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!(
            "e2e-{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "mandate.dev/e2e": "true" } }
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace created");
        TestNamespace {
            name,
            client: client.clone(),
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace, and takes the revocation finalizer off its grants: the
    /// test's operator may be gone already, and nothing else would remove it, which
    /// would leave the namespace (and its AgentPolicies) terminating for good and
    /// loading every later test and benchmark run. The grants are deleted first, so a
    /// still running operator cannot put the finalizer back (the API server refuses
    /// new finalizers on an object being deleted).
    pub async fn cleanup(self) {
        let grants: Api<mandate::api::ToolGrant> = self.api();
        let _ = grants
            .delete_collection(&DeleteParams::default(), &Default::default())
            .await;
        let names: Vec<String> = match grants.list(&Default::default()).await {
            Ok(list) => list.items.iter().map(kube::ResourceExt::name_any).collect(),
            Err(_) => vec![],
        };
        let unfinalize = kube::api::Patch::Merge(serde_json::json!({ "metadata": { "finalizers": null } }));
        use futures::StreamExt;
        futures::stream::iter(names)
            .for_each_concurrent(16, |name| {
                let (grants, patch) = (grants.clone(), &unfinalize);
                async move {
                    let _ = grants.patch(&name, &Default::default(), patch).await;
                }
            })
            .await;
        // The same for the revocation record (when the test kept its CA here): a record's
        // finalizer holds it until its certificate expires, and no operator is left to
        // let it go.
        let records: Api<mandate::api::CertificateRecord> = self.api();
        let names: Vec<String> = match records
            .list_metadata(&kube::api::ListParams::default().labels("mandate.dev/grant-uid"))
            .await
        {
            Ok(list) => list.items.iter().map(kube::ResourceExt::name_any).collect(),
            Err(_) => vec![],
        };
        futures::stream::iter(names)
            .for_each_concurrent(16, |name| {
                let (records, patch) = (records.clone(), &unfinalize);
                async move {
                    let _ = records.patch(&name, &Default::default(), patch).await;
                }
            })
            .await;
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await;
    }
}

/// Applies the committed CRDs from `crds/` (server-side) and waits until each is Established.
pub async fn install_crds(client: &Client) -> Vec<CustomResourceDefinition> {
    let text =
        std::fs::read_to_string(repo_root().join("crds/mandate.dev.yaml")).expect("crds/mandate.dev.yaml readable");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut out = vec![];
    for doc in text
        .split("\n---\n")
        .map(|d| d.trim_start_matches("---\n"))
        .filter(|d| !d.trim().is_empty())
    {
        let crd: CustomResourceDefinition = serde_yaml_ng::from_str(doc).expect("CRD document parses");
        let name = crd.name_any();
        api.patch(&name, &PatchParams::apply("mandate-e2e").force(), &Patch::Apply(&crd))
            .await
            .expect("CRD applied");
        let established = wait_for(&api, &name, "Established", |c: &CustomResourceDefinition| {
            c.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
        })
        .await;
        out.push(established);
    }
    out
}

/// Creates an object from raw JSON, bypassing the Rust types, to send what a careless
/// or hostile user might: strings that would not even parse into our types.
pub async fn create_raw<K>(ns: &TestNamespace, body: serde_json::Value) -> Result<kube::api::DynamicObject, kube::Error>
where
    K: kube::Resource<DynamicType = ()>,
{
    let ar = kube::api::ApiResource::erase::<K>(&());
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &ar);
    let obj: kube::api::DynamicObject = serde_json::from_value(body).expect("raw object is JSON of an object");
    api.create(&PostParams::default(), &obj).await
}

/// Creates AgentPolicy `<namespace>-<name>` selecting only `ns`, owned by the
/// Namespace so it goes when the namespace does (AgentPolicies are cluster-scoped, and
/// tests running in parallel must never see each other's policies).
pub async fn agent_policy(ns: &TestNamespace, name: &str, mode: &str, text: &str) -> mandate::api::AgentPolicy {
    let namespace = Api::<Namespace>::all(ns.client.clone()).get(&ns.name).await.unwrap();
    let policy: mandate::api::AgentPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "mandate.dev/v1alpha1", "kind": "AgentPolicy",
        "metadata": {
            "name": format!("{}-{name}", ns.name),
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Namespace", "name": ns.name, "uid": namespace.uid().unwrap() }],
        },
        "spec": {
            "mode": mode,
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": ns.name } },
            "policies": text,
        },
    }))
    .unwrap();
    Api::<mandate::api::AgentPolicy>::all(ns.client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .expect("AgentPolicy created")
}

/// Permits every issuance in `ns`: for tests about certificates, not policy.
pub const PERMIT_ALL: &str = r#"@id("permit-all")
permit (principal, action == Mandate::Action::"issue", resource);"#;

/// A token of ServiceAccount `name` in `sas`'s namespace (created if needed) for
/// Mandate's decision API audience, valid for an hour.
pub async fn service_account_token(sas: &Api<k8s_openapi::api::core::v1::ServiceAccount>, name: &str) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    let _ = sas.create(&kube::api::PostParams::default(), &sa).await;
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["mandate.dev".into()]),
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let got: TokenRequest = sas
        .create_subresource("token", name, &kube::api::PostParams::default(), &req)
        .await
        .expect("a token");
    got.status.and_then(|s| s.token).expect("a token in the status")
}

/// A client acting as `user` (impersonated by the admin), in `system:masters` so RBAC
/// does not get in the way: what the tests look at is who Mandate records.
pub async fn client_as(user: &str) -> Client {
    let path = kubeconfig_path();
    let kc = Kubeconfig::read_from(&path).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(vec!["system:masters".to_string()]);
    Client::try_from(config).expect("client builds")
}
