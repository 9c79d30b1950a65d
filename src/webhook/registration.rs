//! What routes ToolGrant and ToolGrantApproval writes through Mandate's admission
//! checks, applied with server-side apply:
//! - the mutating pass, which records the creator (and adds a grant's finalizer) on
//!   creation: a MutatingAdmissionPolicy and its binding where the API server serves
//!   them (Kubernetes 1.36 and later), or else a MutatingWebhookConfiguration
//!   calling this operator;
//! - a ValidatingAdmissionPolicy and its binding, which the API server evaluates
//!   after every mutation: the recorded creator is exactly the authenticated user,
//!   and never changes.
//!
//! Both passes used to be webhooks. As policies they cost the API server a CEL
//! evaluation instead of an HTTPS round trip with the whole object per write, and
//! grants can still be created (and are checked) while the operator is down.

use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::{
            MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, MutatingWebhookConfiguration,
            ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
        },
        core::v1::Namespace,
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::{
    api::names::{FINALIZER, MANAGER},
    cli::MutationMode,
};

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
    /// How the mutating pass is made.
    pub mutation: MutationMode,
}

/// The mutating pass in use, once `MutationMode::Auto` is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    Policy,
    Webhook,
}

/// Resolves `Auto` by asking the API server whether it serves
/// MutatingAdmissionPolicies (`admissionregistration.k8s.io/v1`).
pub async fn mutation_in_use(client: &Client, mode: MutationMode) -> Result<Mutation, kube::Error> {
    Ok(match mode {
        MutationMode::Policy => Mutation::Policy,
        MutationMode::Webhook => Mutation::Webhook,
        MutationMode::Auto => {
            let served = client
                .list_api_group_resources(&MutatingAdmissionPolicy::api_version(&()))
                .await?;
            if served
                .resources
                .iter()
                .any(|r| r.name == MutatingAdmissionPolicy::plural(&()))
            {
                Mutation::Policy
            } else {
                Mutation::Webhook
            }
        }
    })
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

/// What the webhook and the admission policies see: writes of grants and approvals.
fn admitted_resources(operations: &[&str]) -> Value {
    json!([{
        "apiGroups": ["mandate.dev"],
        "apiVersions": ["v1alpha1"],
        "operations": operations,
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

/// What an admission policy matches: `operations` on grants and approvals, in the
/// operator's namespace if it is scoped to one.
fn match_constraints(reg: &Registration, operations: &[&str]) -> Value {
    let mut constraints = json!({
        "resourceRules": admitted_resources(operations),
        "matchPolicy": "Equivalent",
    });
    if let Some(ns) = &reg.namespace {
        constraints["namespaceSelector"] = namespace_selector(ns);
    }
    constraints
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
        "rules": admitted_resources(&["CREATE", "UPDATE"]),
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
        "has({f}) && request.userInfo.username != '' && {f}.username == request.userInfo.username \
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
                 : 'spec.{field} was not recorded: is Mandate\\'s mutating admission policy (or webhook) configured?'"
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
    let constraints = match_constraints(reg, &["CREATE", "UPDATE"]);
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

/// CEL: JSON patch operations that record the authenticated user as `field`. Whatever
/// the client wrote there is replaced as a whole (`add` on an existing member replaces
/// it), so no forged record is stored while this policy is loaded, even in the moment
/// after installation before the validating policy is. Parts are added one by one
/// (CEL map literals hold one value type), and `uid` and `groups` only when present,
/// as the webhook records them.
fn record_user(kind: &str, field: &str) -> String {
    let path = format!("/spec/{field}");
    format!(
        "request.kind.kind != '{kind}' ? [] : \
         [JSONPatch{{op: 'add', path: '{path}', value: {{'username': request.userInfo.username}}}}] \
         + (has(request.userInfo.uid) && request.userInfo.uid != '' \
            ? [JSONPatch{{op: 'add', path: '{path}/uid', value: request.userInfo.uid}}] : []) \
         + (has(request.userInfo.groups) && size(request.userInfo.groups) > 0 \
            ? [JSONPatch{{op: 'add', path: '{path}/groups', value: request.userInfo.groups}}] : [])"
    )
}

/// CEL: the JSON patch operation adding the revocation finalizer to a new grant, so it
/// is there before any certificate can exist.
fn add_finalizer() -> String {
    format!(
        "request.kind.kind != 'ToolGrant' ? [] \
         : !has(object.metadata.finalizers) \
           ? [JSONPatch{{op: 'add', path: '/metadata/finalizers', value: ['{FINALIZER}']}}] \
         : '{FINALIZER}' in object.metadata.finalizers ? [] \
         : [JSONPatch{{op: 'add', path: '/metadata/finalizers/-', value: '{FINALIZER}'}}]"
    )
}

/// The MutatingAdmissionPolicy: what the mutating webhook does, in CEL.
fn mutating_policy(reg: &Registration, metadata: &Value) -> Value {
    let mut mutations: Vec<Value> = RECORDED
        .iter()
        .map(|(kind, field)| json!({ "patchType": "JSONPatch", "jsonPatch": { "expression": record_user(kind, field) } }))
        .collect();
    mutations.push(json!({ "patchType": "JSONPatch", "jsonPatch": { "expression": add_finalizer() } }));
    let constraints = match_constraints(reg, &["CREATE"]);
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": metadata,
        "spec": {
            // Fail closed: a grant whose mutation fails is not admitted.
            "failurePolicy": "Fail",
            "matchConstraints": constraints,
            "mutations": mutations,
            // A later mutation that drops the record is caught by the validating policy.
            "reinvocationPolicy": "Never",
        },
    })
}

fn mutating_policy_binding(reg: &Registration, metadata: &Value) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": metadata,
        "spec": { "policyName": reg.name },
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

/// Applies the mutating pass (the admission policy, or the webhook configuration with
/// the current CA bundle) and the ValidatingAdmissionPolicy with its binding, then
/// removes what an earlier version or mode registered under the same name. Returns
/// the mutating pass in use.
pub async fn apply(client: &Client, reg: &Registration, ca_bundle: &str) -> Result<Mutation, kube::Error> {
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
    let mutation = mutation_in_use(client, reg.mutation).await?;
    let pp = PatchParams::apply(&format!("{MANAGER}/webhook")).force();
    // The new mutating pass is in place before the other one goes, so no creation
    // finds neither (which the validating policy would refuse, failing closed).
    match mutation {
        Mutation::Policy => {
            Api::<MutatingAdmissionPolicy>::all(client.clone())
                .patch(&reg.name, &pp, &Patch::Apply(&mutating_policy(reg, &metadata)))
                .await?;
            Api::<MutatingAdmissionPolicyBinding>::all(client.clone())
                .patch(&reg.name, &pp, &Patch::Apply(&mutating_policy_binding(reg, &metadata)))
                .await?;
        }
        Mutation::Webhook => {
            let mutating = json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": metadata,
                "webhooks": [webhook(reg, "record-requester.mandate.dev", "/mutate", ca_bundle)],
            });
            Api::<MutatingWebhookConfiguration>::all(client.clone())
                .patch(&reg.name, &pp, &Patch::Apply(&mutating))
                .await?;
        }
    }
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .patch(&reg.name, &pp, &Patch::Apply(&admission_policy(reg, &metadata)))
        .await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .patch(&reg.name, &pp, &Patch::Apply(&admission_policy_binding(reg, &metadata)))
        .await?;
    match mutation {
        Mutation::Policy => delete_if_ours::<MutatingWebhookConfiguration>(client, &reg.name).await?,
        Mutation::Webhook => {
            delete_if_ours::<MutatingAdmissionPolicyBinding>(client, &reg.name).await?;
            delete_if_ours::<MutatingAdmissionPolicy>(client, &reg.name).await?;
        }
    }
    // Earlier versions validated through a second webhook; the policy replaces it.
    delete_if_ours::<ValidatingWebhookConfiguration>(client, &reg.name).await?;
    Ok(mutation)
}

/// Deletes the cluster-scoped object `name` if Mandate manages it.
async fn delete_if_ours<K>(client: &Client, name: &str) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api = Api::<K>::all(client.clone());
    let Some(obj) = api.get_opt(name).await? else {
        return Ok(());
    };
    if obj.labels().get("app.kubernetes.io/managed-by").map(String::as_str) != Some("mandate") {
        return Ok(());
    }
    match api.delete(name, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operator scoped to namespace `team-a`, registered as `mandate-x`.
    fn scoped(url: &str) -> Registration {
        Registration {
            name: "mandate-x".into(),
            target: Target::Url(url.into()),
            namespace: Some("team-a".into()),
            mutation: MutationMode::Auto,
        }
    }

    #[test]
    fn scoped_registration_fails_closed_and_selects_its_namespace() {
        let reg = scoped("https://127.0.0.1:9443/");
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
        let reg = scoped("https://127.0.0.1:9443");
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

    #[test]
    fn the_mutating_policy_fails_closed_on_creations_and_records_both_kinds_and_the_finalizer() {
        let reg = scoped("https://127.0.0.1:9443");
        let meta = json!({ "name": "mandate-x" });
        let policy = mutating_policy(&reg, &meta);
        assert_eq!(policy["spec"]["failurePolicy"], "Fail");
        assert_eq!(
            policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"],
            json!(["CREATE"])
        );
        assert_eq!(
            policy["spec"]["matchConstraints"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "team-a"
        );
        let expressions: Vec<&str> = policy["spec"]["mutations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["jsonPatch"]["expression"].as_str().unwrap())
            .collect();
        for (kind, field) in RECORDED {
            let e = expressions
                .iter()
                .find(|e| e.contains(&format!("'{kind}'")) && e.contains(&format!("/spec/{field}")))
                .unwrap_or_else(|| panic!("no mutation records {field}"));
            // Recorded whatever the client wrote: the whole field is replaced.
            assert!(!e.contains("has(object.spec"), "{e}");
        }
        assert!(expressions.iter().any(|e| e.contains(FINALIZER)));
        let binding = mutating_policy_binding(&reg, &meta);
        assert_eq!(binding["spec"]["policyName"], "mandate-x");
    }
}
