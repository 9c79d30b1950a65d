//! AgentIdentity as the operator reports it.

use kube::{Api, api::PostParams};
use mandate::api::AgentIdentity;
use serde_json::json;

use crate::support::{self, TestNamespace, operator::Operator, wait_for};

pub fn identity(name: &str) -> AgentIdentity {
    serde_json::from_value(json!({
        "apiVersion": "mandate.dev/v1alpha1", "kind": "AgentIdentity",
        "metadata": { "name": name },
        "spec": {
            "owner": "team-e2e",
            "serviceAccountName": "agent",
            "tools": [{ "name": "github", "actions": ["read", "write"], "destinations": ["api.github.com"] }],
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn identity_reports_its_spiffe_id_and_ready() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = TestNamespace::new(&client, "ident").await;
    let ca_ns = format!("--ca-secret-namespace={}", ns.name);
    let _op = Operator::start(&ns.name, &["--trust-domain=e2e.example", &ca_ns]).await;
    let ids: Api<AgentIdentity> = ns.api();
    ids.create(&PostParams::default(), &identity("triage")).await.unwrap();
    let got = wait_for(&ids, "triage", "Ready", |i: &AgentIdentity| {
        i.status
            .as_ref()
            .is_some_and(|s| mandate::conditions::is_true(&s.conditions, "Ready"))
    })
    .await;
    let status = got.status.unwrap();
    assert_eq!(
        status.spiffe_id.as_deref(),
        Some(format!("spiffe://e2e.example/ns/{}/agent/triage", ns.name).as_str())
    );
    assert_eq!(status.observed_generation, got.metadata.generation);
    ns.cleanup().await;
}

#[tokio::test]
async fn schema_rejects_ttl_garbage_and_tool_name_tricks() {
    // Threats 3 and 8: the API server refuses these before the operator sees them.
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = TestNamespace::new(&client, "schema").await;
    let ids: Api<AgentIdentity> = ns.api();
    let raw = |ttl: &str, tool: &str| {
        json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "AgentIdentity",
            "metadata": { "name": "bad" },
            "spec": {
                "owner": "o", "serviceAccountName": "agent", "maxTTL": ttl,
                "tools": [{ "name": tool, "actions": ["read"] }],
            },
        })
    };
    for ttl in ["0s", "-1h", "1e9", "999999h", "9223372036854775807", "soon", ""] {
        let err = support::create_raw::<AgentIdentity>(&ns, raw(ttl, "github"))
            .await
            .expect_err(&format!("maxTTL {ttl:?} accepted"));
        assert!(
            err.to_string().contains("maxTTL"),
            "error for {ttl:?} does not name the field: {err}"
        );
    }
    support::create_raw::<AgentIdentity>(&ns, raw("30m", "github"))
        .await
        .expect("a valid identity is accepted");
    ids.delete("bad", &Default::default()).await.unwrap();
    for name in [
        "GitHub",
        "git hub",
        "github ",
        "*",
        "../etc",
        "gith\u{0443}b",
        "a\0b",
        "",
    ] {
        let err = support::create_raw::<AgentIdentity>(&ns, raw("30m", name))
            .await
            .expect_err(&format!("tool name {name:?} accepted"));
        assert!(
            err.to_string().contains("name"),
            "error for {name:?} does not name the field: {err}"
        );
    }
    ns.cleanup().await;
}
