//! Status conditions in the `metav1.Condition` shape, with `observedGeneration`.
//!
//! `lastTransitionTime` only moves when the status flips, so a reconcile that observes
//! the same state twice writes an identical condition and the patch is a no-op.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// Condition types.
pub const READY: &str = "Ready";
pub const REVOKED: &str = "Revoked";

/// The desired state of one condition, before merging with what is already there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: String,
}

/// Merges `desired` into `current`, keeping `lastTransitionTime` of a condition whose
/// status did not change. Conditions of other types are kept as they are.
pub fn merge(
    current: &[Condition],
    desired: Vec<Desired<'_>>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = current.to_vec();
    for d in desired {
        let status = if d.status { "True" } else { "False" }.to_string();
        let existing = out.iter().position(|c| c.type_ == d.type_);
        let last_transition_time = match existing.map(|i| &out[i]) {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => Time(now),
        };
        let cond = Condition {
            type_: d.type_.to_string(),
            status,
            reason: d.reason.to_string(),
            message: d.message,
            observed_generation: generation,
            last_transition_time,
        };
        match existing {
            Some(i) => out[i] = cond,
            None => out.push(cond),
        }
    }
    out
}

/// Whether condition `type_` is present and True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn transition_time_is_kept_while_status_is_unchanged() {
        let first = merge(
            &[],
            vec![Desired {
                type_: READY,
                status: true,
                reason: "Issued",
                message: "a".into(),
            }],
            Some(1),
            ts(100),
        );
        let again = merge(
            &first,
            vec![Desired {
                type_: READY,
                status: true,
                reason: "Renewed",
                message: "b".into(),
            }],
            Some(2),
            ts(200),
        );
        assert_eq!(again[0].last_transition_time.0, ts(100));
        assert_eq!(again[0].observed_generation, Some(2));
        assert_eq!(again[0].reason, "Renewed");
        let flipped = merge(
            &again,
            vec![Desired {
                type_: READY,
                status: false,
                reason: "TaskCompleted",
                message: "c".into(),
            }],
            Some(2),
            ts(300),
        );
        assert_eq!(flipped[0].last_transition_time.0, ts(300));
        assert_eq!(flipped[0].status, "False");
    }

    #[test]
    fn other_condition_types_are_kept() {
        let a = merge(
            &[],
            vec![Desired {
                type_: REVOKED,
                status: false,
                reason: "NotRevoked",
                message: String::new(),
            }],
            Some(1),
            ts(1),
        );
        let b = merge(
            &a,
            vec![Desired {
                type_: READY,
                status: true,
                reason: "Issued",
                message: String::new(),
            }],
            Some(1),
            ts(2),
        );
        assert_eq!(b.len(), 2);
        assert!(is_true(&b, READY));
        assert!(!is_true(&b, REVOKED));
    }
}
