//! Policy-bound issuance on the real control plane: Cedar AgentPolicies decide every
//! grant (deny by default), the admission webhook records who asked, and approvals
//! count for exactly the generation they name.

use std::time::Duration;

use k8s_openapi::api::{
    admissionregistration::v1::{MutatingAdmissionPolicyBinding, MutatingWebhookConfiguration},
    events::v1::Event,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use mandate::api::{AgentPolicy, GrantPhase, ToolGrant, ToolGrantApproval};
use serde_json::json;

use crate::{
    grants::Fixture,
    support::{TestNamespace, agent_policy, client, client_as, wait_for},
};

const PERMIT_GITHUB: &str = r#"@id("permit-github")
permit (principal, action == Mandate::Action::"issue", resource == Mandate::Tool::"github");"#;

const FORBID_WRITES: &str = r#"@id("no-writes")
forbid (principal, action == Mandate::Action::"issue", resource)
when { context.actions.contains("write") };"#;

/// Writes to github need a second person's approval.
const WRITES_NEED_APPROVAL: &str = r#"@id("permit-github")
permit (principal, action == Mandate::Action::"issue", resource == Mandate::Tool::"github");

@id("writes-need-a-second-person")
@approval("required")
forbid (principal, action == Mandate::Action::"issue", resource)
when { context.actions.contains("write") }
unless { context.approval.approved && !context.approval.selfApproval };"#;

async fn fixture(prefix: &str) -> Fixture {
    let c = client().await;
    crate::support::install_crds(&c).await;
    let ns = TestNamespace::new(&c, prefix).await;
    let f = Fixture::start_without_policies(ns, &[]).await;
    f.identity("triage").await;
    f.job("work", None).await;
    f
}

fn tools(actions: &[&str]) -> serde_json::Value {
    json!([{ "name": "github", "actions": actions, "destinations": ["api.github.com"] }])
}

/// Creates a grant for Job `work` as whoever `client` authenticates as.
async fn grant_as(client: Client, ns: &str, name: &str, actions: &[&str]) -> ToolGrant {
    let g: ToolGrant = serde_json::from_value(json!({
        "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant", "metadata": { "name": name },
        "spec": {
            "identityRef": { "name": "triage" },
            "taskRef": { "apiVersion": "batch/v1", "kind": "Job", "name": "work" },
            "tools": tools(actions), "purpose": "label and comment on new issues",
        },
    }))
    .unwrap();
    Api::<ToolGrant>::namespaced(client, ns)
        .create(&PostParams::default(), &g)
        .await
        .expect("grant created")
}

/// Approves (or denies) `generation` of the grant object now named `grant`.
pub(crate) async fn approve(client: Client, ns: &str, name: &str, grant: &str, generation: i64, decision: &str) {
    let uid = Api::<ToolGrant>::namespaced(client.clone(), ns)
        .get(grant)
        .await
        .expect("the grant to approve exists")
        .uid()
        .expect("a stored grant has a uid");
    let a: ToolGrantApproval = serde_json::from_value(json!({
        "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrantApproval", "metadata": { "name": name },
        "spec": { "grantName": grant, "grantUID": uid, "grantGeneration": generation, "decision": decision,
                  "reason": "reviewed in #change-42" },
    }))
    .unwrap();
    Api::<ToolGrantApproval>::namespaced(client, ns)
        .create(&PostParams::default(), &a)
        .await
        .expect("approval created");
}

fn ready_condition(g: ToolGrant) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    g.status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition")
}

async fn wait_reason(f: &Fixture, name: &str, phase: GrantPhase, reason: &'static str) -> ToolGrant {
    wait_for(
        &f.grants,
        name,
        &format!("{phase:?} ({reason})"),
        move |g: &ToolGrant| {
            let s = g.status.as_ref();
            s.and_then(|s| s.phase) == Some(phase)
                && s.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == reason))
        },
    )
    .await
}

/// Waits (watching, with the usual timeout) for an Event about `name` that satisfies `pred`.
async fn wait_event(f: &Fixture, name: &str, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    use futures::{StreamExt, TryStreamExt};
    use kube::runtime::{WatchStreamExt, watcher};
    let events: Api<Event> = f.ns.api();
    let about = |e: &Event| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name);
    let stream = watcher(events, watcher::Config::default())
        .applied_objects()
        .try_filter(|e| futures::future::ready(about(e) && pred(e)));
    let mut stream = std::pin::pin!(stream);
    match tokio::time::timeout(crate::support::TIMEOUT, stream.next()).await {
        Ok(Some(Ok(e))) => e,
        other => panic!(
            "no Event about {name} {what} within {:?}: {other:?}",
            crate::support::TIMEOUT
        ),
    }
}

#[tokio::test]
async fn without_a_permitting_policy_every_grant_is_denied_by_default() {
    let f = fixture("pol-default").await;
    f.grant("g", "triage", ("batch/v1", "Job", "work"), tools(&["read"]), None)
        .await;
    let g = wait_reason(&f, "g", GrantPhase::Denied, "PolicyDenied").await;
    let d = g.status.unwrap().decision.expect("a decision record");
    assert_eq!(d.outcome, "Deny");
    assert!(
        d.policies.is_empty(),
        "a default deny names no policy: {:?}",
        d.policies
    );
    assert!(d.reasons[0].contains("github"), "{:?}", d.reasons);
    assert!(f.secrets.get_opt("g").await.unwrap().is_none());
    f.ns.cleanup().await;
}

#[tokio::test]
async fn a_permit_issues_and_is_named_in_the_decision() {
    let f = fixture("pol-permit").await;
    agent_policy(&f.ns, "github", "Enforce", PERMIT_GITHUB).await;
    f.grant("g", "triage", ("batch/v1", "Job", "work"), tools(&["read"]), None)
        .await;
    let g = f.wait_phase("g", GrantPhase::Issued).await;
    let d = g.status.unwrap().decision.expect("a decision record");
    assert_eq!(d.outcome, "Allow");
    assert_eq!(d.policies, [format!("{}-github/permit-github", f.ns.name)]);
    assert_eq!(d.inputs.tools, ["github:read"]);
    assert_eq!(d.inputs.task, "Job/work");
    // The Event and the log line carry the same decision id.
    let id = d.decision_id;
    wait_event(&f, "g", "naming the decision", |e| {
        e.note.as_deref().unwrap_or_default().contains(&id)
    })
    .await;
    assert!(f.op.log_text().contains(&id));
    f.ns.cleanup().await;
}

#[tokio::test]
async fn a_forbid_beats_a_permit() {
    let f = fixture("pol-forbid").await;
    agent_policy(&f.ns, "github", "Enforce", PERMIT_GITHUB).await;
    agent_policy(&f.ns, "guard", "Enforce", FORBID_WRITES).await;
    f.grant(
        "g",
        "triage",
        ("batch/v1", "Job", "work"),
        tools(&["read", "write"]),
        None,
    )
    .await;
    // Until the operator has read both policies the grant may be denied by default;
    // wait for the decision that names the forbid.
    let forbid = format!("{}-guard/no-writes", f.ns.name);
    let g = wait_for(&f.grants, "g", "denied by the forbid", {
        let forbid = forbid.clone();
        move |g: &ToolGrant| {
            g.status
                .as_ref()
                .and_then(|s| s.decision.as_ref())
                .is_some_and(|d| d.policies.contains(&forbid))
        }
    })
    .await;
    let status = g.status.unwrap();
    assert_eq!(status.phase, Some(GrantPhase::Denied));
    assert_eq!(status.decision.unwrap().policies, [forbid]);
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_26_an_invalid_policy_fails_closed_and_says_where() {
    let f = fixture("pol-invalid").await;
    agent_policy(&f.ns, "github", "Enforce", PERMIT_GITHUB).await;
    // Line 3 reads an attribute the schema does not have.
    let broken = "@id(\"owner-check\")\npermit (principal, action == Mandate::Action::\"issue\", resource)\nwhen { principal.ownr == \"team-e2e\" };";
    let p = agent_policy(&f.ns, "broken", "Enforce", broken).await;
    let policies: Api<AgentPolicy> = Api::all(f.ns.client.clone());
    let p = wait_for(&policies, &p.name_any(), "reported invalid", |p: &AgentPolicy| {
        p.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "False"))
    })
    .await;
    let status = p.status.unwrap();
    let err = &status.errors[0];
    assert_eq!(err.line, Some(3), "{err:?}");
    assert!(err.column.is_some(), "{err:?}");
    assert!(err.message.contains("ownr"), "{err:?}");
    assert_eq!(status.conditions[0].reason, "InvalidPolicy");
    // The valid permit does not help: nothing is issued while the namespace has an
    // invalid policy, and the grant says why.
    f.grant("g", "triage", ("batch/v1", "Job", "work"), tools(&["read"]), None)
        .await;
    // Pending, or Denied if the operator decided once before its policy store took in
    // the broken policy (the AgentPolicy's status can be written first): either way
    // not issued, and held for the invalid policy.
    let g = wait_for(&f.grants, "g", "held: PolicyInvalid", |g: &ToolGrant| {
        g.status.as_ref().is_some_and(|s| {
            matches!(s.phase, Some(GrantPhase::Pending | GrantPhase::Denied))
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.reason == "PolicyInvalid")
        })
    })
    .await;
    let ready = ready_condition(g);
    assert!(ready.message.contains("broken"), "{}", ready.message);
    assert!(f.secrets.get_opt("g").await.unwrap().is_none());
    // Fixing it lets the grant through.
    Api::<AgentPolicy>::all(f.ns.client.clone())
        .patch(
            &p.metadata.name.clone().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "policies": PERMIT_GITHUB.replace("permit-github", "fixed") } })),
        )
        .await
        .unwrap();
    f.wait_phase("g", GrantPhase::Issued).await;
    f.ns.cleanup().await;
}

#[tokio::test]
async fn audit_mode_reports_would_be_denials_without_denying() {
    let f = fixture("pol-audit").await;
    agent_policy(&f.ns, "github", "Enforce", PERMIT_GITHUB).await;
    let audit = agent_policy(&f.ns, "dry-run", "Audit", FORBID_WRITES).await;
    f.grant(
        "g",
        "triage",
        ("batch/v1", "Job", "work"),
        tools(&["read", "write"]),
        None,
    )
    .await;
    // The grant may be issued before the operator has read the Audit policy; wait for
    // the decision that reports it.
    let id = format!("{}-dry-run/no-writes", f.ns.name);
    let g = wait_for(&f.grants, "g", "issued with the would-be denial reported", {
        let id = id.clone();
        move |g: &ToolGrant| {
            g.status.as_ref().is_some_and(|s| {
                s.phase == Some(GrantPhase::Issued)
                    && s.decision.as_ref().is_some_and(|d| d.audit_denials.contains(&id))
            })
        }
    })
    .await;
    let d = g.status.unwrap().decision.unwrap();
    assert_eq!(d.audit_denials, std::slice::from_ref(&id));
    let policies: Api<AgentPolicy> = Api::all(f.ns.client.clone());
    let p = wait_for(
        &policies,
        &audit.name_any(),
        "counting would-be denials",
        |p: &AgentPolicy| {
            p.status
                .as_ref()
                .and_then(|s| s.audit.as_ref())
                .is_some_and(|a| a.would_deny_count >= 1)
        },
    )
    .await;
    let recent = &p.status.unwrap().audit.unwrap().recent[0];
    assert_eq!(recent.grant, format!("{}/g", f.ns.name));
    assert_eq!(recent.decision_id, d.decision_id);
    wait_event(&f, "g", "AuditWouldDeny", |e| {
        e.reason.as_deref() == Some("AuditWouldDeny")
    })
    .await;
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_6_the_requester_is_recorded_and_cannot_be_forged_or_changed() {
    let f = fixture("pol-requester").await;
    // Only alice's grants are permitted: policy sees who asked.
    agent_policy(
        &f.ns,
        "alice-only",
        "Enforce",
        r#"@id("alice-only")
permit (principal, action == Mandate::Action::"issue", resource)
when { context.requester.username == "alice" };"#,
    )
    .await;
    let alice = client_as("alice").await;
    let g = grant_as(alice, &f.ns.name, "by-alice", &["read"]).await;
    let requester = g.spec.requester.expect("recorded at creation");
    assert_eq!(requester.username, "alice");
    assert!(requester.groups.contains(&"system:masters".to_string()));
    f.wait_phase("by-alice", GrantPhase::Issued).await;
    let bob = client_as("bob").await;
    grant_as(bob, &f.ns.name, "by-bob", &["read"]).await;
    wait_reason(&f, "by-bob", GrantPhase::Denied, "PolicyDenied").await;

    // Forged at creation: the mutating admission policy records who really asked (the
    // test's admin client), so the forgery gains nothing: the policy, which permits
    // only alice, denies it.
    let forged: ToolGrant = serde_json::from_value(json!({
        "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant", "metadata": { "name": "forged" },
        "spec": {
            "identityRef": { "name": "triage" },
            "taskRef": { "apiVersion": "batch/v1", "kind": "Job", "name": "work" },
            "tools": tools(&["read"]), "purpose": "x", "requester": { "username": "alice" },
        },
    }))
    .unwrap();
    let g = f.grants.create(&PostParams::default(), &forged).await.unwrap();
    let recorded = g.spec.requester.expect("recorded at creation");
    assert_eq!(recorded.username, "mandate-e2e-admin");
    assert!(recorded.groups.contains(&"system:masters".to_string()));
    wait_reason(&f, "forged", GrantPhase::Denied, "PolicyDenied").await;
    // Changed afterwards: refused.
    let err = f
        .grants
        .patch(
            "by-bob",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "requester": { "username": "alice" } } })),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("requester"), "{err}");
    assert_eq!(
        f.grants.get("by-bob").await.unwrap().spec.requester.unwrap().username,
        "bob"
    );
    f.ns.cleanup().await;
}

/// The ValidatingAdmissionPolicy checks the recorded requester on its own, inside the
/// API server: with Mandate's mutating pass gone (its admission policy or webhook
/// deleted, or bypassed by another mutation rewriting the field), a forged or missing
/// requester is refused, and the exact authenticated user is admitted.
#[tokio::test]
async fn threat_6_with_the_mutating_pass_bypassed_the_admission_policy_refuses_a_forged_requester() {
    let f = fixture("pol-vap").await;
    let alice = client_as("alice").await;
    // What the mutating pass records for alice, to replay it by hand below.
    let recorded = grant_as(alice.clone(), &f.ns.name, "recorded", &["read"])
        .await
        .spec
        .requester
        .expect("recorded at creation");
    // Whichever mutating pass the operator registered (the admission policy on this
    // control plane, the webhook on older ones) goes.
    let name = format!("mandate-{}", f.ns.name);
    let bindings: Api<MutatingAdmissionPolicyBinding> = Api::all(client().await);
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client().await);
    let mut deleted = 0;
    if bindings.get_opt(&name).await.unwrap().is_some() {
        bindings.delete(&name, &Default::default()).await.unwrap();
        deleted += 1;
    }
    if hooks.get_opt(&name).await.unwrap().is_some() {
        hooks.delete(&name, &Default::default()).await.unwrap();
        deleted += 1;
    }
    assert_eq!(deleted, 1, "exactly one mutating pass is registered");

    let manifest = |name: &str, requester: Option<serde_json::Value>| -> ToolGrant {
        let mut spec = json!({
            "identityRef": { "name": "triage" },
            "taskRef": { "apiVersion": "batch/v1", "kind": "Job", "name": "work" },
            "tools": tools(&["read"]), "purpose": "x",
        });
        if let Some(r) = requester {
            spec["requester"] = r;
        }
        serde_json::from_value(json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant", "metadata": { "name": name }, "spec": spec,
        }))
        .unwrap()
    };
    let as_alice: Api<ToolGrant> = Api::namespaced(alice, &f.ns.name);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    // The API server drops the mutating pass from its cache shortly after the delete
    // (until then a grant without a requester still gets one), and loads a new
    // admission policy shortly after its creation (until then nothing refuses; the
    // creation is a dry run). Polled, because nothing reports either.
    let deadline = tokio::time::Instant::now() + crate::support::TIMEOUT;
    let refusal = loop {
        let outcome = match as_alice.create(&dry, &manifest("missing", None)).await {
            Ok(_) => "admitted".to_string(),
            Err(e) => e.to_string(),
        };
        if outcome.contains("ValidatingAdmissionPolicy") || tokio::time::Instant::now() > deadline {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refusal.contains("spec.requester was not recorded"), "{refusal}");
    let err = as_alice
        .create(&dry, &manifest("forged", Some(json!({ "username": "root" }))))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("ValidatingAdmissionPolicy")
            && err.to_string().contains("does not match the authenticated user"),
        "{err}"
    );
    // Someone else's exact record is still a forgery.
    let bob = client_as("bob").await;
    let as_bob: Api<ToolGrant> = Api::namespaced(bob, &f.ns.name);
    let err = as_bob
        .create(&dry, &manifest("replayed", Some(json!(recorded))))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not match the authenticated user"),
        "{err}"
    );
    // The authenticated user, exactly as the mutating pass records it, is admitted.
    as_alice
        .create(&dry, &manifest("honest", Some(json!(recorded))))
        .await
        .expect("the exact authenticated user is admitted");
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_35_an_approval_does_not_count_for_a_grant_deleted_and_created_again_under_its_name() {
    let f = fixture("pol-recreate").await;
    agent_policy(&f.ns, "writes", "Enforce", WRITES_NEED_APPROVAL).await;
    let ns = f.ns.name.clone();
    let alice = client_as("alice").await;
    grant_as(alice.clone(), &ns, "g", &["read", "write"]).await;
    wait_reason(&f, "g", GrantPhase::AwaitingApproval, "AwaitingApproval").await;
    approve(client_as("bob").await, &ns, "bob-ok", "g", 1, "Approve").await;
    f.wait_phase("g", GrantPhase::Issued).await;
    let approvals: Api<ToolGrantApproval> = f.ns.api();
    wait_for(&approvals, "bob-ok", "used", |a: &ToolGrantApproval| {
        a.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Used")
    })
    .await;

    // Same name, same generation, same spec: another object, and nobody approved it.
    f.grants.delete("g", &DeleteParams::default()).await.unwrap();
    crate::support::wait::wait_deleted(&f.grants, "g", "revoked and finalized").await;
    let again = grant_as(alice.clone(), &ns, "g", &["read", "write"]).await;
    assert_eq!(again.metadata.generation, Some(1));
    let g = wait_reason(&f, "g", GrantPhase::AwaitingApproval, "AwaitingApproval").await;
    assert!(g.status.unwrap().approval.is_none());
    assert!(
        f.secrets.get_opt("g").await.unwrap().is_none(),
        "issued under the old approval"
    );
    let void = wait_for(
        &approvals,
        "bob-ok",
        "void for the new object",
        |a: &ToolGrantApproval| a.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Void"),
    )
    .await;
    assert!(
        void.status.unwrap().message.unwrap().contains(&again.uid().unwrap()),
        "the message names the new object"
    );
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_29_threat_30_approval_binds_one_generation_and_refuses_self_approval() {
    let f = fixture("pol-approval").await;
    agent_policy(&f.ns, "writes", "Enforce", WRITES_NEED_APPROVAL).await;
    let ns = f.ns.name.clone();
    let alice = client_as("alice").await;
    grant_as(alice.clone(), &ns, "g", &["read", "write"]).await;
    let g = wait_reason(&f, "g", GrantPhase::AwaitingApproval, "AwaitingApproval").await;
    assert_eq!(g.status.unwrap().decision.unwrap().outcome, "RequireApproval");
    assert!(f.secrets.get_opt("g").await.unwrap().is_none());

    // Alice approves her own grant: refused by the policy, the grant keeps waiting.
    approve(alice.clone(), &ns, "self", "g", 1, "Approve").await;
    let approvals: Api<ToolGrantApproval> = f.ns.api();
    let refused = wait_for(&approvals, "self", "refused", |a: &ToolGrantApproval| {
        a.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Refused")
    })
    .await;
    assert_eq!(refused.spec.approver.unwrap().username, "alice");
    assert_eq!(
        f.grants.get("g").await.unwrap().status.unwrap().phase,
        Some(GrantPhase::AwaitingApproval)
    );

    // Bob approves generation 1: issued, and the approval is recorded.
    approve(client_as("bob").await, &ns, "bob-ok", "g", 1, "Approve").await;
    let g = f.wait_phase("g", GrantPhase::Issued).await;
    let status = g.status.unwrap();
    let approval = status.approval.expect("the approval the certificate was issued under");
    assert_eq!((approval.approver.as_str(), approval.generation), ("bob", 1));
    let serial = status.certificate.unwrap().serial_number;
    wait_for(&approvals, "bob-ok", "used", |a: &ToolGrantApproval| {
        a.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Used")
    })
    .await;

    // A spec change voids the approval: the certificate is revoked and the grant waits.
    Api::<ToolGrant>::namespaced(alice.clone(), &ns)
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "purpose": "and push a fix" } })),
        )
        .await
        .unwrap();
    let g = wait_for(&f.grants, "g", "awaiting approval of generation 2", |g: &ToolGrant| {
        g.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(GrantPhase::AwaitingApproval) && s.observed_generation == Some(2))
    })
    .await;
    assert_eq!(g.metadata.generation, Some(2));
    f.wait_revoked_in_crl(&serial).await;
    assert!(f.secrets.get_opt("g").await.unwrap().is_none());
    wait_for(&approvals, "bob-ok", "void", |a: &ToolGrantApproval| {
        a.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Void")
    })
    .await;

    // Carol denies generation 2: final for that generation.
    approve(client_as("carol").await, &ns, "carol-no", "g", 2, "Deny").await;
    let g = wait_reason(&f, "g", GrantPhase::Denied, "ApprovalDenied").await;
    let ready = ready_condition(g);
    assert!(ready.message.contains("carol"), "{}", ready.message);
    // A late approval of the denied generation does not bring it back.
    approve(client_as("dave").await, &ns, "dave-ok", "g", 2, "Approve").await;
    wait_for(&approvals, "dave-ok", "considered", |a: &ToolGrantApproval| {
        a.status.is_some()
    })
    .await;
    assert_eq!(
        f.grants.get("g").await.unwrap().status.unwrap().phase,
        Some(GrantPhase::Denied)
    );

    // Approvals are immutable records.
    let err = approvals
        .patch(
            "dave-ok",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "grantGeneration": 3 } })),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("immutable"), "{err}");
    f.ns.cleanup().await;
}

/// The serial of the certificate the webhook presents, read with openssl.
async fn serving_serial(port: u16) -> String {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .await
        .expect("openssl runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The mutating webhook, which records requesters where the API server does not serve
/// MutatingAdmissionPolicy (before Kubernetes 1.36), selected here by flag.
#[tokio::test]
async fn the_webhook_keeps_recording_requesters_across_a_rotation_of_its_certificate() {
    let c = client().await;
    crate::support::install_crds(&c).await;
    let ns = TestNamespace::new(&c, "pol-rotate").await;
    // A 15-second serving certificate is rotated at 10 seconds.
    let f = Fixture::start(ns, &["--webhook-cert-validity=15s", "--admission-mutation=webhook"]).await;
    let name = format!("mandate-{}", f.ns.name);
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(c.clone());
    let policies: Api<MutatingAdmissionPolicyBinding> = Api::all(c.clone());
    assert!(hooks.get_opt(&name).await.unwrap().is_some());
    assert!(policies.get_opt(&name).await.unwrap().is_none());
    f.identity("triage").await;
    f.job("work", None).await;
    let port = f.op.webhook_port;
    let first = serving_serial(port).await;
    assert!(first.starts_with("serial="), "no certificate served: {first:?}");
    grant_as(client_as("alice").await, &f.ns.name, "before", &["read"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut now_serving = first.clone();
    while now_serving == first && tokio::time::Instant::now() < deadline {
        // Polled: a TLS handshake is the only way to see what is served.
        tokio::time::sleep(Duration::from_millis(500)).await;
        now_serving = serving_serial(port).await;
    }
    assert_ne!(
        now_serving, first,
        "the serving certificate was not rotated within 60 s"
    );
    let g = grant_as(client_as("bob").await, &f.ns.name, "after", &["read"]).await;
    assert_eq!(g.spec.requester.unwrap().username, "bob");
    f.wait_phase("after", GrantPhase::Issued).await;
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_6_with_the_operator_gone_the_requester_stays_guarded_and_finalizers_can_be_removed() {
    // Both admission passes are policies the API server evaluates itself (this control
    // plane serves MutatingAdmissionPolicy): with the operator gone, grants can still
    // be written and the requester still cannot be changed. Removing a finalizer by
    // hand (uninstall, a stuck namespace) needs nothing from the operator.
    let mut f = fixture("pol-gone").await;
    let alice = client_as("alice").await;
    let g = grant_as(alice, &f.ns.name, "orphan", &["read"]).await;
    assert_eq!(
        g.metadata.finalizers.as_deref(),
        Some(&["mandate.dev/revocation".to_string()][..])
    );
    f.op.kill().await;

    let err = f
        .grants
        .patch(
            "orphan",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "requester": { "username": "mallory" } } })),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.requester is recorded by Mandate at creation"),
        "{err}"
    );
    f.grants
        .patch(
            "orphan",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "purpose": "something else" } })),
        )
        .await
        .expect("a spec change keeping the requester is admitted without the operator");

    f.grants
        .patch(
            "orphan",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .expect("a finalizer can be removed without the operator");
    let g = f.grants.get("orphan").await.unwrap();
    assert!(g.metadata.finalizers.unwrap_or_default().is_empty());
    assert_eq!(g.spec.purpose, "something else");
    assert_eq!(g.spec.requester.unwrap().username, "alice");
    f.ns.cleanup().await;
}

/// A Denied grant that is looked at again and again (each spec change is a new
/// decision) has nothing to revoke, so it writes no CRL: a tenant's denied grants cost
/// the CRL nothing (threat 39).
#[tokio::test]
async fn threat_39_a_denied_grant_reconciled_again_and_again_writes_no_crl() {
    let f = fixture("pol-deny-quiet").await;
    f.grant("g", "triage", ("batch/v1", "Job", "work"), tools(&["read"]), None)
        .await;
    wait_reason(&f, "g", GrantPhase::Denied, "PolicyDenied").await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = f.ns.api();
    let before = cms.get("mandate-crl").await.unwrap();
    for i in 2..=4 {
        let patch = json!({ "spec": { "purpose": format!("attempt {i}") } });
        f.grants
            .patch("g", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        wait_for(&f.grants, "g", "decided again", move |g: &ToolGrant| {
            g.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == Some(i) && s.phase == Some(GrantPhase::Denied))
        })
        .await;
    }
    let after = cms.get("mandate-crl").await.unwrap();
    assert_eq!(
        before.resource_version(),
        after.resource_version(),
        "the CRL was rewritten for a grant with nothing to revoke"
    );
    f.ns.cleanup().await;
}
