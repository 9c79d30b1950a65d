//! What a grant's status becomes for each [`Plan`](super::grant::Plan), and what is
//! announced once it is written.
//!
//! Pure, like the plan itself: the reconcile performs the plan's writes, writes the
//! drafted status (when it changed), and only then posts the announcement (an Event
//! and its log line). So nothing is announced that the status does not record, and a
//! reconcile that fails before its status write announces nothing; the retry does.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::{
    api::{
        ApprovalRecord, CertificateStatus, DecisionRecord, GrantPhase, LifetimeCap, RevocationStatus,
        SupersededCertificate, ToolGrantStatus,
    },
    conditions::{self, Desired},
};

/// How an announcement is posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// An Event (and the log line beside it) to post after the status is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub severity: Severity,
    pub reason: &'static str,
    /// The Event's action: Issue, Revoke, Withhold, Wait.
    pub action: &'static str,
    pub note: String,
}

/// The status to write and what to announce once it is written.
#[derive(Clone, Debug, PartialEq)]
pub struct Draft {
    pub status: ToolGrantStatus,
    /// Whether `status` differs from what the grant has (no write otherwise).
    pub write: bool,
    pub announcement: Option<Announcement>,
}

impl Draft {
    fn new(current: Option<&ToolGrantStatus>, status: ToolGrantStatus, announcement: Option<Announcement>) -> Draft {
        let write = current != Some(&status);
        Draft {
            status,
            write,
            announcement: announcement.filter(|_| write),
        }
    }
}

/// What is known of the certificate just signed.
#[derive(Clone, Debug)]
pub struct Signed {
    pub serial: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub renew_at: Timestamp,
    pub cap: LifetimeCap,
    pub spiffe_id: String,
    pub sha256_fingerprint: String,
    pub secret_name: String,
    /// Why it was issued (`Issued`, `Renewal`, `ScopeChanged`, ...).
    pub why: &'static str,
    /// The certificate the grant's Secret held until now, if readable: after a crash
    /// between the Secret and the status writes, the status names an older one.
    pub replaced_in_secret: Option<(String, Timestamp)>,
    /// Serials revoked before this issuance (they are not superseded: they are gone).
    pub revoked_first: Vec<String>,
}

/// The status of a grant that was just issued (or renewed) a certificate.
pub fn issued(
    current: Option<&ToolGrantStatus>,
    signed: Signed,
    decision: Option<DecisionRecord>,
    approval: Option<ApprovalRecord>,
    generation: Option<i64>,
    now: Timestamp,
) -> Draft {
    let previous = current.cloned().unwrap_or_default();
    let renewal = signed.why == "Renewal";
    let mut superseded = previous.superseded.clone();
    // A renewal leaves the replaced certificate valid until it expires: it stays listed
    // so the grant's revocation revokes it too.
    let mut supersede = |serial: &str, not_after: Timestamp| {
        if renewal && not_after > now && !superseded.iter().any(|s| s.serial_number == serial) {
            superseded.push(SupersededCertificate {
                serial_number: serial.to_string(),
                not_after: Time(not_after),
            });
        }
    };
    if let Some(old) = &previous.certificate {
        supersede(&old.serial_number, old.not_after.0);
    }
    if let Some((serial, not_after)) = &signed.replaced_in_secret {
        supersede(serial, *not_after);
    }
    superseded.retain(|s| s.not_after.0 > now && !signed.revoked_first.contains(&s.serial_number));
    let decision_id = decision.as_ref().map(|d| d.decision_id.clone()).unwrap_or_default();
    let cert = CertificateStatus {
        serial_number: signed.serial.clone(),
        not_before: Time(signed.not_before),
        not_after: Time(signed.not_after),
        renew_after: Time(signed.renew_at),
        lifetime_cap: signed.cap,
        secret_name: signed.secret_name,
        spiffe_id: signed.spiffe_id,
        sha256_fingerprint: signed.sha256_fingerprint,
        grant_generation: generation.unwrap_or_default(),
    };
    let message = format!(
        "certificate {} issued until {} (capped by {:?}); decision {decision_id}",
        signed.serial, signed.not_after, signed.cap
    );
    let status = ToolGrantStatus {
        phase: Some(GrantPhase::Issued),
        certificate: Some(cert),
        revocation: None,
        superseded,
        first_issued: previous.first_issued.clone().or(Some(Time(now))),
        decision,
        approval,
        observed_generation: generation,
        conditions: conditions::merge(
            &previous.conditions,
            vec![
                Desired {
                    type_: conditions::READY,
                    status: true,
                    reason: signed.why,
                    message: message.clone(),
                },
                Desired {
                    type_: conditions::REVOKED,
                    status: false,
                    reason: "NotRevoked",
                    message: String::new(),
                },
            ],
            generation,
            now,
        ),
    };
    // A new certificate is always written and always announced.
    Draft {
        status,
        write: true,
        announcement: Some(Announcement {
            severity: Severity::Normal,
            reason: signed.why,
            action: "Issue",
            note: message,
        }),
    }
}

/// The status of a grant whose certificates were just revoked (Revoked, Expired) or
/// withdrawn (Denied): no superseded serials remain, the rest of the status is kept.
fn ended(
    previous: &ToolGrantStatus,
    phase: GrantPhase,
    desired: Vec<Desired<'_>>,
    generation: Option<i64>,
    now: Timestamp,
) -> ToolGrantStatus {
    ToolGrantStatus {
        phase: Some(phase),
        superseded: vec![],
        observed_generation: generation,
        conditions: conditions::merge(&previous.conditions, desired, generation, now),
        ..previous.clone()
    }
}

/// The status of a grant whose `serials` were just revoked, ending it in `phase`.
/// Announced once: completing an earlier revocation (after a crash) adds the serials
/// to it quietly.
pub fn revoked(
    current: Option<&ToolGrantStatus>,
    phase: GrantPhase,
    reason: &'static str,
    message: String,
    serials: &[String],
    generation: Option<i64>,
    now: Timestamp,
) -> Draft {
    let previous = current.cloned().unwrap_or_default();
    let already = previous.phase == Some(phase);
    let revocation = if already {
        // Completing an earlier revocation: its record also lists what was revoked now,
        // so the next look finds nothing left to do.
        previous.revocation.clone().map(|mut r| {
            for s in serials {
                if !r.serial_numbers.contains(s) {
                    r.serial_numbers.push(s.clone());
                }
            }
            r
        })
    } else {
        Some(RevocationStatus {
            reason: reason.to_string(),
            message: Some(message.clone()),
            time: Time(now),
            serial_numbers: serials.to_vec(),
        })
    };
    let desired = vec![
        Desired {
            type_: conditions::READY,
            status: false,
            reason,
            message: message.clone(),
        },
        Desired {
            type_: conditions::REVOKED,
            status: true,
            reason,
            message: message.clone(),
        },
    ];
    let status = ToolGrantStatus {
        revocation,
        ..ended(&previous, phase, desired, generation, now)
    };
    let announcement = (!already).then_some(Announcement {
        severity: Severity::Normal,
        reason,
        action: "Revoke",
        note: message,
    });
    Draft::new(current, status, announcement)
}

/// The status of a grant whose current spec is withheld (Denied, AwaitingApproval),
/// its live `serials` revoked. Announced on a change of phase or generation, or when
/// something was revoked.
#[allow(clippy::too_many_arguments)]
pub fn withheld(
    current: Option<&ToolGrantStatus>,
    phase: GrantPhase,
    reason: &'static str,
    message: String,
    serials: &[String],
    decision: Option<DecisionRecord>,
    generation: Option<i64>,
    now: Timestamp,
) -> Draft {
    let previous = current.cloned().unwrap_or_default();
    let desired = vec![Desired {
        type_: conditions::READY,
        status: false,
        reason,
        message: message.clone(),
    }];
    let decision_id = decision.as_ref().map(|d| d.decision_id.clone()).unwrap_or_default();
    let status = ToolGrantStatus {
        decision,
        ..ended(&previous, phase, desired, generation, now)
    };
    let transition = previous.phase != Some(phase) || previous.observed_generation != generation || !serials.is_empty();
    let announcement = transition.then(|| Announcement {
        severity: if phase == GrantPhase::AwaitingApproval {
            Severity::Normal
        } else {
            Severity::Warning
        },
        reason,
        action: "Withhold",
        note: if decision_id.is_empty() {
            message
        } else {
            format!("{message} (decision {decision_id})")
        },
    });
    Draft::new(current, status, announcement)
}

/// The status of a grant held where it is (issued and current, waiting for something,
/// or final). `adopted` is the Secret's certificate when the status names another one
/// (a crash between the Secret and the status writes). Announced when it starts
/// waiting for a new reason.
#[allow(clippy::too_many_arguments)]
pub fn held(
    current: Option<&ToolGrantStatus>,
    phase: GrantPhase,
    ready: bool,
    reason: &'static str,
    message: String,
    decision: Option<DecisionRecord>,
    adopted: Option<(CertificateStatus, Vec<SupersededCertificate>)>,
    generation: Option<i64>,
    now: Timestamp,
) -> Draft {
    let previous = current.cloned().unwrap_or_default();
    // An issued grant whose status already reports this generation as ready keeps its
    // conditions as written at issuance, and a revoked or expired one keeps those its
    // revocation wrote (they say why): rewriting only the wording would cost a write, an
    // Event and a reconcile per grant for nothing.
    let unchanged = (phase == GrantPhase::Issued
        && previous.phase == Some(GrantPhase::Issued)
        && previous.observed_generation == generation
        && conditions::is_true(&previous.conditions, conditions::READY))
        || (phase.is_final() && previous.phase == Some(phase));
    let conditions = if unchanged {
        previous.conditions.clone()
    } else {
        conditions::merge(
            &previous.conditions,
            vec![Desired {
                type_: conditions::READY,
                status: ready,
                reason,
                message: message.clone(),
            }],
            generation,
            now,
        )
    };
    let mut status = ToolGrantStatus {
        phase: Some(phase),
        observed_generation: generation,
        conditions,
        decision,
        ..previous.clone()
    };
    if phase == GrantPhase::Issued
        && let Some((certificate, superseded)) = adopted
    {
        status.certificate = Some(certificate);
        status.superseded = superseded;
    }
    let new_reason = previous
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .map(|c| c.reason.as_str())
        != Some(reason);
    let announcement = (new_reason && !ready).then_some(Announcement {
        severity: Severity::Warning,
        reason,
        action: "Wait",
        note: message,
    });
    Draft::new(current, status, announcement)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn signed(serial: &str, why: &'static str) -> Signed {
        Signed {
            serial: serial.into(),
            not_before: at(0),
            not_after: at(3600),
            renew_at: at(2400),
            cap: LifetimeCap::RequestedTTL,
            spiffe_id: "spiffe://t/ns/a/agent/x".into(),
            sha256_fingerprint: "ff".into(),
            secret_name: "g".into(),
            why,
            replaced_in_secret: None,
            revoked_first: vec![],
        }
    }

    #[test]
    fn a_renewal_supersedes_the_old_certificate_and_the_one_in_the_secret() {
        let first = issued(None, signed("aa", "Issued"), None, None, Some(1), at(0)).status;
        let mut s = signed("cc", "Renewal");
        s.replaced_in_secret = Some(("bb".into(), at(3000)));
        let renewed = issued(Some(&first), s, None, None, Some(1), at(2500));
        let kept: Vec<_> = renewed
            .status
            .superseded
            .iter()
            .map(|s| s.serial_number.as_str())
            .collect();
        assert_eq!(kept, ["aa", "bb"]);
        assert_eq!(renewed.announcement.unwrap().action, "Issue");
        // A scope change revokes the old one first: it is not superseded, it is gone.
        let mut s = signed("dd", "Renewal");
        s.revoked_first = vec!["cc".into()];
        let rescoped = issued(Some(&renewed.status), s, None, None, Some(2), at(2600));
        assert!(rescoped.status.superseded.iter().all(|s| s.serial_number != "cc"));
    }

    #[test]
    fn a_revocation_is_announced_once_and_completing_it_is_quiet() {
        let live = issued(None, signed("aa", "Issued"), None, None, Some(1), at(0)).status;
        let first = revoked(
            Some(&live),
            GrantPhase::Revoked,
            "TaskCompleted",
            "the task completed".into(),
            &["aa".into()],
            Some(1),
            at(10),
        );
        assert!(first.write);
        assert_eq!(first.announcement.as_ref().unwrap().reason, "TaskCompleted");
        let again = revoked(
            Some(&first.status),
            GrantPhase::Revoked,
            "RevocationCompleted",
            "completing".into(),
            &["bb".into()],
            Some(1),
            at(20),
        );
        assert!(again.announcement.is_none());
        assert_eq!(again.status.revocation.unwrap().serial_numbers, ["aa", "bb"]);
    }

    #[test]
    fn nothing_is_announced_without_a_status_write() {
        let waiting = held(
            None,
            GrantPhase::Pending,
            false,
            "CaMissing",
            "no CA".into(),
            None,
            None,
            Some(1),
            at(0),
        );
        assert!(waiting.write && waiting.announcement.is_some());
        let same = held(
            Some(&waiting.status),
            GrantPhase::Pending,
            false,
            "CaMissing",
            "no CA".into(),
            None,
            None,
            Some(1),
            at(5),
        );
        assert!(!same.write, "an unchanged status is not rewritten");
        assert!(same.announcement.is_none());
        let denied = withheld(
            None,
            GrantPhase::Denied,
            "PolicyDenied",
            "no".into(),
            &[],
            None,
            Some(1),
            at(0),
        );
        assert_eq!(denied.announcement.as_ref().unwrap().severity, Severity::Warning);
        let denied_again = withheld(
            Some(&denied.status),
            GrantPhase::Denied,
            "PolicyDenied",
            "no".into(),
            &[],
            None,
            Some(1),
            at(9),
        );
        assert!(!denied_again.write && denied_again.announcement.is_none());
    }
}
