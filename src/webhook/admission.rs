//! The admission decisions, as pure functions of the AdmissionRequest.
//!
//! Mandate records *who asked* from the API server's own authentication of the request,
//! never from the object: a ToolGrant's `spec.requester` and a ToolGrantApproval's
//! `spec.approver` are written here, at creation, from `userInfo`. Anything a client
//! puts there itself is refused, and changing it later is refused (the CRD's CEL rules
//! refuse it too, in case this webhook is bypassed). Mandate's ValidatingAdmissionPolicy
//! (`registration`) runs after every mutating webhook and checks the recorded user
//! is exactly the authenticated one, so a later webhook that rewrote the field is
//! caught too.

use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::api::authentication::v1::UserInfo as K8sUserInfo;
use kube::{
    api::DynamicObject,
    core::admission::{AdmissionRequest, AdmissionResponse, Operation},
};
use serde_json::{Value, json};

use crate::api::{UserInfo, names::FINALIZER};

/// Which field records the creator, per kind.
fn recorded_field(kind: &str) -> Option<&'static str> {
    match kind {
        "ToolGrant" => Some("requester"),
        "ToolGrantApproval" => Some("approver"),
        _ => None,
    }
}

/// The authenticated user, as Mandate records it.
pub fn user_of(info: &K8sUserInfo) -> UserInfo {
    UserInfo {
        username: info.username.clone().unwrap_or_default(),
        uid: info.uid.clone().unwrap_or_default(),
        groups: info.groups.clone().unwrap_or_default(),
    }
}

fn spec_field<'a>(obj: Option<&'a DynamicObject>, field: &str) -> Option<&'a Value> {
    obj?.data.get("spec")?.get(field).filter(|v| !v.is_null())
}

/// The mutating pass: on creation, record the creator (and, on a grant, add the
/// revocation finalizer so it is there before any certificate can exist).
pub fn mutate(req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let res = AdmissionResponse::from(req);
    let Some(field) = recorded_field(&req.kind.kind) else {
        return res;
    };
    match req.operation {
        Operation::Create => {
            if spec_field(req.object.as_ref(), field).is_some() {
                return res.deny(format!(
                    "spec.{field} is recorded by Mandate from your authenticated identity; remove it from the manifest"
                ));
            }
            let user = user_of(&req.user_info);
            if user.username.is_empty() {
                return res.deny("the request carries no authenticated username to record");
            }
            let mut ops = vec![add(&["spec", field], json!(user))];
            if req.kind.kind == "ToolGrant" {
                let finalizers = req
                    .object
                    .as_ref()
                    .and_then(|o| o.metadata.finalizers.clone())
                    .unwrap_or_default();
                if finalizers.is_empty() {
                    ops.push(add(&["metadata", "finalizers"], json!([FINALIZER])));
                } else if !finalizers.iter().any(|f| f == FINALIZER) {
                    ops.push(add(&["metadata", "finalizers", "-"], json!(FINALIZER)));
                }
            }
            match res.with_patch(Patch(ops)) {
                Ok(res) => res,
                Err(e) => AdmissionResponse::from(req).deny(format!("failed to encode the patch: {e}")),
            }
        }
        Operation::Update => unchanged(req, field, res),
        _ => res,
    }
}

fn unchanged(req: &AdmissionRequest<DynamicObject>, field: &str, res: AdmissionResponse) -> AdmissionResponse {
    let old = spec_field(req.old_object.as_ref(), field);
    let new = spec_field(req.object.as_ref(), field);
    if old != new {
        return res.deny(format!(
            "spec.{field} is recorded by Mandate at creation and cannot be set or changed"
        ));
    }
    res
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;

    fn request(kind: &str, op: &str, object: Value, old: Option<Value>, user: &str) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "mandate.dev", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "mandate.dev", "version": "v1alpha1", "resource": "x"},
                "operation": op,
                "userInfo": {"username": user, "uid": "uid-1", "groups": ["devs", "system:authenticated"]},
                "object": object,
                "oldObject": old,
                "dryRun": false,
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    fn grant(spec_extra: Value) -> Value {
        let mut spec = json!({"identityRef": {"name": "a"}, "purpose": "p"});
        if let (Some(s), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
            s.extend(extra.clone());
        }
        json!({"apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant", "metadata": {"name": "g"}, "spec": spec})
    }

    fn patched(res: &AdmissionResponse, obj: &Value) -> Value {
        let ops: Patch = serde_json::from_slice(res.patch.as_ref().expect("a patch")).unwrap();
        let mut out = obj.clone();
        json_patch::patch(&mut out, &ops).unwrap();
        out
    }

    #[test]
    fn threat_6_requester_forgery_creation_records_the_authenticated_user_and_the_finalizer() {
        let obj = grant(json!({}));
        let res = mutate(&request("ToolGrant", "CREATE", obj.clone(), None, "alice"));
        assert!(res.allowed);
        let out = patched(&res, &obj);
        assert_eq!(out["spec"]["requester"]["username"], "alice");
        assert_eq!(out["spec"]["requester"]["uid"], "uid-1");
        assert_eq!(
            out["spec"]["requester"]["groups"],
            json!(["devs", "system:authenticated"])
        );
        assert_eq!(out["metadata"]["finalizers"], json!([FINALIZER]));
    }

    #[test]
    fn threat_6_requester_forgery_a_requester_in_the_manifest_is_refused() {
        let obj = grant(json!({"requester": {"username": "root"}}));
        let res = mutate(&request("ToolGrant", "CREATE", obj, None, "mallory"));
        assert!(!res.allowed);
        assert!(res.result.message.contains("spec.requester"), "{}", res.result.message);
    }

    #[test]
    fn threat_6_requester_forgery_changing_the_requester_later_is_refused() {
        let old = grant(json!({"requester": {"username": "alice"}}));
        let new = grant(json!({"requester": {"username": "mallory"}}));
        assert!(!mutate(&request("ToolGrant", "UPDATE", new, Some(old.clone()), "mallory")).allowed);
        let removed = grant(json!({}));
        assert!(!mutate(&request("ToolGrant", "UPDATE", removed, Some(old.clone()), "mallory")).allowed);
        let same = grant(json!({"requester": {"username": "alice"}, "ttl": "5m"}));
        assert!(mutate(&request("ToolGrant", "UPDATE", same, Some(old), "bob")).allowed);
    }

    #[test]
    fn approvals_record_the_approver_without_a_finalizer() {
        let obj = json!({"apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrantApproval", "metadata": {"name": "a"},
                         "spec": {"grantName": "g", "grantGeneration": 1, "decision": "Approve"}});
        let res = mutate(&request("ToolGrantApproval", "CREATE", obj.clone(), None, "bob"));
        let out = patched(&res, &obj);
        assert_eq!(out["spec"]["approver"]["username"], "bob");
        assert!(out["metadata"].get("finalizers").is_none());
        let forged = json!({"apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrantApproval", "metadata": {"name": "a"},
                         "spec": {"grantName": "g", "grantGeneration": 1, "decision": "Approve", "approver": {"username": "boss"}}});
        assert!(!mutate(&request("ToolGrantApproval", "CREATE", forged, None, "bob")).allowed);
    }

    #[test]
    fn other_kinds_pass_untouched() {
        let res = mutate(&request(
            "ConfigMap",
            "CREATE",
            json!({"metadata": {"name": "x"}}),
            None,
            "a",
        ));
        assert!(res.allowed && res.patch.is_none());
    }
}
