//! The grant controller's entries in the audit trail: certificates issued, renewed,
//! revoked and expired, and grants denied or approved, each with the correlation keys
//! the decision service's entries carry (identity, grant UID and generation, task,
//! serial, decision id).

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::Context;
use crate::{
    api::ToolGrant,
    audit::{Event, EventKind, GrantKey, Keys, TaskKey},
};

/// What one entry is about, beyond its grant.
pub struct Entry<'a> {
    pub kind: EventKind,
    pub serial: Option<&'a str>,
    pub generation: i64,
    pub task_uid: &'a str,
    pub decision_id: Option<&'a str>,
    pub reason: &'a str,
    pub message: String,
}

pub fn emit(ctx: &Context, grant: &ToolGrant, e: Entry<'_>, now: Timestamp) {
    let ns = grant.namespace().unwrap_or_default();
    ctx.trail.emit(Event {
        time: now,
        kind: e.kind,
        keys: Keys {
            identity: Some(format!("{ns}/{}", grant.spec.identity_ref.name)),
            grant: Some(GrantKey {
                namespace: ns,
                name: grant.name_any(),
                uid: grant.uid().unwrap_or_default(),
                generation: e.generation,
            }),
            task: (!e.task_uid.is_empty()).then(|| TaskKey {
                kind: grant.spec.task_ref.kind.clone(),
                name: grant.spec.task_ref.name.clone(),
                uid: e.task_uid.to_string(),
            }),
            serial: e.serial.map(str::to_string),
            decision_id: e.decision_id.filter(|d| !d.is_empty()).map(str::to_string),
            traceparent: None,
        },
        reason: Some(e.reason.to_string()),
        message: Some(e.message),
        call: None,
    });
}
