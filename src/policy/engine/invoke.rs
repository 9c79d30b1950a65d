//! Request-time decisions (action `invoke`): one tool call, decided by the same
//! indexed policy groups and the same rule as issuance (allow iff some permit and no
//! forbid, deny on any error or an invalid Enforce AgentPolicy).
//!
//! There are no approvals at call time: an `@approval("required")` forbid is a plain
//! forbid here.

use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

use super::{Group, PolicyStore, Tally, ids, quoted};
use crate::api::PolicyMode;
use crate::policy::input::{InvokeInput, InvokeRequest};

/// Why policy denied a call; each is a reason code of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvokeDenial {
    /// A forbid was satisfied.
    Forbidden,
    /// No permit was satisfied (deny by default).
    NoPermit,
    /// A policy failed to evaluate, or the request could not be represented.
    EvaluationError,
    /// An Enforce AgentPolicy selecting the namespace does not compile.
    InvalidPolicy,
}

/// The verdict on one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvokeDecision {
    /// `None` when allowed.
    pub denial: Option<InvokeDenial>,
    /// The policies that decided: the satisfied permits of an allow, the forbids or
    /// failing policies of a deny.
    pub policies: Vec<String>,
    pub reason: String,
    /// Audit-mode policies that would have denied an allowed call.
    pub audit_denials: Vec<String>,
}

impl InvokeDecision {
    fn deny(denial: InvokeDenial, policies: Vec<String>, reason: String) -> Self {
        InvokeDecision {
            denial: Some(denial),
            policies,
            reason,
            audit_denials: vec![],
        }
    }

    pub fn allowed(&self) -> bool {
        self.denial.is_none()
    }
}

impl PolicyStore {
    /// May `req`'s agent make this call now? Only AgentPolicies selecting the grant's
    /// namespace count; fail closed as [`decide_issue`](Self::decide_issue) does.
    pub fn decide_invoke(&self, req: &InvokeRequest) -> InvokeDecision {
        if let Some(bad) = self
            .invalid
            .iter()
            .find(|b| b.mode == PolicyMode::Enforce && b.namespaces.applies_to(&req.namespace))
        {
            return InvokeDecision::deny(
                InvokeDenial::InvalidPolicy,
                vec![],
                format!("AgentPolicy {} is invalid: {}", bad.name, bad.problem),
            );
        }
        let input = match InvokeInput::new(req) {
            Ok(input) => input,
            Err(e) => return InvokeDecision::deny(InvokeDenial::EvaluationError, vec![], e.to_string()),
        };
        let agent = req.agent.entity_id();
        let tool = &req.tool.name;
        let selected = |g: &&Group| g.matcher.is_none_or(|m| self.matchers[m].applies_to(&req.namespace));
        let groups: Vec<&Group> = self
            .index
            .leaves("invoke", &req.namespace, &agent, tool)
            .into_iter()
            .flatten()
            .filter(selected)
            .collect();
        let eval = Evaluator::new(
            input.request.clone(),
            input.entities.as_ref(),
            Extensions::all_available(),
        );
        let mut enforce = Tally::default();
        for g in groups.iter().filter(|g| !g.audit) {
            enforce.add(self, &eval, g);
        }
        if !enforce.errors.is_empty() {
            let policies = ids(enforce.errors.iter().map(|(id, _)| id));
            let errors: Vec<String> = enforce.errors.iter().map(|(id, e)| format!("{id}: {e}")).collect();
            return InvokeDecision::deny(
                InvokeDenial::EvaluationError,
                policies,
                format!("policy evaluation failed, so the call is denied: {}", errors.join("; ")),
            );
        }
        if !enforce.forbids.is_empty() {
            let policies: Vec<String> = enforce.forbids.into_iter().collect();
            let reason = format!(
                "{} forbid `invoke` of tool {tool} ({} {}) for agent {agent}",
                quoted(&policies),
                req.action,
                req.destination
            );
            return InvokeDecision::deny(InvokeDenial::Forbidden, policies, reason);
        }
        if enforce.permits.is_empty() {
            return InvokeDecision::deny(
                InvokeDenial::NoPermit,
                vec![],
                format!("no policy permits `invoke` of tool {tool} for agent {agent}"),
            );
        }
        let mut audit = Tally::default();
        for g in groups.iter().filter(|g| g.audit) {
            audit.add(self, &eval, g);
        }
        let mut audit_denials: Vec<String> = audit.forbids.into_iter().collect();
        audit_denials.extend(audit.errors.into_iter().map(|(id, _)| id));
        audit_denials.sort();
        audit_denials.dedup();
        let policies: Vec<String> = enforce.permits.into_iter().collect();
        InvokeDecision {
            denial: None,
            reason: format!("{} permit `invoke` of tool {tool} for agent {agent}", quoted(&policies)),
            policies,
            audit_denials,
        }
    }
}
