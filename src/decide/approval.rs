//! Which ToolGrantApproval, if any, counts for a grant's current generation.
//!
//! An approval is bound to exactly one generation of one grant: a later spec change
//! voids it; a denial is final for its generation and beats any approval of it; an
//! approval nobody used within its `validFor` expires; one without a recorded
//! approver (created while the webhook was bypassed) never counts. Whether the
//! approver may approve (for example, not the requester) is the policy's call, made
//! with the approval in its context.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::api::{ApprovalDecision, ToolGrant, ToolGrantApproval};

/// How long an approval stays usable when it says nothing.
pub const DEFAULT_VALID_FOR: SignedDuration = SignedDuration::from_hours(1);

/// The approval that counts, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pick {
    None,
    Approved {
        name: String,
        approver: String,
        created: Timestamp,
    },
    Denied {
        name: String,
        approver: String,
        reason: String,
    },
}

/// What became of one approval, for its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub name: String,
    pub state: &'static str,
    pub message: String,
}

fn created(a: &ToolGrantApproval) -> Timestamp {
    a.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Chooses among `approvals` (any approvals in the grant's namespace) for `grant` at
/// `now`, and says what each approval naming this grant amounts to.
pub fn pick(grant: &ToolGrant, approvals: &[&ToolGrantApproval], now: Timestamp) -> (Pick, Vec<Verdict>) {
    let (denied, approved, verdicts) = candidates(grant, approvals, now);
    (
        denied.or_else(|| approved.into_iter().next()).unwrap_or(Pick::None),
        verdicts,
    )
}

/// Every approval that could count, oldest first: a denial (which beats everything)
/// and the usable approvals, for the caller to try in turn (policy may accept one
/// approver and not another, for example not the requester).
pub fn candidates(
    grant: &ToolGrant,
    approvals: &[&ToolGrantApproval],
    now: Timestamp,
) -> (Option<Pick>, Vec<Pick>, Vec<Verdict>) {
    let generation = grant.metadata.generation.unwrap_or_default();
    let used = grant.status.as_ref().and_then(|s| s.approval.as_ref());
    let mut mine: Vec<&ToolGrantApproval> = approvals
        .iter()
        .copied()
        .filter(|a| a.spec.grant_name == grant.name_any())
        .collect();
    mine.sort_by_key(|a| (created(a), a.name_any()));

    let mut verdicts = vec![];
    let mut denied = None;
    let mut approved = vec![];
    for a in mine {
        let name = a.name_any();
        let verdict = |state: &'static str, message: String| Verdict {
            name: name.clone(),
            state,
            message,
        };
        let Some(approver) = a.spec.approver.as_ref().filter(|u| !u.username.is_empty()) else {
            verdicts.push(verdict(
                "Refused",
                "no approver was recorded (Mandate's admission webhook was bypassed)".into(),
            ));
            continue;
        };
        if Some(a.spec.grant_uid.as_str()) != grant.metadata.uid.as_deref() {
            verdicts.push(verdict(
                "Void",
                format!(
                    "it decides ToolGrant object {} but {} is now object {} (deleted and created again)",
                    a.spec.grant_uid,
                    grant.name_any(),
                    grant.metadata.uid.as_deref().unwrap_or("?")
                ),
            ));
            continue;
        }
        if a.spec.grant_generation != generation {
            verdicts.push(verdict(
                "Void",
                format!(
                    "it decides generation {} but the grant is at generation {generation}",
                    a.spec.grant_generation
                ),
            ));
            continue;
        }
        match a.spec.decision {
            ApprovalDecision::Deny => {
                verdicts.push(verdict("Denied", format!("generation {generation} is denied for good")));
                denied.get_or_insert(Pick::Denied {
                    name: name.clone(),
                    approver: approver.username.clone(),
                    reason: a.spec.reason.clone().unwrap_or_default(),
                });
            }
            ApprovalDecision::Approve => {
                let already_used = used.is_some_and(|u| u.name == name && u.generation == generation);
                let valid_for = a
                    .spec
                    .valid_for
                    .map(|d| SignedDuration::try_from(std::time::Duration::from(d)).unwrap_or(DEFAULT_VALID_FOR))
                    .unwrap_or(DEFAULT_VALID_FOR);
                let expires = created(a).checked_add(valid_for).unwrap_or(Timestamp::UNIX_EPOCH);
                if !already_used && now >= expires {
                    verdicts.push(verdict("Expired", format!("not used before {expires}")));
                    continue;
                }
                approved.push(Pick::Approved {
                    name: name.clone(),
                    approver: approver.username.clone(),
                    created: created(a),
                });
                // Settled by the controller once policy has seen it (Used or Refused).
                verdicts.push(verdict("Pending", "considered for this generation".into()));
            }
        }
    }
    (denied, approved, verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApprovalRecord, ToolGrantApprovalSpec, ToolGrantStatus, UserInfo};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    const T0: i64 = 1_800_000_000;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(T0 + secs).unwrap()
    }

    fn grant(generation: i64) -> ToolGrant {
        serde_json::from_value(json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant",
            "metadata": {"name": "g", "namespace": "ns", "uid": "g-uid", "generation": generation},
            "spec": {"identityRef": {"name": "a"}, "taskRef": {"apiVersion": "v1", "kind": "Pod", "name": "p"},
                     "tools": [{"name": "github", "actions": ["write"]}], "purpose": "x"}
        }))
        .unwrap()
    }

    fn approval(
        name: &str,
        generation: i64,
        decision: ApprovalDecision,
        by: Option<&str>,
        at: i64,
    ) -> ToolGrantApproval {
        let mut a = ToolGrantApproval::new(
            name,
            ToolGrantApprovalSpec {
                grant_name: "g".into(),
                grant_uid: "g-uid".into(),
                grant_generation: generation,
                decision,
                reason: Some("looked at it".into()),
                valid_for: None,
                approver: by.map(|u| UserInfo {
                    username: u.into(),
                    ..Default::default()
                }),
            },
        );
        a.metadata.creation_timestamp = Some(Time(ts(at)));
        a
    }

    #[test]
    fn threat_29_an_approval_counts_only_for_the_generation_it_names() {
        let a = approval("a", 1, ApprovalDecision::Approve, Some("bob"), 0);
        let (pick, verdicts) = pick(&grant(2), &[&a], ts(10));
        assert_eq!(pick, Pick::None);
        assert_eq!(verdicts[0].state, "Void");
        let (pick, _) = super::pick(&grant(1), &[&a], ts(10));
        assert!(matches!(pick, Pick::Approved { ref approver, .. } if approver == "bob"));
    }

    #[test]
    fn threat_35_an_approval_does_not_count_for_a_new_grant_of_the_same_name() {
        let a = approval("a", 1, ApprovalDecision::Approve, Some("bob"), 0);
        let mut again = grant(1);
        again.metadata.uid = Some("another-uid".into());
        let (p, v) = pick(&again, &[&a], ts(10));
        assert_eq!(p, Pick::None, "same name and generation, another object");
        assert_eq!(v[0].state, "Void");
        assert!(v[0].message.contains("another-uid"), "{}", v[0].message);
        let deny = approval("no", 1, ApprovalDecision::Deny, Some("carol"), 0);
        let (p, _) = pick(&again, &[&deny], ts(10));
        assert_eq!(p, Pick::None, "nor does a denial of the old object");
    }

    #[test]
    fn a_denial_is_final_for_its_generation_and_beats_approvals() {
        let yes = approval("yes", 1, ApprovalDecision::Approve, Some("bob"), 0);
        let no = approval("no", 1, ApprovalDecision::Deny, Some("carol"), 5);
        let (pick, _) = pick(&grant(1), &[&yes, &no], ts(10));
        assert!(matches!(pick, Pick::Denied { ref approver, .. } if approver == "carol"));
    }

    #[test]
    fn an_unused_approval_expires_but_a_used_one_keeps_renewing() {
        let a = approval("a", 1, ApprovalDecision::Approve, Some("bob"), 0);
        let (p, v) = pick(&grant(1), &[&a], ts(3600));
        assert_eq!(p, Pick::None);
        assert_eq!(v[0].state, "Expired");
        let mut g = grant(1);
        g.status = Some(ToolGrantStatus {
            approval: Some(ApprovalRecord {
                name: "a".into(),
                approver: "bob".into(),
                generation: 1,
                time: Time(ts(0)),
            }),
            ..Default::default()
        });
        let (p, _) = pick(&g, &[&a], ts(7200));
        assert!(matches!(p, Pick::Approved { .. }));
    }

    #[test]
    fn an_approval_without_a_recorded_approver_never_counts() {
        let a = approval("a", 1, ApprovalDecision::Approve, None, 0);
        let (p, v) = pick(&grant(1), &[&a], ts(1));
        assert_eq!(p, Pick::None);
        assert_eq!(v[0].state, "Refused");
    }

    #[test]
    fn approvals_of_other_grants_are_ignored() {
        let mut a = approval("a", 1, ApprovalDecision::Approve, Some("bob"), 0);
        a.spec.grant_name = "other".into();
        let (p, v) = pick(&grant(1), &[&a], ts(1));
        assert_eq!(p, Pick::None);
        assert!(v.is_empty());
    }
}
