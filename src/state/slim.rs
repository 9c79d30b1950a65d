//! What the operator's caches keep of each object: only the fields Mandate reads.
//!
//! A Pod or Job carries its whole template and managed-fields history; a grant Secret
//! carries its private key. None of that is needed to decide anything, and with
//! thousands of tasks it is most of the operator's memory. Private keys in particular
//! never stay resident in the operator: the cache holds the certificate only.

use k8s_openapi::api::{
    batch::v1::{Job, JobSpec},
    core::v1::{Pod, PodSpec, PodStatus, Secret},
};
use kube::Resource;

use crate::api::{AgentIdentity, ToolGrant, ToolGrantApproval};

fn meta<K: Resource>(obj: &mut K) {
    let m = obj.meta_mut();
    m.managed_fields = None;
    // `kubectl apply` keeps the whole last manifest here.
    if let Some(a) = m.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

pub fn grant(g: &mut ToolGrant) {
    meta(g);
}

pub fn identity(i: &mut AgentIdentity) {
    meta(i);
}

pub fn approval(a: &mut ToolGrantApproval) {
    meta(a);
}

/// Keeps the labels (for AgentPolicy namespace selectors).
pub fn namespace(n: &mut k8s_openapi::api::core::v1::Namespace) {
    meta(n);
    n.spec = None;
    n.status = None;
}

/// Keeps the deadline (`spec.activeDeadlineSeconds`) and the status.
pub fn job(j: &mut Job) {
    meta(j);
    if let Some(spec) = j.spec.as_mut() {
        *spec = JobSpec {
            active_deadline_seconds: spec.active_deadline_seconds,
            ..Default::default()
        };
    }
}

/// Keeps the deadline, the phase and the start time.
pub fn pod(p: &mut Pod) {
    meta(p);
    if let Some(spec) = p.spec.as_mut() {
        *spec = PodSpec {
            active_deadline_seconds: spec.active_deadline_seconds,
            ..Default::default()
        };
    }
    if let Some(status) = p.status.as_mut() {
        *status = PodStatus {
            phase: status.phase.take(),
            start_time: status.start_time.take(),
            ..Default::default()
        };
    }
}

/// Keeps the certificate, drops the private key and the CA bundle.
pub fn secret(s: &mut Secret) {
    meta(s);
    if let Some(data) = s.data.as_mut() {
        data.retain(|k, _| k == "tls.crt");
    }
    s.string_data = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn secret_cache_never_holds_the_private_key() {
        let mut s = Secret {
            data: Some(
                [
                    ("tls.crt".to_string(), ByteString(b"cert".to_vec())),
                    ("tls.key".to_string(), ByteString(b"key".to_vec())),
                    ("ca.crt".to_string(), ByteString(b"ca".to_vec())),
                ]
                .into(),
            ),
            ..Default::default()
        };
        secret(&mut s);
        let data = s.data.unwrap();
        assert_eq!(data.len(), 1);
        assert!(data.contains_key("tls.crt"));
    }

    #[test]
    fn pod_cache_keeps_what_the_task_adapter_reads() {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u", "managedFields": [{"manager": "x"}]},
            "spec": {"activeDeadlineSeconds": 60, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z", "podIP": "10.0.0.1"}
        }))
        .unwrap();
        pod(&mut p);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["spec"]["activeDeadlineSeconds"], 60);
        assert_eq!(v["spec"]["containers"], serde_json::json!([]));
        assert_eq!(v["status"]["phase"], "Running");
        assert_eq!(v["status"]["startTime"], "2026-01-01T00:00:00Z");
        assert!(v["status"].get("podIP").is_none());
        assert!(v["metadata"].get("managedFields").is_none());
    }
}
