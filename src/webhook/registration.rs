//! The Mutating- and ValidatingWebhookConfiguration that route ToolGrant and
//! ToolGrantApproval writes to this operator, applied with server-side apply.

use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
        core::v1::Namespace,
    },
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::controller::MANAGER;

/// Where the API server reaches the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A URL, for example `https://127.0.0.1:9443` against a local control plane.
    Url(String),
    /// A Service in the cluster.
    Service { namespace: String, name: String, port: u16 },
}

/// What to register.
#[derive(Clone, Debug)]
pub struct Registration {
    /// Name of both webhook configurations.
    pub name: String,
    pub target: Target,
    /// Only requests in this namespace (an operator scoped with `--watch-namespace`);
    /// the configurations are then owned by that Namespace and go with it.
    pub namespace: Option<String>,
}

fn client_config(target: &Target, path: &str, ca_bundle: &str) -> Value {
    let ca = ByteString(ca_bundle.as_bytes().to_vec());
    match target {
        Target::Url(url) => json!({ "url": format!("{}{path}", url.trim_end_matches('/')), "caBundle": ca }),
        Target::Service { namespace, name, port } => json!({
            "service": { "namespace": namespace, "name": name, "port": port, "path": path },
            "caBundle": ca,
        }),
    }
}

fn webhook(reg: &Registration, name: &str, path: &str, ca_bundle: &str, mutating: bool) -> Value {
    let mut hook = json!({
        "name": name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        // Fail closed: no grant is admitted without its requester recorded.
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "timeoutSeconds": 10,
        "clientConfig": client_config(&reg.target, path, ca_bundle),
        "rules": [{
            "apiGroups": ["mandate.dev"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["toolgrants", "toolgrantapprovals"],
            "scope": "Namespaced",
        }],
    });
    // Only creations and spec changes are Mandate's business. Leaving metadata-only
    // updates out (finalizers, labels) means a grant's finalizer can still be removed
    // by hand when the operator is gone, instead of a fail-closed webhook with no
    // backend holding every grant, and with them their namespace, forever.
    hook["matchConditions"] = json!([{
        "name": "creation-or-spec-change",
        "expression": "request.operation == 'CREATE' || object.spec != oldObject.spec",
    }]);
    if mutating {
        hook["reinvocationPolicy"] = json!("Never");
    }
    if let Some(ns) = &reg.namespace {
        hook["namespaceSelector"] = json!({ "matchLabels": { "kubernetes.io/metadata.name": ns } });
    }
    hook
}

/// Applies both configurations with the current CA bundle.
pub async fn apply(client: &Client, reg: &Registration, ca_bundle: &str) -> Result<(), kube::Error> {
    let mut metadata = json!({
        "name": reg.name,
        "labels": { "app.kubernetes.io/managed-by": "mandate" },
    });
    if let Some(ns) = &reg.namespace {
        let namespace = Api::<Namespace>::all(client.clone()).get(ns).await?;
        metadata["ownerReferences"] = json!([{
            "apiVersion": "v1", "kind": "Namespace", "name": ns, "uid": namespace.uid().unwrap_or_default(),
        }]);
    }
    let pp = PatchParams::apply(&format!("{MANAGER}/webhook")).force();
    let mutating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": [webhook(reg, "record-requester.mandate.dev", "/mutate", ca_bundle, true)],
    });
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(&reg.name, &pp, &Patch::Apply(&mutating))
        .await?;
    let validating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": [webhook(reg, "check-requester.mandate.dev", "/validate", ca_bundle, false)],
    });
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(&reg.name, &pp, &Patch::Apply(&validating))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_registration_fails_closed_and_selects_its_namespace() {
        let reg = Registration {
            name: "mandate-x".into(),
            target: Target::Url("https://127.0.0.1:9443/".into()),
            namespace: Some("team-a".into()),
        };
        let hook = webhook(&reg, "n", "/mutate", "PEM", true);
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(hook["clientConfig"]["url"], "https://127.0.0.1:9443/mutate");
        assert_eq!(
            hook["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "team-a"
        );
        let svc = Registration {
            target: Target::Service {
                namespace: "mandate-system".into(),
                name: "mandate-webhook".into(),
                port: 443,
            },
            namespace: None,
            ..reg
        };
        let hook = webhook(&svc, "n", "/validate", "PEM", false);
        assert_eq!(hook["clientConfig"]["service"]["path"], "/validate");
        assert!(hook.get("namespaceSelector").is_none());
        assert!(hook.get("reinvocationPolicy").is_none());
    }
}
