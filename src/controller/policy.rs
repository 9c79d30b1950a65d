//! AgentPolicy status: what each one compiled to, and the would-be denials of Audit
//! policies. The policy store the decisions read is built in `state::policies`; every
//! new store re-checks every grant (a policy change is a fresh decision).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};
use tracing::{info, warn};

use super::{Context, Error};
pub use crate::state::policies::{CompileCache, rebuild};
use crate::{
    api::{AgentPolicy, AgentPolicyStatus, AuditDenial, AuditSummary},
    conditions::{self, Desired},
    policy::Compiled,
};

/// Most recent would-be denials kept per Audit policy.
const RECENT_AUDIT_DENIALS: usize = 20;

/// Would-be denials of Audit policies since the operator started, by AgentPolicy name.
#[derive(Default)]
pub struct AuditLog {
    by_policy: Mutex<HashMap<String, AuditSummary>>,
}

impl AuditLog {
    /// Records that the Audit policies `policy_ids` (`<AgentPolicy>/<id>`) would have
    /// denied a decision; returns the AgentPolicy names touched.
    pub fn record(
        &self,
        policy_ids: &[String],
        grant: &str,
        generation: i64,
        decision_id: &str,
        now: Timestamp,
    ) -> Vec<String> {
        let mut by_owner: HashMap<&str, Vec<String>> = HashMap::new();
        for id in policy_ids {
            let owner = id.split_once('/').map(|(o, _)| o).unwrap_or(id);
            by_owner.entry(owner).or_default().push(id.clone());
        }
        let mut map = self.by_policy.lock().expect("audit log");
        let mut touched = vec![];
        for (owner, ids) in by_owner {
            let summary = map.entry(owner.to_string()).or_default();
            summary.would_deny_count += 1;
            summary.recent.insert(
                0,
                AuditDenial {
                    grant: grant.to_string(),
                    generation,
                    policy_ids: ids,
                    decision_id: decision_id.to_string(),
                    time: Time(now),
                },
            );
            summary.recent.truncate(RECENT_AUDIT_DENIALS);
            touched.push(owner.to_string());
        }
        touched
    }

    fn get(&self, name: &str) -> Option<AuditSummary> {
        self.by_policy.lock().expect("audit log").get(name).cloned()
    }
}

/// The status an AgentPolicy should have (pure, `now` passed in).
pub fn desired_status(
    policy: &AgentPolicy,
    compiled: &Compiled,
    audit: Option<AuditSummary>,
    now: Timestamp,
) -> AgentPolicyStatus {
    let current = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;
    let ready = if compiled.is_valid() {
        Desired {
            type_: conditions::READY,
            status: true,
            reason: "Valid",
            message: format!("{} policies compiled and validated", compiled.policies.len()),
        }
    } else {
        let first = &compiled.errors[0];
        let at = match (first.line, first.column) {
            (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
            _ => String::new(),
        };
        Desired {
            type_: conditions::READY,
            status: false,
            reason: "InvalidPolicy",
            message: format!(
                "{}{at}; {} error(s) in all; no grant in the selected namespaces is issued until it is fixed",
                first.message,
                compiled.errors.len()
            ),
        }
    };
    let mut errors = compiled.errors.clone();
    errors.truncate(100);
    let mut summaries = compiled.summaries();
    summaries.truncate(1000);
    AgentPolicyStatus {
        policy_count: compiled.policies.len() as i32,
        policies: summaries,
        errors,
        audit: audit.or(current.audit.clone()),
        observed_generation: generation,
        conditions: conditions::merge(&current.conditions, vec![ready], generation, now),
    }
}

pub async fn reconcile(policy: Arc<AgentPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = policy.name_any();
    let compiled = ctx.policy_compiler.get(&policy);
    let status = desired_status(&policy, &compiled, ctx.audit.get(&name), Timestamp::now());
    if policy.status.as_ref() != Some(&status) {
        let api: Api<AgentPolicy> = Api::all(ctx.client.clone());
        super::apply_status(&api, "AgentPolicy", &name, &status).await?;
        let was_ready = policy
            .status
            .as_ref()
            .map(|s| conditions::is_true(&s.conditions, conditions::READY));
        let ready = compiled.is_valid();
        if was_ready != Some(ready)
            || policy.status.as_ref().and_then(|s| s.observed_generation) != policy.metadata.generation
        {
            let (type_, reason, note) = if ready {
                (
                    EventType::Normal,
                    "Valid",
                    format!("{} policies compiled and validated", compiled.policies.len()),
                )
            } else {
                let e = &compiled.errors[0];
                warn!(agent_policy = %name, line = ?e.line, column = ?e.column, error = %e.message, "AgentPolicy is invalid");
                (
                    EventType::Warning,
                    "InvalidPolicy",
                    status
                        .conditions
                        .iter()
                        .find(|c| c.type_ == conditions::READY)
                        .map(|c| c.message.clone())
                        .unwrap_or_default(),
                )
            };
            info!(agent_policy = %name, valid = ready, policies = compiled.policies.len(), "AgentPolicy compiled");
            let ev = Event {
                type_,
                reason: reason.into(),
                note: Some(super::backoff::truncate_note(note)),
                action: "Compile".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&ev, &policy.object_ref(&())).await {
                warn!(error = %e, "failed to publish event");
            }
        }
    }
    Ok(Action::await_change())
}
