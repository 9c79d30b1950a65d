//! A grant's policy decision: the facts policy sees, the store's verdict, and the
//! record kept in the grant's status.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::ResourceExt;

use crate::{
    api::{AgentIdentity, DecisionInputs, DecisionRecord, ToolGrant, ToolGrantApproval},
    decide::{
        approval::{self, Pick, Verdict},
        grant::PolicyObs,
    },
    policy::{AgentFacts, ApprovalFacts, IssueRequest, Outcome, PolicyStore, ToolRequest},
};

/// Everything the grant controller needs from policy.
pub struct Evaluated {
    pub obs: PolicyObs,
    /// The decision record for status; `None` when policy was not consulted.
    pub record: Option<DecisionRecord>,
    /// The approval that counts, if any.
    pub pick: Pick,
    /// What became of each approval naming this grant.
    pub verdicts: Vec<Verdict>,
    /// Audit policies that would have denied.
    pub audit_denials: Vec<String>,
}

impl Evaluated {
    pub fn without_record(obs: PolicyObs) -> Self {
        Evaluated {
            obs,
            record: None,
            pick: Pick::None,
            verdicts: vec![],
            audit_denials: vec![],
        }
    }
}

/// The facts of `grant` for its identity, as policy sees them.
pub fn request(grant: &ToolGrant, identity: &AgentIdentity, spiffe_id: &str, pick: &Pick) -> IssueRequest {
    let ceiling = |name: &str| identity.spec.tools.iter().find(|t| t.name == name);
    let ttl: std::time::Duration = grant.spec.ttl.map(Into::into).unwrap_or(identity.spec.max_ttl.into());
    IssueRequest {
        namespace: grant.namespace().unwrap_or_default(),
        grant_name: grant.name_any(),
        generation: grant.metadata.generation.unwrap_or_default(),
        agent: AgentFacts {
            name: identity.name_any(),
            namespace: identity.namespace().unwrap_or_default(),
            owner: identity.spec.owner.clone(),
            spiffe_id: spiffe_id.to_string(),
            service_account: identity.spec.service_account_name.clone(),
        },
        requester: grant.spec.requester.clone().unwrap_or_default(),
        tools: grant
            .spec
            .tools
            .iter()
            .map(|t| ToolRequest::from_scopes(t, ceiling(&t.name)))
            .collect(),
        ttl_seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        data_sensitivity: grant.spec.data_sensitivity.unwrap_or_default(),
        purpose: grant.spec.purpose.clone(),
        task_kind: grant.spec.task_ref.kind.clone(),
        task_name: grant.spec.task_ref.name.clone(),
        approval: match pick {
            Pick::Approved { name, approver, .. } => Some(ApprovalFacts {
                name: name.clone(),
                approver: approver.clone(),
            }),
            _ => None,
        },
    }
}

fn inputs(req: &IssueRequest) -> DecisionInputs {
    let mut destinations: Vec<String> = req.tools.iter().flat_map(|t| t.destinations.iter().cloned()).collect();
    destinations.sort();
    destinations.dedup();
    DecisionInputs {
        requester: req.requester.username.clone(),
        agent: req.agent.spiffe_id.clone(),
        owner: req.agent.owner.clone(),
        tools: req
            .tools
            .iter()
            .map(|t| format!("{}:{}", t.name, t.actions.join(",")))
            .collect(),
        destinations,
        sensitivity: req
            .tools
            .iter()
            .map(|t| t.sensitivity)
            .chain([req.data_sensitivity])
            .max()
            .unwrap_or_default(),
        ttl_seconds: req.ttl_seconds,
        task: format!("{}/{}", req.task_kind, req.task_name),
        approval: req.approval.as_ref().map(|a| format!("{} by {}", a.name, a.approver)),
    }
}

fn new_decision_id() -> String {
    let bytes: [u8; 12] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Keeps the previous record's id and time when nothing about the decision changed,
/// so an unchanged decision is not rewritten (and not re-announced).
fn record(previous: Option<&DecisionRecord>, mut fresh: DecisionRecord) -> DecisionRecord {
    fresh.reasons.truncate(64);
    fresh.policies.truncate(256);
    fresh.audit_denials.truncate(256);
    match previous {
        Some(p)
            if p.outcome == fresh.outcome
                && p.generation == fresh.generation
                && p.policies == fresh.policies
                && p.reasons == fresh.reasons
                && p.audit_denials == fresh.audit_denials
                && p.inputs == fresh.inputs =>
        {
            p.clone()
        }
        _ => fresh,
    }
}

/// Decides policy for `grant`. `store` is `None` until the policies are loaded.
pub fn evaluate(
    store: Option<&PolicyStore>,
    grant: &ToolGrant,
    identity: &AgentIdentity,
    spiffe_id: &str,
    approvals: &[&ToolGrantApproval],
    now: Timestamp,
) -> Evaluated {
    if grant.spec.requester.as_ref().is_none_or(|r| r.username.is_empty()) {
        return Evaluated::without_record(PolicyObs::MissingRequester);
    }
    let Some(store) = store else {
        return Evaluated::without_record(PolicyObs::Loading);
    };
    let previous = grant.status.as_ref().and_then(|s| s.decision.as_ref());
    let generation = grant.metadata.generation.unwrap_or_default();
    let (denied, approved, verdicts) = approval::candidates(grant, approvals, now);
    if let Some(pick @ Pick::Denied { name, approver, reason }) = &denied {
        let req = request(grant, identity, spiffe_id, pick);
        let why = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        let message = format!("{approver} denied generation {generation} in ToolGrantApproval {name}{why}");
        return Evaluated {
            record: Some(record(
                previous,
                DecisionRecord {
                    decision_id: new_decision_id(),
                    outcome: "Deny".into(),
                    generation,
                    time: Time(now),
                    policies: vec![],
                    reasons: vec![message.clone()],
                    audit_denials: vec![],
                    inputs: inputs(&req),
                },
            )),
            obs: PolicyObs::ApprovalDenied { message },
            pick: pick.clone(),
            verdicts,
            audit_denials: vec![],
        };
    }
    // Each usable approval in turn (oldest first), until one satisfies the policy: a
    // refused self-approval must not shadow a second person's approval after it.
    let mut options = approved.into_iter();
    let first = options.next().unwrap_or(Pick::None);
    let req = request(grant, identity, spiffe_id, &first);
    let mut best = (first, req.clone(), store.decide_issue(&req));
    for option in options {
        if best.2.outcome == Outcome::Allow {
            break;
        }
        let r = request(grant, identity, spiffe_id, &option);
        let d = store.decide_issue(&r);
        if d.outcome < best.2.outcome {
            best = (option, r, d);
        }
    }
    let (pick, req, decision) = best;
    let message = decision.reasons.join("; ");
    let obs = match decision.outcome {
        Outcome::Allow => PolicyObs::Allow,
        Outcome::RequireApproval => PolicyObs::RequireApproval {
            message: match &pick {
                Pick::Approved { name, approver, .. } => {
                    format!("ToolGrantApproval {name} by {approver} does not satisfy the policy: {message}")
                }
                _ => format!(
                    "create a ToolGrantApproval of generation {generation} (by someone other than the requester \
                     where policy says so): {message}"
                ),
            },
        },
        Outcome::Deny if store.invalid_for(&req.namespace).is_some() => PolicyObs::Invalid { message },
        Outcome::Deny => PolicyObs::Deny { message },
    };
    let mut reasons = decision.reasons.clone();
    reasons.extend(
        decision
            .evaluation_errors
            .iter()
            .map(|e| format!("evaluation error: {e}")),
    );
    Evaluated {
        record: Some(record(
            previous,
            DecisionRecord {
                decision_id: new_decision_id(),
                outcome: decision.outcome.as_str().into(),
                generation,
                time: Time(now),
                policies: decision.policies.clone(),
                reasons,
                audit_denials: decision.audit_denials.clone(),
                inputs: inputs(&req),
            },
        )),
        obs,
        pick,
        verdicts,
        audit_denials: decision.audit_denials,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Sensitivity;
    use crate::policy::{AgentPolicyEntry, NamespaceMatcher, compile};
    use serde_json::json;

    fn grant(requester: Option<&str>) -> ToolGrant {
        let mut spec = json!({
            "identityRef": {"name": "bot"}, "taskRef": {"apiVersion": "batch/v1", "kind": "Job", "name": "work"},
            "tools": [{"name": "github", "actions": ["write"], "destinations": ["api.github.com"]}],
            "purpose": "fix", "dataSensitivity": "confidential",
        });
        if let Some(r) = requester {
            spec["requester"] = json!({"username": r, "groups": ["devs"]});
        }
        serde_json::from_value(json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant",
            "metadata": {"name": "g", "namespace": "ns", "generation": 1}, "spec": spec
        }))
        .unwrap()
    }

    fn identity() -> AgentIdentity {
        serde_json::from_value(json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "AgentIdentity",
            "metadata": {"name": "bot", "namespace": "ns"},
            "spec": {"owner": "team-a", "serviceAccountName": "sa", "maxTTL": "30m",
                     "tools": [{"name": "github", "actions": ["read", "write"], "sensitivity": "restricted"}]}
        }))
        .unwrap()
    }

    fn store(text: &str) -> PolicyStore {
        PolicyStore::new(vec![AgentPolicyEntry {
            compiled: compile(text, "p"),
            mode: crate::api::PolicyMode::Enforce,
            namespaces: NamespaceMatcher::All,
        }])
    }

    #[test]
    fn the_request_carries_the_ceilings_classification_and_the_identitys_ttl() {
        let req = request(
            &grant(Some("alice")),
            &identity(),
            "spiffe://td/ns/ns/agent/bot",
            &Pick::None,
        );
        assert_eq!(
            req.tools[0].sensitivity,
            Sensitivity::Restricted,
            "the ceiling's level wins"
        );
        assert_eq!(req.ttl_seconds, 1800, "no ttl on the grant: the identity's maxTTL");
        assert_eq!(req.agent.owner, "team-a");
        assert_eq!(req.requester.username, "alice");
        assert_eq!(req.data_sensitivity, Sensitivity::Confidential);
        let summary = inputs(&req);
        assert_eq!(summary.tools, ["github:write"]);
        assert_eq!(summary.sensitivity, Sensitivity::Restricted);
        assert_eq!(summary.task, "Job/work");
    }

    #[test]
    fn threat_6_no_recorded_requester_means_no_decision_at_all() {
        let s = store(r#"permit (principal, action, resource);"#);
        let e = evaluate(Some(&s), &grant(None), &identity(), "id", &[], Timestamp::now());
        assert_eq!(e.obs, PolicyObs::MissingRequester);
        assert!(e.record.is_none());
    }

    #[test]
    fn threat_27_policies_not_loaded_is_loading_not_a_decision() {
        let e = evaluate(None, &grant(Some("alice")), &identity(), "id", &[], Timestamp::now());
        assert_eq!(e.obs, PolicyObs::Loading);
    }

    #[test]
    fn an_unchanged_decision_keeps_its_id() {
        let s = store(r#"@id("all") permit (principal, action, resource);"#);
        let now = Timestamp::now();
        let mut g = grant(Some("alice"));
        let first = evaluate(Some(&s), &g, &identity(), "id", &[], now).record.unwrap();
        assert_eq!(first.outcome, "Allow");
        assert_eq!(first.policies, ["p/all"]);
        g.status = Some(crate::api::ToolGrantStatus {
            decision: Some(first.clone()),
            ..Default::default()
        });
        let again = evaluate(Some(&s), &g, &identity(), "id", &[], now).record.unwrap();
        assert_eq!(again.decision_id, first.decision_id);
        g.metadata.generation = Some(2);
        let changed = evaluate(Some(&s), &g, &identity(), "id", &[], now).record.unwrap();
        assert_ne!(changed.decision_id, first.decision_id);
    }

    #[test]
    fn threat_26_an_invalid_policy_is_reported_as_invalid_not_as_a_denial() {
        let s = store("permit (principal, action, resource) when { principal.ownr == \"x\" };");
        let e = evaluate(
            Some(&s),
            &grant(Some("alice")),
            &identity(),
            "id",
            &[],
            Timestamp::now(),
        );
        assert!(
            matches!(e.obs, PolicyObs::Invalid { ref message } if message.contains("AgentPolicy p is invalid")),
            "{:?}",
            e.obs
        );
    }
}
