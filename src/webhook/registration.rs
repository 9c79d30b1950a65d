//! What routes ToolGrant and ToolGrantApproval writes through Mandate's admission
//! checks, applied with server-side apply:
//! - a MutatingWebhookConfiguration calling this operator, which records the creator;
//! - a ValidatingAdmissionPolicy and its binding, which the API server evaluates
//!   itself (CEL, no call out) after every mutating webhook: the recorded creator is
//!   exactly the authenticated user, and never changes.
//!
//! The validating pass used to be a second webhook. As a policy it costs the API
//! server a CEL evaluation instead of an HTTPS round trip with the whole object per
//! write, and it keeps holding while the operator is down.

use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::{
            MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
            ValidatingWebhookConfiguration,
        },
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
    /// Name of the webhook configuration, the ValidatingAdmissionPolicy and its binding.
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

/// What both the webhook and the admission policy see: writes of grants and approvals.
fn admitted_resources() -> Value {
    json!([{
        "apiGroups": ["mandate.dev"],
        "apiVersions": ["v1alpha1"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["toolgrants", "toolgrantapprovals"],
        "scope": "Namespaced",
    }])
}

/// Of those, only creations and spec changes (see `webhook`).
fn creation_or_spec_change() -> Value {
    json!([{
        "name": "creation-or-spec-change",
        "expression": "request.operation == 'CREATE' || object.spec != oldObject.spec",
    }])
}

/// Only requests in namespace `ns` (an operator scoped with `--watch-namespace`).
fn namespace_selector(ns: &str) -> Value {
    json!({ "matchLabels": { "kubernetes.io/metadata.name": ns } })
}

fn webhook(reg: &Registration, name: &str, path: &str, ca_bundle: &str) -> Value {
    let mut hook = json!({
        "name": name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        // Fail closed: no grant is admitted without its requester recorded.
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "timeoutSeconds": 10,
        "clientConfig": client_config(&reg.target, path, ca_bundle),
        "rules": admitted_resources(),
    });
    // Only creations and spec changes are Mandate's business. Leaving metadata-only
    // updates out (finalizers, labels) means a grant's finalizer can still be removed
    // by hand when the operator is gone, instead of a fail-closed webhook with no
    // backend holding every grant, and with them their namespace, forever.
    hook["matchConditions"] = creation_or_spec_change();
    hook["reinvocationPolicy"] = json!("Never");
    if let Some(ns) = &reg.namespace {
        hook["namespaceSelector"] = namespace_selector(ns);
    }
    hook
}

/// The recorded creator, per kind: a CEL guard and the field.
const RECORDED: [(&str, &str); 2] = [("ToolGrant", "requester"), ("ToolGrantApproval", "approver")];

/// CEL: `field` of `obj.spec` equals the authenticated user, with the same defaults
/// for absent parts (`uid` and `groups`) that Mandate records them with.
fn recorded_is_authenticated_user(field: &str) -> String {
    let f = format!("object.spec.{field}");
    format!(
        "has({f}) && {f}.username == request.userInfo.username \
         && (has({f}.uid) ? {f}.uid : '') == (has(request.userInfo.uid) ? request.userInfo.uid : '') \
         && (has({f}.groups) ? {f}.groups : []) == (has(request.userInfo.groups) ? request.userInfo.groups : [])"
    )
}

/// The ValidatingAdmissionPolicy: the checks the validating webhook made, in CEL.
fn admission_policy(reg: &Registration, metadata: &Value) -> Value {
    let mut validations = Vec::new();
    for (kind, field) in RECORDED {
        validations.push(json!({
            "expression": format!(
                "request.operation != 'CREATE' || request.kind.kind != '{kind}' || ({})",
                recorded_is_authenticated_user(field)
            ),
            "messageExpression": format!(
                "has(object.spec.{field}) \
                 ? 'spec.{field} does not match the authenticated user (was it changed by another admission webhook?)' \
                 : 'spec.{field} was not recorded: is Mandate\\'s mutating webhook configured?'"
            ),
            "reason": "Forbidden",
        }));
        validations.push(json!({
            "expression": format!(
                "request.operation != 'UPDATE' || request.kind.kind != '{kind}' \
                 || (has(object.spec.{field}) == has(oldObject.spec.{field}) \
                     && (!has(object.spec.{field}) || object.spec.{field} == oldObject.spec.{field}))"
            ),
            "message": format!("spec.{field} is recorded by Mandate at creation and cannot be set or changed"),
            "reason": "Forbidden",
        }));
    }
    let mut constraints = json!({
        "resourceRules": admitted_resources(),
        "matchPolicy": "Equivalent",
    });
    if let Some(ns) = &reg.namespace {
        constraints["namespaceSelector"] = namespace_selector(ns);
    }
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": metadata,
        "spec": {
            // Fail closed: a policy that cannot be evaluated rejects the write.
            "failurePolicy": "Fail",
            "matchConstraints": constraints,
            // The same scope as the mutating webhook: creations and spec changes.
            "matchConditions": creation_or_spec_change(),
            "validations": validations,
        },
    })
}

fn admission_policy_binding(reg: &Registration, metadata: &Value) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": metadata,
        "spec": {
            "policyName": reg.name,
            "validationActions": ["Deny"],
        },
    })
}

/// Applies the webhook configuration with the current CA bundle, and the
/// ValidatingAdmissionPolicy with its binding.
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
        "webhooks": [webhook(reg, "record-requester.mandate.dev", "/mutate", ca_bundle)],
    });
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(&reg.name, &pp, &Patch::Apply(&mutating))
        .await?;
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .patch(&reg.name, &pp, &Patch::Apply(&admission_policy(reg, &metadata)))
        .await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .patch(&reg.name, &pp, &Patch::Apply(&admission_policy_binding(reg, &metadata)))
        .await?;
    // Earlier versions validated through a second webhook; the policy replaces it.
    let old = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    if let Some(cfg) = old.get_opt(&reg.name).await?
        && cfg.labels().get("app.kubernetes.io/managed-by").map(String::as_str) == Some("mandate")
    {
        match old.delete(&reg.name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
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
        let hook = webhook(&reg, "n", "/mutate", "PEM");
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
        let hook = webhook(&svc, "n", "/mutate", "PEM");
        assert_eq!(hook["clientConfig"]["service"]["path"], "/mutate");
        assert!(hook.get("namespaceSelector").is_none());
    }

    #[test]
    fn the_admission_policy_fails_closed_and_checks_both_kinds_on_create_and_update() {
        let reg = Registration {
            name: "mandate-x".into(),
            target: Target::Url("https://127.0.0.1:9443".into()),
            namespace: Some("team-a".into()),
        };
        let meta = json!({ "name": "mandate-x" });
        let policy = admission_policy(&reg, &meta);
        assert_eq!(policy["spec"]["failurePolicy"], "Fail");
        assert_eq!(
            policy["spec"]["matchConstraints"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "team-a"
        );
        let validations = policy["spec"]["validations"].as_array().unwrap();
        assert_eq!(validations.len(), 4);
        for (kind, field) in RECORDED {
            let checks: Vec<&str> = validations
                .iter()
                .filter_map(|v| v["expression"].as_str())
                .filter(|e| e.contains(&format!("'{kind}'")))
                .collect();
            assert_eq!(checks.len(), 2, "{kind}");
            assert!(
                checks.iter().all(|e| e.contains(&format!("object.spec.{field}"))),
                "{checks:?}"
            );
        }
        let binding = admission_policy_binding(&reg, &meta);
        assert_eq!(binding["spec"]["policyName"], "mandate-x");
        assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    }
}
