//! Every check of the request-time decision, each failing on its own with its reason.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::*;
use crate::{
    api::{PolicyMode, RevocationCause, ToolGrant},
    pki::ScopeTool,
    policy::{AgentPolicyEntry, NamespaceMatcher, compile},
};

const BASE: &str = r#"
@id("in-scope")
permit(principal, action == Mandate::Action::"invoke", resource);
@id("no-drop")
forbid(principal, action == Mandate::Action::"invoke", resource)
  when { context.arguments.hasTag("sql") && context.arguments.getTag("sql") like "*DROP*" };
"#;

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn grant() -> ToolGrant {
    serde_json::from_value(json!({
        "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant",
        "metadata": {"name": "g", "namespace": "ns", "uid": "g-uid", "generation": 2},
        "spec": {"identityRef": {"name": "a"}, "taskRef": {"apiVersion": "batch/v1", "kind": "Job", "name": "j"},
                 "tools": [{"name": "db", "actions": ["query"], "destinations": ["db.internal/orders"]}],
                 "purpose": "x", "dataSensitivity": "confidential"},
        "status": {"phase": "Issued"}
    }))
    .unwrap()
}

fn identity() -> AgentIdentity {
    serde_json::from_value(json!({
        "apiVersion": "mandate.dev/v1alpha1", "kind": "AgentIdentity",
        "metadata": {"name": "a", "namespace": "ns"},
        "spec": {"owner": "team", "serviceAccountName": "sa", "tools": [{"name": "db", "actions": ["query"]}]}
    }))
    .unwrap()
}

fn record() -> RecordFacts {
    RecordFacts {
        serial: "01".into(),
        not_after: now() + SignedDuration::from_hours(1),
        grant_namespace: "ns".into(),
        grant_name: "g".into(),
        grant_uid: "g-uid".into(),
        generation: 2,
        task_uid: "t-uid".into(),
        revoked: None,
        deleting: false,
    }
}

fn subject() -> Subject {
    Subject {
        serial: "01".into(),
        spiffe_id: "spiffe://td/ns/ns/agent/a".into(),
        not_before: Some(now() - SignedDuration::from_mins(1)),
        not_after: Some(now() + SignedDuration::from_hours(1)),
        scope: Some(GrantScope {
            version: 1,
            grant_uid: "g-uid".into(),
            grant_generation: 2,
            grant_name: "g".into(),
            namespace: "ns".into(),
            task_uid: "t-uid".into(),
            task_kind: "Job".into(),
            task_name: "j".into(),
            tools: vec![ScopeTool {
                name: "db".into(),
                actions: vec!["query".into()],
                destinations: vec!["db.internal/orders".into()],
            }],
        }),
    }
}

fn call() -> Call {
    Call {
        tool: "db".into(),
        action: "query".into(),
        destination: "db.internal/orders/1".into(),
        data_sensitivity: Sensitivity::Internal,
        arguments: Some(json!({"sql": "select 1"}).as_object().unwrap().clone()),
        ..Call::default()
    }
}

fn task() -> TaskFacts {
    TaskFacts {
        uid: "t-uid".into(),
        finished: None,
        deadline: Some(now() + SignedDuration::from_mins(10)),
    }
}

fn store(text: &str) -> PolicyStore {
    PolicyStore::new(vec![AgentPolicyEntry {
        compiled: compile(text, "base"),
        mode: PolicyMode::Enforce,
        namespaces: NamespaceMatcher::All,
    }])
}

struct World {
    subject: Subject,
    call: Call,
    record: Option<RecordFacts>,
    grant: Option<ToolGrant>,
    identity: Option<AgentIdentity>,
    task: Option<TaskFacts>,
    policies: Option<PolicyStore>,
}

impl World {
    fn new() -> Self {
        World {
            subject: subject(),
            call: call(),
            record: Some(record()),
            grant: Some(grant()),
            identity: Some(identity()),
            task: Some(task()),
            policies: Some(store(BASE)),
        }
    }

    fn decide(&self) -> Verdict {
        let grant = self.grant.as_ref().map(GrantFacts::of);
        let facts = Facts {
            record: self.record.as_ref(),
            grant: grant.as_ref(),
            identity: self.identity.as_ref(),
            task: self.task.as_ref(),
            policies: self.policies.as_ref(),
        };
        decide(
            &self.subject,
            &self.call,
            &facts,
            Limits {
                trust_domain: "td",
                max_cache: std::time::Duration::from_secs(5),
            },
            now(),
        )
    }
}

#[test]
fn an_in_scope_call_is_allowed_and_names_its_grant_and_task() {
    let v = World::new().decide();
    assert_eq!(v.reason, Reason::Allowed, "{}", v.message);
    assert_eq!(v.named.grant_uid, "g-uid");
    assert_eq!(v.named.grant_generation, 2);
    assert_eq!(v.named.identity, "ns/a");
    assert_eq!(
        (v.named.task_kind.as_str(), v.named.task_uid.as_str()),
        ("Job", "t-uid")
    );
    assert_eq!(v.policies, ["base/in-scope"]);
    // Cached no longer than the limit, the certificate and the task's deadline allow.
    assert_eq!(v.valid_until, Some(now() + SignedDuration::from_secs(5)));
}

#[test]
fn an_allow_is_never_cached_past_the_task_deadline() {
    let mut w = World::new();
    w.task.as_mut().unwrap().deadline = Some(now() + SignedDuration::from_secs(2));
    assert_eq!(w.decide().valid_until, Some(now() + SignedDuration::from_secs(2)));
}

fn denied(w: &World, reason: Reason) {
    let v = w.decide();
    assert_eq!(v.reason, reason, "{}", v.message);
    assert!(!v.allowed());
    assert!(v.valid_until.is_none());
    assert!(!v.message.is_empty());
}

#[test]
fn each_check_denies_with_its_own_reason() {
    let mut w = World::new();
    w.subject.not_before = Some(now() + SignedDuration::from_mins(1));
    denied(&w, Reason::CertificateNotYetValid);

    let mut w = World::new();
    w.subject.not_after = Some(now());
    denied(&w, Reason::CertificateExpired);

    let mut w = World::new();
    w.record = None;
    denied(&w, Reason::UnknownSerial);

    let mut w = World::new();
    w.record.as_mut().unwrap().revoked = Some((now(), RevocationCause::TaskCompleted));
    denied(&w, Reason::Revoked);

    let mut w = World::new();
    w.grant = None;
    denied(&w, Reason::GrantNotFound);

    let mut w = World::new();
    w.grant.as_mut().unwrap().metadata.uid = Some("another".into());
    denied(&w, Reason::GrantNotFound);

    let mut w = World::new();
    w.grant.as_mut().unwrap().metadata.generation = Some(3);
    denied(&w, Reason::GrantChanged);

    let mut w = World::new();
    w.grant.as_mut().unwrap().status.as_mut().unwrap().phase = Some(GrantPhase::Revoked);
    denied(&w, Reason::GrantNotLive);

    let mut w = World::new();
    w.identity = None;
    denied(&w, Reason::IdentityNotFound);

    let mut w = World::new();
    w.subject.spiffe_id = "spiffe://td/ns/ns/agent/b".into();
    denied(&w, Reason::IdentityMismatch);

    let mut w = World::new();
    w.identity.as_mut().unwrap().spec.suspended = true;
    denied(&w, Reason::IdentitySuspended);

    let mut w = World::new();
    w.task = None;
    denied(&w, Reason::TaskNotFound);

    let mut w = World::new();
    w.task.as_mut().unwrap().finished = Some(Outcome::Succeeded);
    denied(&w, Reason::TaskFinished);

    let mut w = World::new();
    w.task.as_mut().unwrap().deadline = Some(now());
    denied(&w, Reason::TaskFinished);

    let mut w = World::new();
    w.call.tool = "web".into();
    denied(&w, Reason::ToolNotGranted);

    let mut w = World::new();
    w.call.action = "drop".into();
    denied(&w, Reason::ActionNotGranted);

    let mut w = World::new();
    w.call.destination = "db.internal/ordersx".into();
    denied(&w, Reason::DestinationNotGranted);

    let mut w = World::new();
    w.call.data_sensitivity = Sensitivity::Restricted;
    denied(&w, Reason::SensitivityExceeded);

    let mut w = World::new();
    w.call.arguments = Some(json!({"sql": "DROP TABLE orders"}).as_object().unwrap().clone());
    denied(&w, Reason::PolicyForbidden);

    let mut w = World::new();
    w.policies = Some(store(
        "@id(\"other\") permit(principal, action == Mandate::Action::\"issue\", resource);",
    ));
    denied(&w, Reason::PolicyNoPermit);

    let mut w = World::new();
    w.policies = Some(store("permit(principal, action, resource) when { context.nope };"));
    denied(&w, Reason::PolicyInvalid);

    let mut w = World::new();
    w.policies = None;
    denied(&w, Reason::NotReady);
}

#[test]
fn a_policy_error_denies() {
    let mut w = World::new();
    // An overflow is an evaluation error (validation cannot see it): the call is
    // denied, not allowed.
    w.policies = Some(store(
        r#"@id("p") permit(principal, action == Mandate::Action::"invoke", resource)
           when { context.dataSensitivityLevel + 9223372036854775807 > 0 };"#,
    ));
    denied(&w, Reason::PolicyError);
}

#[test]
fn an_asserted_subject_is_decided_from_the_record_and_the_grant() {
    let mut w = World::new();
    w.subject.scope = None;
    w.subject.not_before = None;
    w.subject.not_after = None;
    let v = w.decide();
    assert_eq!(v.reason, Reason::Allowed, "{}", v.message);
    assert_eq!(v.named.task_kind, "Job");
    // The record's notAfter still bounds it.
    w.record.as_mut().unwrap().not_after = now();
    denied(&w, Reason::CertificateExpired);
}

#[test]
fn a_certificate_naming_another_generation_than_its_record_is_denied() {
    let mut w = World::new();
    w.subject.scope.as_mut().unwrap().grant_generation = 1;
    denied(&w, Reason::GrantChanged);
}

#[test]
fn threat_15_a_certificate_for_tool_x_is_denied_for_tool_y() {
    let mut w = World::new();
    // The grant says the same: only what the certificate carries counts.
    w.grant.as_mut().unwrap().spec.tools.push(crate::api::ToolScope {
        name: "web".into(),
        actions: vec!["query".into()],
        destinations: vec![],
        sensitivity: None,
    });
    w.call.tool = "web".into();
    denied(&w, Reason::ToolNotGranted);
}

#[test]
fn threat_17_a_deleted_grant_is_denied_even_with_its_record_live() {
    let mut w = World::new();
    w.grant.as_mut().unwrap().metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    denied(&w, Reason::GrantNotLive);
    let mut w = World::new();
    w.grant = None;
    denied(&w, Reason::GrantNotFound);
}

#[test]
fn every_reason_has_a_distinct_code() {
    let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    for r in Reason::ALL {
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
    }
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), Reason::ALL.len());
}
