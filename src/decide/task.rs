//! Task adapters: what a task object says about when it started, its deadline, and
//! whether (and how) it has finished.
//!
//! Jobs and Pods are understood natively. Any other kind works when its objects carry
//! `status.conditions`: it is finished when one of the configured condition types is
//! True (by default `Complete`, `Succeeded` or `Failed`), so Argo Workflows, Tekton
//! TaskRuns or agent-sandbox Sandboxes need no code.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::DynamicObject;
use serde_json::Value;

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    /// The task object is being deleted (it may still run for its grace period).
    Deleting,
}

impl Outcome {
    /// The revocation cause recorded for it.
    pub fn revocation_cause(self) -> crate::api::RevocationCause {
        use crate::api::RevocationCause;
        match self {
            Outcome::Succeeded => RevocationCause::TaskCompleted,
            Outcome::Failed => RevocationCause::TaskFailed,
            Outcome::Deleting => RevocationCause::TaskDeleted,
        }
    }
}

/// What the operator needs to know of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskState {
    pub uid: String,
    pub started_at: Option<Timestamp>,
    pub deadline: Option<Timestamp>,
    /// `Some` once the task has finished or is being deleted.
    pub finished: Option<(Outcome, String)>,
    /// When it finished, as far as the object says (a condition's last transition,
    /// the deletion timestamp): where revocation latency is measured from.
    pub finished_at: Option<Timestamp>,
}

/// Which condition types mark a generic task as finished, and which of them are failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedConditions {
    pub types: Vec<String>,
}

impl Default for FinishedConditions {
    fn default() -> Self {
        FinishedConditions {
            types: vec!["Complete".into(), "Succeeded".into(), "Failed".into()],
        }
    }
}

impl FinishedConditions {
    fn outcome(type_: &str) -> Outcome {
        if type_.contains("Fail") {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        }
    }
}

/// The family of adapter a task reference selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    Job,
    Pod,
    Generic,
}

impl TaskKind {
    pub fn of(api_version: &str, kind: &str) -> TaskKind {
        match (api_version, kind) {
            ("batch/v1", "Job") => TaskKind::Job,
            ("v1", "Pod") => TaskKind::Pod,
            _ => TaskKind::Generic,
        }
    }
}

fn true_condition<'a>(status: &'a Value, types: &[&str]) -> Option<(&'a str, String)> {
    status.get("conditions")?.as_array()?.iter().find_map(|c| {
        let t = c.get("type")?.as_str()?;
        (types.contains(&t) && c.get("status")?.as_str()? == "True").then(|| {
            let msg = c
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| c.get("reason").and_then(Value::as_str));
            (t, msg.unwrap_or_default().to_string())
        })
    })
}

fn timestamp(v: Option<&Value>) -> Option<Timestamp> {
    v?.as_str()?.parse().ok()
}

/// Reads a task object. `now` is unused today but keeps the signature honest for
/// adapters that judge staleness.
pub fn observe(kind: TaskKind, obj: &DynamicObject, finished: &FinishedConditions) -> TaskState {
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    let empty = Value::Null;
    let status = obj.data.get("status").unwrap_or(&empty);
    let spec = obj.data.get("spec").unwrap_or(&empty);
    let started_at = timestamp(status.get("startTime"));
    // Jobs and Pods both count activeDeadlineSeconds from status.startTime.
    let deadline = match kind {
        TaskKind::Job | TaskKind::Pod => spec
            .get("activeDeadlineSeconds")
            .and_then(Value::as_i64)
            .zip(started_at)
            .and_then(|(secs, start)| start.checked_add(SignedDuration::from_secs(secs)).ok()),
        TaskKind::Generic => None,
    };
    let done = match kind {
        // SuccessCriteriaMet and FailureTarget come before Complete and Failed, while the
        // Job's Pods are still being cleaned up: revoking on them is earlier and safe.
        TaskKind::Job => true_condition(status, &["Complete", "SuccessCriteriaMet"])
            .map(|(_, m)| (Outcome::Succeeded, m))
            .or_else(|| true_condition(status, &["Failed", "FailureTarget"]).map(|(_, m)| (Outcome::Failed, m))),
        TaskKind::Pod => match status.get("phase").and_then(Value::as_str) {
            Some("Succeeded") => Some((Outcome::Succeeded, "pod phase Succeeded".to_string())),
            Some("Failed") => Some((Outcome::Failed, "pod phase Failed".to_string())),
            _ => None,
        },
        TaskKind::Generic => {
            let types: Vec<&str> = finished.types.iter().map(String::as_str).collect();
            true_condition(status, &types).map(|(t, m)| (FinishedConditions::outcome(t), format!("condition {t}: {m}")))
        }
    };
    let finished = done.or_else(|| {
        obj.metadata
            .deletion_timestamp
            .as_ref()
            .map(|_| (Outcome::Deleting, "task is being deleted".to_string()))
    });
    let finished_at = match &finished {
        Some((Outcome::Deleting, _)) => obj.metadata.deletion_timestamp.as_ref().map(|t| t.0),
        Some(_) => status
            .get("conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c.get("status").and_then(Value::as_str) == Some("True"))
            .filter_map(|c| timestamp(c.get("lastTransitionTime")))
            .max(),
        None => None,
    };
    TaskState {
        uid,
        started_at,
        deadline,
        finished,
        finished_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn running_job_deadline_counts_from_start_time() {
        let job = obj(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": { "name": "j", "uid": "u1" },
            "spec": { "activeDeadlineSeconds": 600 },
            "status": { "startTime": "2027-01-15T08:00:00Z", "active": 1 },
        }));
        let s = observe(TaskKind::Job, &job, &FinishedConditions::default());
        assert_eq!(s.uid, "u1");
        assert_eq!(s.deadline, Some("2027-01-15T08:10:00Z".parse().unwrap()));
        assert_eq!(s.finished, None);
    }

    #[test]
    fn job_is_finished_on_complete_or_failure_target() {
        let complete = obj(json!({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "j" },
            "status": { "conditions": [{ "type": "Complete", "status": "True" }] },
        }));
        assert_eq!(
            observe(TaskKind::Job, &complete, &Default::default())
                .finished
                .unwrap()
                .0,
            Outcome::Succeeded
        );
        let failing = obj(json!({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "j" },
            "status": { "conditions": [
                { "type": "Complete", "status": "False" },
                { "type": "FailureTarget", "status": "True", "message": "backoff limit" },
            ] },
        }));
        assert_eq!(
            observe(TaskKind::Job, &failing, &Default::default()).finished,
            Some((Outcome::Failed, "backoff limit".into()))
        );
    }

    #[test]
    fn pod_phase_decides_and_deletion_counts_as_finished() {
        let pod = |phase: &str, deleting: bool| {
            let mut meta = json!({ "name": "p" });
            if deleting {
                meta["deletionTimestamp"] = json!("2027-01-15T08:00:00Z");
            }
            obj(json!({ "apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": { "phase": phase } }))
        };
        let f = FinishedConditions::default();
        assert_eq!(observe(TaskKind::Pod, &pod("Running", false), &f).finished, None);
        assert_eq!(
            observe(TaskKind::Pod, &pod("Failed", false), &f).finished.unwrap().0,
            Outcome::Failed
        );
        assert_eq!(
            observe(TaskKind::Pod, &pod("Succeeded", false), &f).finished.unwrap().0,
            Outcome::Succeeded
        );
        assert_eq!(
            observe(TaskKind::Pod, &pod("Running", true), &f).finished.unwrap().0,
            Outcome::Deleting
        );
    }

    #[test]
    fn generic_task_uses_configured_condition_types() {
        let run = |t: &str| {
            obj(json!({
                "apiVersion": "tekton.dev/v1", "kind": "TaskRun", "metadata": { "name": "t" },
                "status": { "conditions": [{ "type": t, "status": "True" }] },
            }))
        };
        let f = FinishedConditions::default();
        assert_eq!(
            observe(TaskKind::Generic, &run("Succeeded"), &f).finished.unwrap().0,
            Outcome::Succeeded
        );
        assert_eq!(observe(TaskKind::Generic, &run("Ready"), &f).finished, None);
        let custom = FinishedConditions {
            types: vec!["Done".into()],
        };
        assert_eq!(
            observe(TaskKind::Generic, &run("Done"), &custom).finished.unwrap().0,
            Outcome::Succeeded
        );
        assert_eq!(observe(TaskKind::Generic, &run("Succeeded"), &custom).finished, None);
        assert_eq!(TaskKind::of("batch/v1", "Job"), TaskKind::Job);
        assert_eq!(TaskKind::of("v1", "Pod"), TaskKind::Pod);
        assert_eq!(TaskKind::of("argoproj.io/v1alpha1", "Workflow"), TaskKind::Generic);
    }
}
