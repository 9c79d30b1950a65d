//! The request-time decision: may this certificate's holder make this call, now?
//!
//! Pure: the decision service looks the facts up in its indexes (the revocation
//! record, the grant, identity and task caches, the policy store) and passes them in
//! with `now`; this module checks them in a fixed order and returns the first failure,
//! each with its own [`Reason`]. Anything missing is a denial, never a default.
//!
//! The order (docs/authorize.md): the certificate's validity and its record, the
//! grant (exists, live, same generation as the certificate), the identity (same
//! SPIFFE ID, not suspended), the task (still running), the serial's revocation, the
//! call's tool, action and destination against the grant (the matcher issuance
//! uses), its data sensitivity, then Cedar `invoke` policies. The live state comes
//! before the revocation so the reason names the cause: a certificate revoked because
//! its task completed says TaskFinished, the moment the task's watch event lands. The chain and the caller are checked before this, by
//! the service, because they need the trust bundle and the connection.

use std::{fmt, time::Duration};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::{
    api::{AgentIdentity, GrantFacts, GrantPhase, RecordFacts, Sensitivity, ToolScope},
    decide::{
        scope::{self, Excess},
        task::Outcome,
    },
    pki::GrantScope,
    policy::{AgentFacts, InvokeDenial, InvokeRequest, PolicyStore, ToolRequest},
};

/// Why a call was allowed or denied: one machine-readable code per check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Reason {
    Allowed,
    /// A watch the decision reads has not synced yet, or the CA is unusable.
    NotReady,
    /// The request is malformed (bad JSON, oversized arguments, a bad value).
    InvalidRequest,
    /// No certificate, and no identity a trusted proxy asserted.
    NoCertificate,
    /// The certificate does not parse.
    MalformedCertificate,
    /// The chain does not verify against Mandate's trust bundle.
    UntrustedIssuer,
    /// An identity claimed by a header or field from a caller that is not a trusted proxy.
    UntrustedIdentityAssertion,
    /// The caller is an agent presenting a credential that is not its own.
    CallerNotSubject,
    /// A certificate without a SPIFFE ID or without Mandate's grant scope.
    NotAnAgentCertificate,
    CertificateNotYetValid,
    CertificateExpired,
    /// No revocation record for the serial: never issued by this Mandate.
    UnknownSerial,
    Revoked,
    /// The grant is gone (or a new grant has its name).
    GrantNotFound,
    /// The grant is not in phase Issued, or it is being deleted.
    GrantNotLive,
    /// The grant's spec changed since the certificate was issued.
    GrantChanged,
    IdentityNotFound,
    /// The certificate's SPIFFE ID is not the identity's.
    IdentityMismatch,
    IdentitySuspended,
    TaskNotFound,
    /// The task completed, failed or is being deleted.
    TaskFinished,
    ToolNotGranted,
    ActionNotGranted,
    DestinationNotGranted,
    /// The call's data is more sensitive than the grant allows.
    SensitivityExceeded,
    /// A Cedar `forbid` matched.
    PolicyForbidden,
    /// No Cedar `permit` matched (deny by default).
    PolicyNoPermit,
    /// A policy failed to evaluate.
    PolicyError,
    /// An Enforce AgentPolicy for the namespace does not compile.
    PolicyInvalid,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "Allowed",
            Reason::NotReady => "NotReady",
            Reason::InvalidRequest => "InvalidRequest",
            Reason::NoCertificate => "NoCertificate",
            Reason::MalformedCertificate => "MalformedCertificate",
            Reason::UntrustedIssuer => "UntrustedIssuer",
            Reason::UntrustedIdentityAssertion => "UntrustedIdentityAssertion",
            Reason::CallerNotSubject => "CallerNotSubject",
            Reason::NotAnAgentCertificate => "NotAnAgentCertificate",
            Reason::CertificateNotYetValid => "CertificateNotYetValid",
            Reason::CertificateExpired => "CertificateExpired",
            Reason::UnknownSerial => "UnknownSerial",
            Reason::Revoked => "Revoked",
            Reason::GrantNotFound => "GrantNotFound",
            Reason::GrantNotLive => "GrantNotLive",
            Reason::GrantChanged => "GrantChanged",
            Reason::IdentityNotFound => "IdentityNotFound",
            Reason::IdentityMismatch => "IdentityMismatch",
            Reason::IdentitySuspended => "IdentitySuspended",
            Reason::TaskNotFound => "TaskNotFound",
            Reason::TaskFinished => "TaskFinished",
            Reason::ToolNotGranted => "ToolNotGranted",
            Reason::ActionNotGranted => "ActionNotGranted",
            Reason::DestinationNotGranted => "DestinationNotGranted",
            Reason::SensitivityExceeded => "SensitivityExceeded",
            Reason::PolicyForbidden => "PolicyForbidden",
            Reason::PolicyNoPermit => "PolicyNoPermit",
            Reason::PolicyError => "PolicyError",
            Reason::PolicyInvalid => "PolicyInvalid",
        }
    }

    /// Every code, for documentation and metrics.
    pub const ALL: [Reason; 29] = [
        Reason::Allowed,
        Reason::NotReady,
        Reason::InvalidRequest,
        Reason::NoCertificate,
        Reason::MalformedCertificate,
        Reason::UntrustedIssuer,
        Reason::UntrustedIdentityAssertion,
        Reason::CallerNotSubject,
        Reason::NotAnAgentCertificate,
        Reason::CertificateNotYetValid,
        Reason::CertificateExpired,
        Reason::UnknownSerial,
        Reason::Revoked,
        Reason::GrantNotFound,
        Reason::GrantNotLive,
        Reason::GrantChanged,
        Reason::IdentityNotFound,
        Reason::IdentityMismatch,
        Reason::IdentitySuspended,
        Reason::TaskNotFound,
        Reason::TaskFinished,
        Reason::ToolNotGranted,
        Reason::ActionNotGranted,
        Reason::DestinationNotGranted,
        Reason::SensitivityExceeded,
        Reason::PolicyForbidden,
        Reason::PolicyNoPermit,
        Reason::PolicyError,
        Reason::PolicyInvalid,
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who the call is for, as established from a verified certificate or from what a
/// trusted proxy asserted (SPIFFE ID and serial, after it terminated TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub serial: String,
    pub spiffe_id: String,
    /// From the certificate; `None` when asserted.
    pub not_before: Option<Timestamp>,
    /// From the certificate; asserted: the record's.
    pub not_after: Option<Timestamp>,
    /// From the certificate's extension; `None` when asserted (the record and the
    /// grant then say what was granted).
    pub scope: Option<GrantScope>,
}

/// The call to decide.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Call {
    pub tool: String,
    pub action: String,
    pub destination: String,
    pub data_sensitivity: Sensitivity,
    pub intent: String,
    pub arguments: Option<serde_json::Map<String, serde_json::Value>>,
    pub traceparent: String,
    pub request_id: String,
}

/// What a task says now, from the task index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFacts {
    pub uid: String,
    pub finished: Option<Outcome>,
    pub deadline: Option<Timestamp>,
}

/// The facts the service looked up for a subject.
pub struct Facts<'a> {
    pub record: Option<&'a RecordFacts>,
    pub grant: Option<&'a GrantFacts>,
    pub identity: Option<&'a AgentIdentity>,
    pub task: Option<&'a TaskFacts>,
    pub policies: Option<&'a PolicyStore>,
}

/// The correlation keys of a decision: what the answer names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Named {
    pub grant_namespace: String,
    pub grant_name: String,
    pub grant_uid: String,
    pub grant_generation: i64,
    pub identity: String,
    pub task_kind: String,
    pub task_name: String,
    pub task_uid: String,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub reason: Reason,
    pub message: String,
    pub named: Named,
    /// How long an allow may be cached; `None` for a deny.
    pub valid_until: Option<Timestamp>,
    /// The Cedar policies that decided, when policy was reached.
    pub policies: Vec<String>,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.reason == Reason::Allowed
    }

    pub fn deny(reason: Reason, message: impl Into<String>) -> Verdict {
        Verdict {
            reason,
            message: message.into(),
            named: Named::default(),
            valid_until: None,
            policies: vec![],
        }
    }
}

/// Limits that are configuration, not facts.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The trust domain agents' SPIFFE IDs are in.
    pub trust_domain: &'static str,
    /// The longest an allow may be cached: how stale a cached answer may be when a
    /// revocation lands.
    pub max_cache: Duration,
}

fn named(subject: &Subject, facts: &Facts<'_>) -> Named {
    let mut n = Named::default();
    if let Some(r) = facts.record {
        n.grant_namespace = r.grant_namespace.clone();
        n.grant_name = r.grant_name.clone();
        n.grant_uid = r.grant_uid.clone();
        n.grant_generation = r.generation;
        n.task_uid = r.task_uid.clone();
    }
    if let Some(s) = &subject.scope {
        n.grant_namespace = s.namespace.clone();
        n.grant_name = s.grant_name.clone();
        n.grant_uid = s.grant_uid.clone();
        n.grant_generation = s.grant_generation;
        n.task_kind = s.task_kind.clone();
        n.task_name = s.task_name.clone();
        n.task_uid = s.task_uid.clone();
    }
    if let Some(g) = facts.grant {
        n.identity = format!("{}/{}", g.namespace, g.identity);
        if n.task_kind.is_empty() {
            n.task_kind = g.task.kind.clone();
            n.task_name = g.task.name.clone();
        }
    }
    n
}

/// Decides `call` for `subject` from `facts` at `now`.
pub fn decide(subject: &Subject, call: &Call, facts: &Facts<'_>, limits: Limits, now: Timestamp) -> Verdict {
    let named = named(subject, facts);
    let deny = |reason: Reason, message: String| Verdict {
        reason,
        message,
        named: named.clone(),
        valid_until: None,
        policies: vec![],
    };

    // The certificate's own validity (the record's notAfter when asserted).
    if let Some(nb) = subject.not_before
        && now < nb
    {
        return deny(
            Reason::CertificateNotYetValid,
            format!("the certificate is not valid before {nb}"),
        );
    }
    if let Some(na) = subject.not_after
        && now >= na
    {
        return deny(Reason::CertificateExpired, format!("the certificate expired at {na}"));
    }
    let Some(record) = facts.record else {
        return deny(
            Reason::UnknownSerial,
            format!(
                "serial {} is not in Mandate's revocation record: it was not issued here",
                subject.serial
            ),
        );
    };
    let not_after = subject.not_after.unwrap_or(record.not_after).min(record.not_after);
    if now >= not_after {
        return deny(
            Reason::CertificateExpired,
            format!("the certificate expired at {not_after}"),
        );
    }
    // A certificate names its grant; the record must say the same (a forged scope
    // cannot be signed, but a record and a certificate could disagree after a bug).
    if let Some(s) = &subject.scope
        && (s.grant_uid != record.grant_uid || s.grant_generation != record.generation)
    {
        return deny(
            Reason::GrantChanged,
            format!(
                "the certificate names grant {} generation {}, its record grant {} generation {}",
                s.grant_uid, s.grant_generation, record.grant_uid, record.generation
            ),
        );
    }

    let Some(grant) = facts.grant.filter(|g| g.uid == record.grant_uid) else {
        return deny(
            Reason::GrantNotFound,
            format!(
                "grant {}/{} (uid {}) no longer exists",
                record.grant_namespace, record.grant_name, record.grant_uid
            ),
        );
    };
    if grant.deleting {
        return deny(Reason::GrantNotLive, "the grant is being deleted".to_string());
    }
    let generation = grant.generation;
    if generation != record.generation {
        return deny(
            Reason::GrantChanged,
            format!(
                "the grant is at generation {generation}; the certificate was issued for generation {}",
                record.generation
            ),
        );
    }
    let Some(identity) = facts
        .identity
        .filter(|i| i.namespace().as_deref() == Some(grant.namespace.as_str()) && i.name_any() == grant.identity)
    else {
        return deny(
            Reason::IdentityNotFound,
            format!("AgentIdentity {} no longer exists", named.identity),
        );
    };
    // The ID Mandate issues for this identity, from the trust domain (the identity's
    // status says the same once its controller ran, but need not have yet).
    let expected = crate::spiffe::SpiffeId::for_agent(
        limits.trust_domain,
        &identity.namespace().unwrap_or_default(),
        &identity.name_any(),
    )
    .map(|id| id.as_str().to_string())
    .ok();
    let identity_spiffe = expected.as_deref();
    if identity_spiffe != Some(subject.spiffe_id.as_str()) {
        return deny(
            Reason::IdentityMismatch,
            format!(
                "the certificate's SPIFFE ID {} is not AgentIdentity {}'s ({})",
                subject.spiffe_id,
                named.identity,
                identity_spiffe.unwrap_or("none")
            ),
        );
    }
    if identity.spec.suspended {
        return deny(
            Reason::IdentitySuspended,
            format!("AgentIdentity {} is suspended", named.identity),
        );
    }

    let Some(task) = facts.task.filter(|t| t.uid == record.task_uid) else {
        return deny(
            Reason::TaskNotFound,
            format!(
                "task {} {} (uid {}) is not known to be running",
                named.task_kind, named.task_name, record.task_uid
            ),
        );
    };
    if let Some(outcome) = task.finished {
        let how = match outcome {
            Outcome::Succeeded => "completed",
            Outcome::Failed => "failed",
            Outcome::Deleting => "is being deleted",
        };
        return deny(
            Reason::TaskFinished,
            format!("task {} {} {how}", named.task_kind, named.task_name),
        );
    }
    if let Some(deadline) = task.deadline
        && now >= deadline
    {
        return deny(
            Reason::TaskFinished,
            format!(
                "task {} {} passed its deadline {deadline}",
                named.task_kind, named.task_name
            ),
        );
    }

    // The grant's phase after the task and the identity: a grant revoked because
    // its task finished or its identity was suspended says so above.
    let phase = grant.phase;
    if phase != Some(GrantPhase::Issued) {
        let phase = phase.map_or("none".to_string(), |p| format!("{p:?}"));
        return deny(
            Reason::GrantNotLive,
            format!("the grant is in phase {phase}, not Issued"),
        );
    }

    // Revocation after the live state: a certificate revoked because its task ended,
    // its grant changed or its identity was suspended reports that cause above; one
    // revoked for its own sake (its Secret was lost, a sweep) reports Revoked.
    if let Some((at, cause)) = &record.revoked {
        return deny(
            Reason::Revoked,
            format!("serial {} was revoked at {at} ({})", subject.serial, cause.as_str()),
        );
    }
    if record.deleting {
        return deny(
            Reason::Revoked,
            format!("serial {}'s record is being deleted", subject.serial),
        );
    }
    // Scope: what the certificate carries and what the grant says now (the same,
    // since the generations are equal), with issuance's matcher.
    let granted: Vec<ToolScope> = match &subject.scope {
        Some(s) => s
            .tools
            .iter()
            .map(|t| ToolScope {
                name: t.name.clone(),
                actions: t.actions.clone(),
                destinations: t.destinations.clone(),
                sensitivity: None,
            })
            .collect(),
        None => grant.tools.clone(),
    };
    let wanted = ToolScope {
        name: call.tool.clone(),
        actions: vec![call.action.clone()],
        destinations: vec![call.destination.clone()],
        sensitivity: None,
    };
    if let Some(excess) = scope::excess(std::slice::from_ref(&wanted), &granted)
        .into_iter()
        .next()
    {
        let reason = match excess {
            Excess::Tool { .. } => Reason::ToolNotGranted,
            Excess::Action { .. } => Reason::ActionNotGranted,
            Excess::Destination { .. } => Reason::DestinationNotGranted,
        };
        let what = excess
            .to_string()
            .replace("the identity's ceiling", "the grant")
            .replace("the ceiling", "the grant");
        return deny(reason, what);
    }
    let allowed_data = grant.data_sensitivity.unwrap_or_default();
    if call.data_sensitivity > allowed_data {
        return deny(
            Reason::SensitivityExceeded,
            format!(
                "the call carries {} data; the grant allows up to {}",
                call.data_sensitivity.as_str(),
                allowed_data.as_str()
            ),
        );
    }

    let Some(policies) = facts.policies else {
        return deny(Reason::NotReady, "the policy store is not built yet".to_string());
    };
    let (Some(granted_tool), ceiling) = (
        grant.tools.iter().find(|t| t.name == call.tool),
        identity.spec.tools.iter().find(|t| t.name == call.tool),
    ) else {
        return deny(
            Reason::ToolNotGranted,
            format!("tool {:?} is not in the grant", call.tool),
        );
    };
    let req = InvokeRequest {
        namespace: named.grant_namespace.clone(),
        grant_name: named.grant_name.clone(),
        agent: AgentFacts {
            name: identity.name_any(),
            namespace: identity.namespace().unwrap_or_default(),
            owner: identity.spec.owner.clone(),
            spiffe_id: subject.spiffe_id.clone(),
            service_account: identity.spec.service_account_name.clone(),
        },
        tool: ToolRequest::from_scopes(granted_tool, ceiling),
        action: call.action.clone(),
        destination: call.destination.clone(),
        intent: call.intent.clone(),
        data_sensitivity: call.data_sensitivity,
        task_kind: named.task_kind.clone(),
        task_name: named.task_name.clone(),
        arguments: call.arguments.clone(),
        traceparent: call.traceparent.clone(),
        request_id: call.request_id.clone(),
    };
    let decision = policies.decide_invoke(&req);
    if let Some(denial) = decision.denial {
        let reason = match denial {
            InvokeDenial::Forbidden => Reason::PolicyForbidden,
            InvokeDenial::NoPermit => Reason::PolicyNoPermit,
            InvokeDenial::EvaluationError => Reason::PolicyError,
            InvokeDenial::InvalidPolicy => Reason::PolicyInvalid,
        };
        let mut v = deny(reason, decision.reason);
        v.policies = decision.policies;
        return v;
    }

    let cache = SignedDuration::try_from(limits.max_cache).unwrap_or(SignedDuration::from_secs(1));
    let valid_until = [Some(not_after), task.deadline, now.checked_add(cache).ok()]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now);
    Verdict {
        reason: Reason::Allowed,
        message: decision.reason,
        named,
        valid_until: Some(valid_until),
        policies: decision.policies,
    }
}

#[cfg(test)]
mod tests;
