//! The `mandate.dev/v1alpha1` API: the custom resources users write and the operator reports on.
//!
//! Rustdoc on every field becomes the CRD's OpenAPI description, which is what
//! `kubectl explain` shows, so it is written for the person applying a manifest.

mod approval;
mod grant;
mod identity;
pub mod names;
mod policy;
mod record;
mod tool;

pub use approval::{ApprovalDecision, ToolGrantApproval, ToolGrantApprovalSpec, ToolGrantApprovalStatus, UserInfo};
pub use grant::{
    ApprovalRecord, CertificateStatus, DecisionInputs, DecisionRecord, GrantFacts, GrantPhase, IdentityRef,
    LifetimeCap, RevocationStatus, SupersededCertificate, TaskRef, ToolGrant, ToolGrantSpec, ToolGrantStatus,
};
pub use identity::{AgentIdentity, AgentIdentitySpec, AgentIdentityStatus};
pub use policy::{
    AgentPolicy, AgentPolicySpec, AgentPolicyStatus, AuditDenial, AuditSummary, PolicyError, PolicyMode, PolicySummary,
};
pub use record::{
    CertificateRecord, CertificateRecordSpec, RecordFacts, RecordedGrant, RecordedRevocation, RecordedTask,
    RevocationCause,
};
pub use tool::{Sensitivity, ToolScope};

use kube::{CustomResourceExt, Resource};

/// API group of every Mandate resource.
pub const GROUP: &str = "mandate.dev";
/// API version served and stored.
pub const VERSION: &str = "v1alpha1";

/// Every CustomResourceDefinition Mandate serves, in the order they are printed and installed.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    vec![
        AgentIdentity::crd(),
        ToolGrant::crd(),
        ToolGrantApproval::crd(),
        AgentPolicy::crd(),
        CertificateRecord::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream, exactly as committed under `crds/`.
pub fn crds_yaml() -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd)?);
    }
    Ok(out)
}

/// The `apiVersion` string of Mandate's resources.
pub fn api_version() -> String {
    AgentIdentity::api_version(&()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_are_in_the_mandate_group_at_v1alpha1() {
        for crd in crds() {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.versions.len(), 1);
            assert_eq!(crd.spec.versions[0].name, VERSION);
            let expected = if crd.spec.names.kind == "AgentPolicy" {
                "Cluster"
            } else {
                "Namespaced"
            };
            assert_eq!(crd.spec.scope, expected);
        }
        assert_eq!(api_version(), "mandate.dev/v1alpha1");
    }

    #[test]
    fn every_crd_field_has_a_description() {
        // kubectl explain shows these; an undocumented field is a bug.
        fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
                for (k, child) in props {
                    let p = format!("{path}.{k}");
                    let skip = path.ends_with(".metadata") || k == "metadata" || k == "apiVersion" || k == "kind";
                    if !skip && child.get("description").is_none() {
                        missing.push(p.clone());
                    }
                    // Conditions use the upstream metav1.Condition schema, documented upstream.
                    if k != "conditions" {
                        walk(&p, child, missing);
                    }
                }
            }
            if let Some(items) = v.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        let mut missing = vec![];
        for crd in crds() {
            let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
            walk(&crd.spec.names.kind, &schema["openAPIV3Schema"], &mut missing);
        }
        assert!(missing.is_empty(), "fields without rustdoc: {missing:?}");
    }
}
