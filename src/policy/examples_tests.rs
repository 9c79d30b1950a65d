//! The AgentPolicies in `examples/policies/` compile cleanly and decide realistic
//! grants as their comments say.

use std::collections::BTreeSet;

use super::input::tests::request;
use super::*;
use crate::api::{AgentPolicy, Sensitivity};

fn load(yaml: &str) -> AgentPolicyEntry {
    let policy: AgentPolicy = serde_yaml_ng::from_str(yaml).expect("example parses as an AgentPolicy");
    let name = policy.metadata.name.clone().expect("example has a name");
    let compiled = compile(&policy.spec.policies, &name);
    assert!(compiled.is_valid(), "{name}: {:?}", compiled.errors);
    assert!(!compiled.policies.is_empty(), "{name} has no policies");
    assert!(
        compiled.policies.iter().all(|p| !p.id.starts_with("policy")),
        "{name}: examples name every policy with @id"
    );
    AgentPolicyEntry {
        compiled,
        mode: policy.spec.mode,
        namespaces: namespaces(&policy),
    }
}

/// The examples only select by `kubernetes.io/metadata.name`, so the selector can be
/// resolved without a cluster (the controller resolves real ones).
fn namespaces(policy: &AgentPolicy) -> NamespaceMatcher {
    const KEY: &str = "kubernetes.io/metadata.name";
    let Some(sel) = &policy.spec.namespace_selector else {
        return NamespaceMatcher::All;
    };
    let mut names = BTreeSet::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        assert_eq!(k, KEY);
        names.insert(v.clone());
    }
    for e in sel.match_expressions.iter().flatten() {
        assert_eq!((e.key.as_str(), e.operator.as_str()), (KEY, "In"));
        names.extend(e.values.iter().flatten().cloned());
    }
    NamespaceMatcher::Names(names)
}

const BASE: &str = include_str!("../../examples/policies/base-permit.yaml");
const NAMESPACE_TOOLS: &str = include_str!("../../examples/policies/namespace-tools.yaml");
const PROD_APPROVAL: &str = include_str!("../../examples/policies/production-writes-need-approval.yaml");
const RESTRICTED: &str = include_str!("../../examples/policies/restricted-data-owner.yaml");
const SHORT_TTL: &str = include_str!("../../examples/policies/high-risk-short-ttl.yaml");
const INVOKE_BASE: &str = include_str!("../../examples/04-invoke-policy.yaml");

fn store(yamls: &[&str]) -> PolicyStore {
    PolicyStore::new(yamls.iter().map(|y| load(y)).collect())
}

fn tool(name: &str, actions: &[&str], destinations: &[&str], sensitivity: Sensitivity) -> ToolRequest {
    ToolRequest {
        name: name.into(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        destinations: destinations.iter().map(|s| s.to_string()).collect(),
        sensitivity,
    }
}

fn in_namespace(ns: &str, agent: &str, owner: &str, tools: Vec<ToolRequest>) -> IssueRequest {
    let mut req = request();
    req.namespace = ns.into();
    req.agent.namespace = ns.into();
    req.agent.name = agent.into();
    req.agent.owner = owner.into();
    req.agent.spiffe_id = format!("spiffe://mandate.local/ns/{ns}/agent/{agent}");
    req.data_sensitivity = Sensitivity::Internal;
    req.tools = tools;
    req
}

#[test]
fn every_example_compiles_cleanly() {
    for yaml in [BASE, NAMESPACE_TOOLS, PROD_APPROVAL, RESTRICTED, SHORT_TTL, INVOKE_BASE] {
        load(yaml);
    }
}

#[test]
fn base_permit_allows_short_read_only_grants_only() {
    let s = store(&[BASE]);
    let read = in_namespace(
        "default",
        "triage-bot",
        "team-dx",
        vec![tool("github", &["read"], &[], Sensitivity::Internal)],
    );
    let d = s.decide_issue(&read);
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    assert_eq!(d.policies, ["base-permit/read-only"]);

    let mut long = read.clone();
    long.ttl_seconds = 7200;
    assert_eq!(s.decide_issue(&long).outcome, Outcome::Deny);

    let write = in_namespace(
        "default",
        "triage-bot",
        "team-dx",
        vec![tool("github", &["read", "comment"], &[], Sensitivity::Internal)],
    );
    let d = s.decide_issue(&write);
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.policies.is_empty(), "a default deny names no policy");
}

#[test]
fn namespace_tools_scope_tools_to_teams() {
    let s = store(&[NAMESPACE_TOOLS]);
    let stripe = tool(
        "stripe",
        &["read", "refund"],
        &["api.stripe.com"],
        Sensitivity::Confidential,
    );
    let pg = tool(
        "postgres",
        &["read", "write"],
        &["payments-db.team-payments.svc:5432"],
        Sensitivity::Confidential,
    );
    let d = s.decide_issue(&in_namespace(
        "team-payments",
        "refunder",
        "team-payments",
        vec![stripe.clone(), pg],
    ));
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    assert_eq!(
        d.policies,
        ["namespace-tools/payments-postgres", "namespace-tools/payments-stripe"]
    );

    // Another database host is not the team's.
    let other_db = tool(
        "postgres",
        &["read"],
        &["billing-db.team-billing.svc:5432"],
        Sensitivity::Confidential,
    );
    let d = s.decide_issue(&in_namespace(
        "team-payments",
        "refunder",
        "team-payments",
        vec![other_db],
    ));
    assert_eq!(d.outcome, Outcome::Deny);

    // Support agents get no Stripe...
    let d = s.decide_issue(&in_namespace("team-support", "helper", "team-support", vec![stripe]));
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(
        d.reasons,
        ["no policy permits `issue` of tool stripe for agent team-support/helper"]
    );

    // ...Zendesk, and GitHub read but not write.
    let zendesk = tool(
        "zendesk",
        &["read", "reply"],
        &["acme.zendesk.com"],
        Sensitivity::Confidential,
    );
    let gh_read = tool(
        "github",
        &["read"],
        &["api.github.com/repos/acme"],
        Sensitivity::Internal,
    );
    let req = in_namespace("team-support", "helper", "team-support", vec![zendesk, gh_read]);
    assert_eq!(s.decide_issue(&req).outcome, Outcome::Allow);
    let gh_write = tool(
        "github",
        &["read", "write"],
        &["api.github.com/repos/acme"],
        Sensitivity::Internal,
    );
    let d = s.decide_issue(&in_namespace("team-support", "helper", "team-support", vec![gh_write]));
    assert_eq!(d.outcome, Outcome::Deny);
}

#[test]
fn production_writes_wait_for_an_approval_by_someone_else() {
    let s = store(&[PROD_APPROVAL]);
    let deploy = tool(
        "argocd",
        &["read", "sync"],
        &["argocd.prod.internal"],
        Sensitivity::Confidential,
    );
    let mut req = in_namespace("platform", "deployer", "team-platform", vec![deploy]);
    let d = s.decide_issue(&req);
    assert_eq!(d.outcome, Outcome::RequireApproval, "{d:?}");
    assert_eq!(
        d.policies,
        ["production-writes-need-approval/prod-writes-need-approval"]
    );

    req.approval = Some(ApprovalFacts {
        name: "deploy-ok".into(),
        approver: req.requester.username.clone(),
    });
    let d = s.decide_issue(&req);
    assert_eq!(
        d.outcome,
        Outcome::RequireApproval,
        "a self-approval does not count: {d:?}"
    );
    assert!(d.reasons.iter().any(|r| r.contains("self-approval")), "{:?}", d.reasons);

    req.approval = Some(ApprovalFacts {
        name: "deploy-ok".into(),
        approver: "carol@example.com".into(),
    });
    let d = s.decide_issue(&req);
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    assert_eq!(d.policies, ["production-writes-need-approval/platform-deploy-tools"]);

    // Staging writes and production reads need no approval.
    let staging = tool("argocd", &["sync"], &["argocd.staging.internal"], Sensitivity::Internal);
    assert_eq!(
        s.decide_issue(&in_namespace("platform", "deployer", "team-platform", vec![staging]))
            .outcome,
        Outcome::Allow
    );
    let prod_read = tool("argocd", &["read"], &["argocd.prod.internal"], Sensitivity::Internal);
    assert_eq!(
        s.decide_issue(&in_namespace("platform", "deployer", "team-platform", vec![prod_read]))
            .outcome,
        Outcome::Allow
    );

    // The AgentPolicy selects only `platform`: elsewhere nothing permits.
    let elsewhere = tool("argocd", &["read"], &["argocd.prod.internal"], Sensitivity::Internal);
    assert_eq!(
        s.decide_issue(&in_namespace("default", "deployer", "team-platform", vec![elsewhere]))
            .outcome,
        Outcome::Deny
    );
}

#[test]
fn restricted_data_is_for_the_security_teams_agents() {
    let s = store(&[BASE, RESTRICTED]);
    let vault = tool("vault", &["read"], &["vault.internal:8200"], Sensitivity::Restricted);
    let d = s.decide_issue(&in_namespace(
        "team-payments",
        "refunder",
        "team-payments",
        vec![vault.clone()],
    ));
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.policies, ["restricted-data-owner/restricted-data-security-only"]);

    let d = s.decide_issue(&in_namespace("security", "scanner", "team-security", vec![vault]));
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");

    // A grant declaring restricted data is restricted whatever its tools.
    let wiki = tool("confluence", &["read"], &["wiki.internal"], Sensitivity::Internal);
    let mut req = in_namespace("team-support", "helper", "team-support", vec![wiki]);
    assert_eq!(s.decide_issue(&req).outcome, Outcome::Allow);
    req.data_sensitivity = Sensitivity::Restricted;
    assert_eq!(s.decide_issue(&req).outcome, Outcome::Deny);
}

#[test]
fn restricted_data_in_audit_mode_reports_without_denying() {
    let audit = RESTRICTED.replace("mode: Enforce", "mode: Audit");
    let s = store(&[BASE, &audit]);
    let vault = tool("vault", &["read"], &["vault.internal:8200"], Sensitivity::Restricted);
    let d = s.decide_issue(&in_namespace("team-payments", "refunder", "team-payments", vec![vault]));
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(d.audit_denials, ["restricted-data-owner/restricted-data-security-only"]);
}

#[test]
fn high_risk_grants_live_at_most_fifteen_minutes() {
    let s = store(&[NAMESPACE_TOOLS, SHORT_TTL]);
    let pg_delete = tool(
        "postgres",
        &["read", "delete"],
        &["payments-db.team-payments.svc:5432"],
        Sensitivity::Confidential,
    );
    let mut req = in_namespace("team-payments", "cleaner", "team-payments", vec![pg_delete]);
    req.ttl_seconds = 3600;
    let d = s.decide_issue(&req);
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.policies, ["high-risk-short-ttl/destructive-actions-max-15m"]);

    req.ttl_seconds = 900;
    assert_eq!(s.decide_issue(&req).outcome, Outcome::Allow);

    let stripe = tool("stripe", &["read"], &["api.stripe.com"], Sensitivity::Restricted);
    let mut req = in_namespace("team-payments", "refunder", "team-payments", vec![stripe]);
    req.ttl_seconds = 1800;
    let d = s.decide_issue(&req);
    assert_eq!(d.policies, ["high-risk-short-ttl/restricted-tools-max-15m"]);
    req.tools[0].sensitivity = Sensitivity::Confidential;
    assert_eq!(s.decide_issue(&req).outcome, Outcome::Allow);
}

#[test]
fn all_examples_together_still_decide_as_each_says() {
    let s = store(&[BASE, NAMESPACE_TOOLS, PROD_APPROVAL, RESTRICTED, SHORT_TTL]);
    let deploy = tool(
        "kubernetes",
        &["deploy"],
        &["k8s-api.prod.internal:6443"],
        Sensitivity::Confidential,
    );
    let d = s.decide_issue(&in_namespace("platform", "deployer", "team-platform", vec![deploy]));
    assert_eq!(d.outcome, Outcome::RequireApproval);
    let stripe = tool("stripe", &["refund"], &["api.stripe.com"], Sensitivity::Restricted);
    let d = s.decide_issue(&in_namespace(
        "team-payments",
        "refunder",
        "team-payments",
        vec![stripe],
    ));
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.policies, ["restricted-data-owner/restricted-data-security-only"]);
}

#[test]
fn invoke_base_permits_in_scope_calls_and_forbids_destructive_sql() {
    let s = store(&[INVOKE_BASE]);
    let req = in_namespace("default", "bot", "team", vec![]);
    let call = |query: &str| crate::policy::InvokeRequest {
        namespace: "default".into(),
        grant_name: "g".into(),
        agent: req.agent.clone(),
        tool: tool("db", &["query"], &["db.internal"], Sensitivity::Internal),
        action: "query".into(),
        destination: "db.internal".into(),
        intent: "monthly report".into(),
        data_sensitivity: Sensitivity::Internal,
        task_kind: "Job".into(),
        task_name: "report".into(),
        arguments: serde_json::json!({ "query": query }).as_object().cloned(),
        traceparent: String::new(),
        request_id: String::new(),
    };
    let d = s.decide_invoke(&call("select * from orders"));
    assert!(d.allowed(), "{d:?}");
    assert_eq!(d.policies, ["invoke-base/in-scope"]);
    let d = s.decide_invoke(&call("DROP TABLE orders"));
    assert_eq!(d.denial, Some(crate::policy::InvokeDenial::Forbidden));
    assert_eq!(d.policies, ["invoke-base/no-destructive-sql"]);
    // Without arguments the forbid's hasTag guard keeps it from erroring.
    let mut none = call("");
    none.arguments = None;
    assert!(s.decide_invoke(&none).allowed());
}
