//! What the operator's caches keep of each object: only the fields Mandate reads.
//!
//! Every object carries its managed-fields history, and a `kubectl apply`'d one its
//! last manifest; nothing reads them. (Pods, Jobs and grant Secrets are decoded into
//! the compact types of `cached` instead, which never hold such fields at all.)

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
