//! What should happen to one ToolGrant, given everything observed about it.
//!
//! The order of checks is the order of precedence: a final grant stays final; a
//! deleted grant, a missing or suspended identity, and a finished or vanished task all
//! revoke before anything else is considered; only then is scope checked and a
//! certificate issued or renewed.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::{
    lifetime::{self, Lifetime, Limits},
    scope,
    task::TaskState,
};
use crate::api::{AgentIdentity, GrantPhase, LifetimeCap, RecordFacts, RevocationCause, ToolGrant};

/// The certificate currently in the grant's Secret, as read from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveCert {
    pub serial: String,
    pub not_after: Timestamp,
    pub renew_at: Timestamp,
    pub grant_generation: i64,
    pub task_uid: String,
}

/// What the grant's Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretObs {
    Absent,
    /// A Secret of that name exists and this grant does not control it.
    Foreign,
    /// Our Secret; `None` when its certificate cannot be read.
    Ours(Option<LiveCert>),
}

/// The signing CA as far as a grant is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaObs {
    Ready { not_after: Timestamp },
    Unavailable { reason: &'static str, message: String },
}

/// What policy said about the grant's current generation (see `crate::policy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyObs {
    /// The operator has not loaded the AgentPolicies yet: decide nothing.
    Loading,
    /// The grant carries no recorded requester (created while the webhook was bypassed):
    /// policy cannot judge it, so it is never issued.
    MissingRequester,
    /// An AgentPolicy that selects the grant's namespace does not compile.
    Invalid {
        message: String,
    },
    Allow,
    Deny {
        message: String,
    },
    /// Allowed only once a human approves this generation.
    RequireApproval {
        message: String,
    },
    /// A human denied this generation.
    ApprovalDenied {
        message: String,
    },
}

/// Everything a decision reads. `jitter` is a random number in `[0, 1)`.
pub struct Observed<'a> {
    pub now: Timestamp,
    pub grant: &'a ToolGrant,
    pub identity: Option<&'a AgentIdentity>,
    /// `None` when the task does not exist.
    pub task: Option<TaskState>,
    pub secret: SecretObs,
    pub ca: CaObs,
    pub operator_max_ttl: Duration,
    pub jitter: f64,
    pub policy: PolicyObs,
    /// The revocation record's entries for this grant object (by UID): every serial
    /// ever signed for it that has not expired, including any its status lost.
    pub records: Vec<RecordFacts>,
}

/// The decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Issue a certificate now. `revoke_first` lists serials that must be on the CRL
    /// before the new certificate replaces them (a scope change or a lost Secret).
    Issue {
        lifetime: Lifetime,
        why: &'static str,
        revoke_first: Vec<String>,
        /// Why `revoke_first` are revoked.
        cause: RevocationCause,
    },
    /// Revoke every live serial, delete the Secret, and end the grant in `phase`.
    Revoke {
        phase: GrantPhase,
        reason: &'static str,
        cause: RevocationCause,
        message: String,
        serials: Vec<String>,
    },
    /// The current spec is not allowed (`Denied`), or not yet (`AwaitingApproval`). Live
    /// serials are revoked (the scope they carry is not approved) but the grant may be
    /// issued again once fixed or approved.
    Withhold {
        phase: GrantPhase,
        reason: &'static str,
        message: String,
        serials: Vec<String>,
    },
    /// Nothing to do but report; look again at `requeue_at` (if any).
    Hold {
        phase: GrantPhase,
        ready: bool,
        reason: &'static str,
        message: String,
        requeue_at: Option<Timestamp>,
    },
}

/// Serials of this grant that may still be valid: the Secret's, the status's current
/// one, superseded ones, and any the revocation record holds for this grant object,
/// unless expired or revoked in the record. Deduplicated, in that order.
pub fn live_serials(o: &Observed<'_>) -> Vec<String> {
    let revoked_in_record = |s: &str| o.records.iter().any(|r| r.serial == s && r.revoked.is_some());
    let mut out: Vec<String> = vec![];
    let mut push = |s: &str| {
        if !out.iter().any(|x| x == s) && !revoked_in_record(s) {
            out.push(s.to_string());
        }
    };
    if let SecretObs::Ours(Some(c)) = &o.secret
        && c.not_after > o.now
    {
        push(&c.serial);
    }
    if let Some(status) = &o.grant.status {
        if let Some(c) = &status.certificate
            && c.not_after.0 > o.now
        {
            push(&c.serial_number);
        }
        for s in status.superseded.iter().filter(|s| s.not_after.0 > o.now) {
            push(&s.serial_number);
        }
    }
    for r in o.records.iter().filter(|r| r.is_live(o.now)) {
        push(&r.serial);
    }
    out
}

/// Live serials the record holds that no Secret or status ever carried: signed and
/// recorded, then the operator crashed before writing them out. Nobody holds their keys.
fn undelivered(o: &Observed<'_>) -> Vec<String> {
    let status = o.grant.status.clone().unwrap_or_default();
    let known = |s: &str| {
        matches!(&o.secret, SecretObs::Ours(Some(c)) if c.serial == s)
            || status.certificate.as_ref().is_some_and(|c| c.serial_number == s)
            || status.superseded.iter().any(|x| x.serial_number == s)
    };
    o.records
        .iter()
        .filter(|r| r.is_live(o.now) && !known(&r.serial))
        .map(|r| r.serial.clone())
        .collect()
}

/// The final revocation the record holds for this grant object, if any: the record,
/// not the status (which a user with access to it could rewrite), says a grant ended.
fn final_in_record(o: &Observed<'_>) -> Option<RevocationCause> {
    o.records
        .iter()
        .filter_map(|r| r.revoked)
        .filter(|(_, cause)| cause.is_final())
        .min_by_key(|(at, _)| *at)
        .map(|(_, cause)| cause)
}

fn revoke(o: &Observed<'_>, phase: GrantPhase, cause: RevocationCause, message: String) -> Plan {
    Plan::Revoke {
        phase,
        reason: cause.as_str(),
        cause,
        message,
        serials: live_serials(o),
    }
}

/// Withholds the current spec (Denied or AwaitingApproval), revoking live serials.
fn withhold(o: &Observed<'_>, phase: GrantPhase, reason: &'static str, message: String) -> Plan {
    Plan::Withhold {
        phase,
        reason,
        message,
        serials: live_serials(o),
    }
}

fn pending(reason: &'static str, message: String) -> Plan {
    Plan::Hold {
        phase: GrantPhase::Pending,
        ready: false,
        reason,
        message,
        requeue_at: None,
    }
}

/// The scope a certificate for `grant`, bound to the task object `task_uid`, carries.
pub fn scope_for(grant: &ToolGrant, task_uid: &str) -> crate::pki::GrantScope {
    crate::pki::GrantScope {
        version: crate::pki::SCOPE_VERSION,
        grant_uid: grant.metadata.uid.clone().unwrap_or_default(),
        grant_generation: grant.metadata.generation.unwrap_or_default(),
        grant_name: grant.name_any(),
        namespace: grant.metadata.namespace.clone().unwrap_or_default(),
        task_uid: task_uid.to_string(),
        task_kind: grant.spec.task_ref.kind.clone(),
        task_name: grant.spec.task_ref.name.clone(),
        tools: grant
            .spec
            .tools
            .iter()
            .map(|t| crate::pki::ScopeTool {
                name: t.name.clone(),
                actions: t.actions.clone(),
                destinations: t.destinations.clone(),
            })
            .collect(),
    }
}

/// Decides what to do with a grant.
pub fn decide(o: &Observed<'_>) -> Plan {
    let grant = o.grant;
    let status = grant.status.clone().unwrap_or_default();
    let generation = grant.metadata.generation.unwrap_or_default();
    let ever_issued = status.first_issued.is_some() || !live_serials(o).is_empty() || !o.records.is_empty();

    let recorded_end = final_in_record(o);
    if status.phase.filter(|p| p.is_final()).is_none()
        && let Some(cause) = recorded_end
    {
        // The record says this grant ended, the status does not (it was rewritten, or a
        // crash came between the two): the record wins.
        let phase = if cause == RevocationCause::MaxLifetimeReached {
            GrantPhase::Expired
        } else {
            GrantPhase::Revoked
        };
        // The status then says what it would have said without the crash: the record's
        // cause, not that a revocation was completed.
        return Plan::Revoke {
            phase,
            reason: cause.as_str(),
            cause,
            message: format!(
                "the revocation record says this grant ended ({}); completing its revocation",
                cause.as_str()
            ),
            serials: live_serials(o),
        };
    }
    if let Some(phase) = status.phase.filter(|p| p.is_final()) {
        // Revocation is final; repeat it only if something was left live: a Secret still
        // there (a crash between recording the revocation and deleting it), or a serial
        // the revocation record does not list. The status keeps the revoked
        // certificate's details, so its serial alone is no reason: revoking it again
        // would re-sign and rewrite the whole CRL on every look at a revoked grant.
        let recorded = status
            .revocation
            .as_ref()
            .map(|r| r.serial_numbers.as_slice())
            .unwrap_or_default();
        let unrecorded: Vec<String> = live_serials(o).into_iter().filter(|s| !recorded.contains(s)).collect();
        if !unrecorded.is_empty() || matches!(o.secret, SecretObs::Ours(_)) {
            let r = status.revocation.as_ref().map(|r| r.reason.clone()).unwrap_or_default();
            let cause = recorded_end.unwrap_or(if phase == GrantPhase::Expired {
                RevocationCause::MaxLifetimeReached
            } else {
                RevocationCause::GrantDeleted
            });
            let mut serials = unrecorded;
            // The Secret's certificate is revoked (again, harmlessly) before it goes,
            // unless the record already says it is.
            if let SecretObs::Ours(Some(c)) = &o.secret
                && !serials.contains(&c.serial)
                && !o.records.iter().any(|r| r.serial == c.serial && r.revoked.is_some())
            {
                serials.push(c.serial.clone());
            }
            return Plan::Revoke {
                phase,
                reason: "RevocationCompleted",
                cause,
                message: format!("completing the earlier revocation ({r})"),
                serials,
            };
        }
        return Plan::Hold {
            phase,
            ready: false,
            reason: "Final",
            message: "revocation is final".into(),
            requeue_at: None,
        };
    }
    if grant.metadata.deletion_timestamp.is_some() {
        return revoke(
            o,
            GrantPhase::Revoked,
            RevocationCause::GrantDeleted,
            "the ToolGrant was deleted".into(),
        );
    }

    let identity_name = &grant.spec.identity_ref.name;
    let Some(identity) = o.identity else {
        return if ever_issued {
            revoke(
                o,
                GrantPhase::Revoked,
                RevocationCause::IdentityDeleted,
                format!("AgentIdentity {identity_name} was deleted"),
            )
        } else {
            pending(
                "IdentityNotFound",
                format!("waiting for AgentIdentity {identity_name} in this namespace"),
            )
        };
    };
    if identity.spec.suspended {
        return if ever_issued {
            revoke(
                o,
                GrantPhase::Revoked,
                RevocationCause::IdentitySuspended,
                format!("AgentIdentity {identity_name} is suspended"),
            )
        } else {
            pending(
                "IdentitySuspended",
                format!("AgentIdentity {identity_name} is suspended"),
            )
        };
    }

    let task_ref = &grant.spec.task_ref;
    let task_name = format!("{} {}", task_ref.kind, task_ref.name);
    let Some(task) = &o.task else {
        return if ever_issued {
            revoke(
                o,
                GrantPhase::Revoked,
                RevocationCause::TaskDeleted,
                format!("{task_name} no longer exists"),
            )
        } else {
            pending("TaskNotFound", format!("waiting for {task_name} in this namespace"))
        };
    };
    let live = match &o.secret {
        SecretObs::Ours(Some(c)) => Some(c),
        _ => None,
    };
    if let Some(c) = live
        && c.task_uid != task.uid
    {
        // Same name, new object: the task the certificate was issued for is gone.
        return revoke(
            o,
            GrantPhase::Revoked,
            RevocationCause::TaskDeleted,
            format!("{task_name} was replaced by a new object"),
        );
    }
    if let Some((outcome, detail)) = &task.finished {
        let why = outcome.revocation_cause();
        return revoke(o, GrantPhase::Revoked, why, format!("{task_name} finished: {detail}"));
    }

    if let Err(e) = scope::validate(&grant.spec.tools) {
        return withhold(o, GrantPhase::Denied, "InvalidToolName", e.to_string());
    }
    // The schema bounds each list, not their product: a scope can still be too large
    // for a certificate. That is a property of the spec, so it is a terminal answer
    // for this generation, not an error to retry.
    if let Err(e) = crate::pki::check_scope(&scope_for(grant, &task.uid)) {
        return withhold(o, GrantPhase::Denied, "ScopeTooLarge", e.to_string());
    }
    let excess = scope::excess(&grant.spec.tools, &identity.spec.tools);
    if !excess.is_empty() {
        let named: Vec<String> = excess.iter().map(ToString::to_string).collect();
        return withhold(
            o,
            GrantPhase::Denied,
            "ExceedsIdentityCeiling",
            format!(
                "the grant asks for more than AgentIdentity {identity_name} allows: {}",
                named.join("; ")
            ),
        );
    }

    // Policy decides after the ceiling (which always applies first) and before
    // anything is written.
    let hold_as_is = |reason: &'static str, message: String| Plan::Hold {
        phase: status.phase.unwrap_or(GrantPhase::Pending),
        ready: false,
        reason,
        message,
        requeue_at: None,
    };
    match &o.policy {
        PolicyObs::Allow => {}
        PolicyObs::Loading => {
            return hold_as_is("PoliciesLoading", "waiting for the AgentPolicies to be loaded".into());
        }
        // An invalid policy stops issuance and renewal in the namespaces it selects but
        // does not revoke: a typo must not become an outage; the live certificate
        // (short-lived by design) simply is not renewed until the policy is fixed.
        PolicyObs::Invalid { message } => return hold_as_is("PolicyInvalid", message.clone()),
        PolicyObs::MissingRequester => {
            return withhold(
                o,
                GrantPhase::Denied,
                "MissingRequester",
                "spec.requester was not recorded at creation (Mandate's admission webhook was bypassed); \
                          delete the grant and create it again"
                    .into(),
            );
        }
        PolicyObs::Deny { message } => {
            return withhold(o, GrantPhase::Denied, "PolicyDenied", message.clone());
        }
        PolicyObs::ApprovalDenied { message } => {
            return withhold(o, GrantPhase::Denied, "ApprovalDenied", message.clone());
        }
        PolicyObs::RequireApproval { message } => {
            return withhold(o, GrantPhase::AwaitingApproval, "AwaitingApproval", message.clone());
        }
    }

    if o.secret == SecretObs::Foreign {
        let name = grant.spec.secret_name.clone().unwrap_or_else(|| grant.name_any());
        return pending(
            "SecretConflict",
            format!(
                "Secret {name} exists and is not owned by this grant; it is left untouched: choose another spec.secretName"
            ),
        );
    }
    let ca_not_after = match &o.ca {
        CaObs::Ready { not_after } => *not_after,
        CaObs::Unavailable { reason, message } => return pending(reason, message.clone()),
    };

    let first_issued = status.first_issued.as_ref().map(|t| t.0).unwrap_or(o.now);
    let max_lifetime: Duration = identity.spec.max_grant_lifetime.into();
    let limits = Limits {
        now: o.now,
        requested_ttl: grant.spec.ttl.map(Into::into),
        identity_max_ttl: identity.spec.max_ttl.into(),
        operator_max_ttl: o.operator_max_ttl,
        task_deadline: task.deadline,
        grant_expires_at: lifetime::after(first_issued, max_lifetime),
        ca_not_after,
    };

    if let Some(c) = live
        && c.grant_generation == generation
        && o.now < c.renew_at
    {
        return Plan::Hold {
            phase: GrantPhase::Issued,
            ready: true,
            reason: "Issued",
            message: format!("certificate {} is valid until {}", c.serial, c.not_after),
            requeue_at: Some(c.renew_at),
        };
    }

    let (why, revoke_first, cause) = match live {
        Some(c) if c.grant_generation != generation => ("ScopeChanged", live_serials(o), RevocationCause::ScopeChanged),
        // A renewal keeps the current certificate valid (superseded) until it expires;
        // only serials nobody ever received are revoked: recorded, then a crash before
        // their Secret was written.
        Some(_) => ("Renewal", undelivered(o), RevocationCause::SecretLost),
        // A certificate in status but none in the Secret: the Secret was deleted or
        // emptied. Revoke what it held before issuing a replacement.
        None => ("Initial", live_serials(o), RevocationCause::SecretLost),
    };
    match lifetime::plan(&limits, o.jitter) {
        Ok(lifetime) => Plan::Issue {
            lifetime,
            why,
            revoke_first,
            cause,
        },
        Err(no_time) => match no_time.cap {
            LifetimeCap::GrantLifetime => revoke(
                o,
                GrantPhase::Expired,
                RevocationCause::MaxLifetimeReached,
                format!("the grant reached its maximum lifetime at {}", no_time.until),
            ),
            LifetimeCap::TaskDeadline => revoke(
                o,
                GrantPhase::Revoked,
                RevocationCause::TaskDeadlineExceeded,
                format!("{task_name} passed its deadline at {}", no_time.until),
            ),
            cap => pending(
                "NoTimeLeft",
                format!("{cap:?} leaves less than the minimum certificate lifetime"),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::task::TaskState;
    use serde_json::json;

    fn grant() -> ToolGrant {
        serde_json::from_value(json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant",
            "metadata": {"name": "g", "namespace": "ns", "uid": "g-uid", "generation": 1},
            "spec": {"identityRef": {"name": "a"}, "taskRef": {"apiVersion": "v1", "kind": "Pod", "name": "p"},
                     "tools": [{"name": "github", "actions": ["read"]}], "purpose": "x",
                     "requester": {"username": "alice"}}
        }))
        .unwrap()
    }

    fn identity() -> AgentIdentity {
        serde_json::from_value(json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "AgentIdentity",
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"owner": "team", "serviceAccountName": "sa", "tools": [{"name": "github", "actions": ["read"]}]}
        }))
        .unwrap()
    }

    fn observed<'a>(g: &'a ToolGrant, id: &'a AgentIdentity, secret: SecretObs, policy: PolicyObs) -> Observed<'a> {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        Observed {
            now,
            grant: g,
            identity: Some(id),
            task: Some(TaskState {
                uid: "t-uid".into(),
                started_at: Some(now),
                deadline: None,
                finished: None,
                finished_at: None,
            }),
            secret,
            ca: CaObs::Ready {
                not_after: now + SignedDuration::from_hours(1000),
            },
            operator_max_ttl: Duration::from_secs(86400),
            jitter: 0.5,
            policy,
            records: vec![],
        }
    }

    fn live(now: Timestamp) -> SecretObs {
        SecretObs::Ours(Some(LiveCert {
            serial: "ab".into(),
            not_after: now + SignedDuration::from_hours(1),
            renew_at: now + SignedDuration::from_mins(40),
            grant_generation: 1,
            task_uid: "t-uid".into(),
        }))
    }

    use k8s_openapi::jiff::SignedDuration;

    #[test]
    fn a_permitted_grant_is_issued() {
        let (g, id) = (grant(), identity());
        let plan = decide(&observed(&g, &id, SecretObs::Absent, PolicyObs::Allow));
        assert!(matches!(plan, Plan::Issue { why: "Initial", .. }), "{plan:?}");
    }

    /// A revoked grant keeps its certificate's details in status: looking at it again
    /// revokes nothing again (each revocation re-signs and rewrites the CRL), unless a
    /// Secret is left or a serial is missing from the revocation record.
    #[test]
    fn a_revoked_grant_is_revoked_once() {
        let id = identity();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let revoked = |serials: &[&str]| -> ToolGrant {
            let mut g = grant();
            g.status = Some(
                serde_json::from_value(json!({
                    "phase": "Revoked",
                    "certificate": {
                        "serialNumber": "ab", "notBefore": "2027-01-15T07:00:00Z", "notAfter": now + SignedDuration::from_hours(1),
                        "renewAfter": now, "lifetimeCap": "RequestedTTL", "secretName": "g", "spiffeID": "spiffe://x/ns/ns/agent/a",
                        "sha256Fingerprint": "00", "grantGeneration": 1,
                    },
                    "revocation": { "reason": "TaskCompleted", "time": now, "serialNumbers": serials },
                }))
                .unwrap(),
            );
            g
        };
        let done = revoked(&["ab"]);
        let plan = decide(&observed(&done, &id, SecretObs::Absent, PolicyObs::Allow));
        assert!(matches!(plan, Plan::Hold { reason: "Final", .. }), "{plan:?}");
        // The Secret is still there: it goes, its serial revoked again on the way.
        let plan = decide(&observed(&done, &id, live(now), PolicyObs::Allow));
        match plan {
            Plan::Revoke { reason, serials, .. } => {
                assert_eq!(reason, "RevocationCompleted");
                assert_eq!(serials, ["ab"]);
            }
            other => panic!("{other:?}"),
        }
        // A serial the record does not list is revoked.
        let unlisted = revoked(&[]);
        match decide(&observed(&unlisted, &id, SecretObs::Absent, PolicyObs::Allow)) {
            Plan::Revoke { serials, .. } => assert_eq!(serials, ["ab"]),
            other => panic!("{other:?}"),
        }
    }

    fn record(serial: &str, now: Timestamp, revoked: Option<RevocationCause>) -> RecordFacts {
        RecordFacts {
            serial: serial.into(),
            not_after: now + SignedDuration::from_hours(1),
            grant_namespace: "ns".into(),
            grant_name: "g".into(),
            grant_uid: "g-uid".into(),
            generation: 1,
            task_uid: "t-uid".into(),
            revoked: revoked.map(|c| (now, c)),
            deleting: false,
        }
    }

    /// A crash between writing a renewed certificate's Secret and the status leaves a
    /// serial the status never held; a later renewal overwrote the Secret. Only the
    /// revocation record still knows it, and the task's end revokes it.
    #[test]
    fn threat_31_a_serial_only_the_record_knows_is_revoked_when_the_task_ends() {
        let (g, id) = (grant(), identity());
        let mut o = observed(&g, &id, SecretObs::Absent, PolicyObs::Allow);
        o.secret = live(o.now);
        o.records = vec![record("ab", o.now, None), record("forgotten", o.now, None)];
        o.task.as_mut().unwrap().finished = Some((crate::decide::task::Outcome::Succeeded, "done".into()));
        match decide(&o) {
            Plan::Revoke { cause, serials, .. } => {
                assert_eq!(cause, RevocationCause::TaskCompleted);
                assert_eq!(serials, ["ab", "forgotten"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_serial_the_record_has_revoked_is_not_revoked_again() {
        let (g, id) = (grant(), identity());
        let mut o = observed(&g, &id, SecretObs::Absent, PolicyObs::Allow);
        o.secret = live(o.now);
        o.records = vec![record("ab", o.now, Some(RevocationCause::ScopeChanged))];
        o.task.as_mut().unwrap().finished = Some((crate::decide::task::Outcome::Failed, "boom".into()));
        match decide(&o) {
            Plan::Revoke { serials, .. } => assert!(serials.is_empty(), "{serials:?}"),
            other => panic!("{other:?}"),
        }
    }

    /// Finality comes from the record: a status rewritten to look live (by anyone who
    /// may write it) does not bring a revoked grant back.
    #[test]
    fn threat_37_the_record_not_the_status_says_a_grant_ended() {
        let (mut g, id) = (grant(), identity());
        g.status = Some(crate::api::ToolGrantStatus {
            phase: Some(GrantPhase::Issued),
            ..Default::default()
        });
        let mut o = observed(&g, &id, SecretObs::Absent, PolicyObs::Allow);
        o.records = vec![record("ab", o.now, Some(RevocationCause::TaskCompleted))];
        match decide(&o) {
            Plan::Revoke {
                phase, reason, cause, ..
            } => {
                assert_eq!(phase, GrantPhase::Revoked);
                assert_eq!(reason, "TaskCompleted", "the status says why, as without a crash");
                assert_eq!(cause, RevocationCause::TaskCompleted);
            }
            other => panic!("{other:?}"),
        }
        // A non-final revocation (a scope change) does not end the grant.
        o.records = vec![record("ab", o.now, Some(RevocationCause::ScopeChanged))];
        assert!(matches!(decide(&o), Plan::Issue { .. }));
    }

    #[test]
    fn threat_33_a_scope_too_large_for_a_certificate_is_denied_once_not_retried() {
        let (mut g, mut id) = (grant(), identity());
        let actions: Vec<String> = (0..32).map(|i| format!("{i:02}{}", "a".repeat(60))).collect();
        let tools: Vec<crate::api::ToolScope> = (0..16)
            .map(|i| crate::api::ToolScope {
                name: format!("tool-{i}"),
                actions: actions.clone(),
                destinations: vec![],
                sensitivity: None,
            })
            .collect();
        g.spec.tools = tools.clone();
        id.spec.tools = tools;
        match decide(&observed(&g, &id, SecretObs::Absent, PolicyObs::Allow)) {
            Plan::Withhold {
                phase, reason, message, ..
            } => {
                assert_eq!((phase, reason), (GrantPhase::Denied, "ScopeTooLarge"));
                assert!(message.contains("fewer tools"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_policy_denial_revokes_the_live_certificate() {
        let (g, id) = (grant(), identity());
        let o = observed(&g, &id, SecretObs::Absent, PolicyObs::Deny { message: "no".into() });
        let o = Observed {
            secret: live(o.now),
            ..o
        };
        match decide(&o) {
            Plan::Withhold { reason, serials, .. } => {
                assert_eq!(reason, "PolicyDenied");
                assert_eq!(serials, ["ab"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn threat_27_policies_not_loaded_yet_issue_nothing_and_revoke_nothing() {
        let (g, id) = (grant(), identity());
        let o = observed(&g, &id, SecretObs::Absent, PolicyObs::Loading);
        let o = Observed {
            secret: live(o.now),
            ..o
        };
        assert!(matches!(
            decide(&o),
            Plan::Hold {
                ready: false,
                reason: "PoliciesLoading",
                ..
            }
        ));
    }

    #[test]
    fn threat_26_an_invalid_policy_holds_issuance_without_revoking() {
        let (g, id) = (grant(), identity());
        let plan = decide(&observed(
            &g,
            &id,
            SecretObs::Absent,
            PolicyObs::Invalid {
                message: "line 3".into(),
            },
        ));
        match plan {
            Plan::Hold {
                reason, message, phase, ..
            } => {
                assert_eq!(reason, "PolicyInvalid");
                assert_eq!(message, "line 3");
                assert_eq!(phase, GrantPhase::Pending);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn approval_required_waits_and_revokes_what_was_not_approved() {
        let (g, id) = (grant(), identity());
        let o = observed(
            &g,
            &id,
            SecretObs::Absent,
            PolicyObs::RequireApproval {
                message: "writes".into(),
            },
        );
        let o = Observed {
            secret: live(o.now),
            ..o
        };
        assert_eq!(
            decide(&o),
            Plan::Withhold {
                phase: GrantPhase::AwaitingApproval,
                reason: "AwaitingApproval",
                message: "writes".into(),
                serials: vec!["ab".into()]
            }
        );
    }

    #[test]
    fn threat_6_a_grant_without_a_recorded_requester_is_never_issued() {
        let (g, id) = (grant(), identity());
        let plan = decide(&observed(&g, &id, SecretObs::Absent, PolicyObs::MissingRequester));
        assert!(matches!(
            plan,
            Plan::Withhold {
                reason: "MissingRequester",
                ..
            }
        ));
    }

    #[test]
    fn the_ceiling_applies_before_policy() {
        let (mut g, id) = (grant(), identity());
        g.spec.tools[0].actions.push("write".into());
        let plan = decide(&observed(&g, &id, SecretObs::Absent, PolicyObs::Allow));
        assert!(matches!(
            plan,
            Plan::Withhold {
                reason: "ExceedsIdentityCeiling",
                ..
            }
        ));
    }
}
