//! Numbered threats from the threat list, each tried against the real control plane with
//! the operator under test: what an attacker or an accident would do, and proof that
//! nothing is issued, widened, leaked or forgotten.

use std::{pin::pin, time::Duration};

use futures::TryStreamExt;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Secret},
    events::v1::Event,
};
use kube::{
    Api,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use mandate::api::{AgentIdentity, GrantPhase, ToolGrant};
use serde_json::json;
use tokio::sync::watch;

use crate::{
    grants::{Fixture, check_svid, github, secret_for},
    identity::identity,
    support::{
        self, TIMEOUT, TestNamespace,
        kubelet::{self, Outcome},
        operator::Operator,
        wait::wait_deleted,
        wait_for,
    },
};

const TASK: (&str, &str, &str) = ("batch/v1", "Job", "work");

/// The grant's `Ready` condition as (reason, message), if it has one.
fn ready(g: &ToolGrant) -> Option<(String, String)> {
    g.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.reason.clone(), c.message.clone()))
}

/// Waits until grant `name` reports `Ready` with `reason`.
async fn wait_reason(f: &Fixture, name: &str, reason: &'static str) -> ToolGrant {
    wait_for(&f.grants, name, reason, move |g: &ToolGrant| {
        ready(g).is_some_and(|(r, _)| r == reason)
    })
    .await
}

/// The live certificate's serial of an Issued grant.
/// The DER of the certificate in a grant Secret's `tls.crt`.
fn leaf_der(secret: &Secret) -> Vec<u8> {
    let pem = &secret.data.as_ref().expect("secret has data")["tls.crt"].0;
    ::pem::parse(pem).expect("tls.crt is PEM").into_contents()
}

/// Why the revocation record (the serial's CertificateRecord) says `serial` was revoked.
async fn ledger_reason(f: &Fixture, serial: &str) -> Option<String> {
    let record =
        f.ns.api::<mandate::api::CertificateRecord>()
            .get_opt(serial)
            .await
            .unwrap()?;
    record.spec.revocation.map(|r| r.reason.as_str().to_string())
}

/// Waits until an Event in the test namespace satisfies `pred` (the Events are watched).
async fn wait_event(ns: &TestNamespace, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let api: Api<Event> = ns.api();
    let mut events = pin!(watcher(api, watcher::Config::default()).applied_objects());
    let find = async {
        while let Some(ev) = events.try_next().await.expect("event watch") {
            if pred(&ev) {
                return ev;
            }
        }
        panic!("event watch ended while waiting for {what}")
    };
    tokio::time::timeout(TIMEOUT, find)
        .await
        .unwrap_or_else(|_| panic!("timed out after {TIMEOUT:?} waiting for an Event: {what}"))
}

fn is_event(ev: &Event, grant: &str, reason: &str) -> bool {
    ev.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(grant) && ev.reason.as_deref() == Some(reason)
}

/// Waits until the operator's log satisfies `pred`. The log is a file, which cannot be
/// watched like an API object, so it is read again every 100 ms until the timeout.
async fn wait_for_log(op: &Operator, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let poll = async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let text = op.log_text();
            if pred(&text) {
                return text;
            }
        }
    };
    match tokio::time::timeout(TIMEOUT, poll).await {
        Ok(text) => text,
        Err(_) => panic!(
            "timed out after {TIMEOUT:?} waiting for the operator log to show {what}; log:\n{}",
            op.log_text()
        ),
    }
}

#[tokio::test]
async fn threat_1_grant_cannot_reference_an_identity_in_another_namespace() {
    let f = Fixture::new("xns").await;
    // The identity exists, but only in another namespace.
    let other = TestNamespace::new(&f.ns.client, "xns-other").await;
    other
        .api::<AgentIdentity>()
        .create(&PostParams::default(), &identity("triage"))
        .await
        .unwrap();
    f.job("work", None).await;
    f.grant("g", "triage", TASK, github(), None).await;
    let g = wait_reason(&f, "g", "IdentityNotFound").await;
    assert_eq!(g.status.unwrap().phase, Some(GrantPhase::Pending));
    assert!(f.secrets.get_opt("g").await.unwrap().is_none(), "a Secret was written");
    assert!(other.api::<Secret>().get_opt("g").await.unwrap().is_none());

    // The schema has no way to name another namespace. A client asking for strict field
    // validation (kubectl's default) is refused; any other has the field pruned. Either
    // way the grant never reaches the identity over there.
    let body = json!({
        "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant",
        "metadata": { "name": "g-ns" },
        "spec": {
            "identityRef": { "name": "triage", "namespace": other.name },
            "taskRef": { "apiVersion": "batch/v1", "kind": "Job", "name": "work" },
            "tools": github(), "purpose": "reach across namespaces",
        },
    });
    let ar = ApiResource::erase::<ToolGrant>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(f.ns.client.clone(), &f.ns.name, &ar);
    let mut strict = kube::core::Request::new(raw.resource_url())
        .create(&PostParams::default(), serde_json::to_vec(&body).unwrap())
        .unwrap();
    *strict.uri_mut() = format!("{}?fieldValidation=Strict", raw.resource_url())
        .parse()
        .unwrap();
    match f.ns.client.request::<DynamicObject>(strict).await {
        Err(kube::Error::Api(e)) => assert!(
            e.code == 400 && e.message.contains("unknown field \"spec.identityRef.namespace\""),
            "unexpected rejection: {e:?}"
        ),
        other => panic!("identityRef.namespace accepted under strict validation: {other:?}"),
    }
    support::create_raw::<ToolGrant>(&f.ns, body)
        .await
        .expect("without strict validation the unknown field is pruned, not refused");
    let stored = raw.get("g-ns").await.unwrap();
    assert_eq!(
        stored.data["spec"]["identityRef"],
        json!({ "name": "triage" }),
        "identityRef.namespace was stored"
    );
    let g = wait_reason(&f, "g-ns", "IdentityNotFound").await;
    assert_eq!(g.status.unwrap().phase, Some(GrantPhase::Pending));
    assert!(f.secrets.get_opt("g-ns").await.unwrap().is_none());
    other.cleanup().await;
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_4_grant_waits_for_a_missing_identity_and_is_checked_against_it_when_it_appears() {
    let f = Fixture::new("late-id").await;
    f.job("work", None).await;
    f.grant("g", "triage", TASK, github(), None).await;
    let g = wait_reason(&f, "g", "IdentityNotFound").await;
    assert_eq!(g.status.unwrap().phase, Some(GrantPhase::Pending));
    assert!(f.secrets.get_opt("g").await.unwrap().is_none());

    // An identity of that name appears, but its ceiling does not cover the grant.
    let mut narrow = identity("triage");
    narrow.spec.tools = serde_json::from_value(json!([{ "name": "postgres", "actions": ["read"] }])).unwrap();
    f.ids.create(&PostParams::default(), &narrow).await.unwrap();
    let g = f.wait_phase("g", GrantPhase::Denied).await;
    let (reason, message) = ready(&g).unwrap();
    assert_eq!(reason, "ExceedsIdentityCeiling");
    assert!(message.contains("\"github\""), "excess not named: {message}");
    assert!(
        f.secrets.get_opt("g").await.unwrap().is_none(),
        "issued beyond the ceiling"
    );

    // Widening the ceiling is a new decision, and now the grant fits.
    let ceiling = json!({ "spec": { "tools": [
        { "name": "postgres", "actions": ["read"] },
        { "name": "github", "actions": ["read"], "destinations": ["api.github.com"] },
    ]}});
    f.ids
        .patch("triage", &PatchParams::default(), &Patch::Merge(&ceiling))
        .await
        .unwrap();
    let serial = f.issued_serial("g").await;
    let spiffe = format!("spiffe://e2e.example/ns/{}/agent/triage", f.ns.name);
    let (in_secret, _) = check_svid(&secret_for(&f, "g").await, &spiffe);
    assert_eq!(in_secret, serial);
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_7_widening_a_running_grant_revokes_the_old_certificate_before_the_new_scope_is_issued() {
    let f = Fixture::new("widen").await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", TASK, github(), None).await;
    let old = f.issued_serial("g").await;

    let wider = json!({ "spec": { "tools": [
        { "name": "github", "actions": ["read", "write"], "destinations": ["api.github.com"] },
    ]}});
    let generation = f
        .grants
        .patch("g", &PatchParams::default(), &Patch::Merge(&wider))
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap();
    assert_eq!(generation, 2);
    let g = wait_for(&f.grants, "g", "issued for the new generation", move |g: &ToolGrant| {
        g.status
            .as_ref()
            .and_then(|s| s.certificate.as_ref())
            .is_some_and(|c| c.grant_generation == generation)
    })
    .await;
    assert_eq!(ready(&g).unwrap().0, "ScopeChanged");
    let status = g.status.unwrap();
    assert_eq!(status.phase, Some(GrantPhase::Issued));
    let new = status.certificate.unwrap().serial_number;
    assert_ne!(new, old, "the wider scope was not given a new certificate");
    let (_, revoked) = f.crl().await;
    assert!(revoked.contains(&old), "old serial {old} not in the CRL {revoked:?}");
    assert!(!revoked.contains(&new));
    assert_eq!(ledger_reason(&f, &old).await.as_deref(), Some("ScopeChanged"));

    let secret = f.secrets.get("g").await.unwrap();
    let scope = mandate::pki::read_scope(&leaf_der(&secret))
        .unwrap()
        .expect("scope extension present");
    assert_eq!(scope.grant_generation, 2);
    assert!(scope.tools[0].actions.iter().any(|a| a == "write"), "{:?}", scope.tools);
    let spiffe = format!("spiffe://e2e.example/ns/{}/agent/triage", f.ns.name);
    assert_eq!(check_svid(&secret, &spiffe).0, new);
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_7_widening_beyond_the_ceiling_denies_and_revokes() {
    let f = Fixture::new("widen-deny").await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", TASK, github(), None).await;
    let old = f.issued_serial("g").await;

    let beyond = json!({ "spec": { "tools": [
        { "name": "github", "actions": ["read", "admin"], "destinations": ["api.github.com"] },
    ]}});
    f.grants
        .patch("g", &PatchParams::default(), &Patch::Merge(&beyond))
        .await
        .unwrap();
    let g = f.wait_phase("g", GrantPhase::Denied).await;
    let (reason, message) = ready(&g).unwrap();
    assert_eq!(reason, "ExceedsIdentityCeiling");
    assert!(message.contains("\"admin\""), "excess not named: {message}");
    let (_, revoked) = f.crl().await;
    assert!(revoked.contains(&old), "old serial {old} not in the CRL {revoked:?}");
    assert_eq!(ledger_reason(&f, &old).await.as_deref(), Some("Withdrawn"));
    assert!(
        f.secrets.get_opt("g").await.unwrap().is_none(),
        "the Secret with the revoked certificate was left behind"
    );
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_19_deleted_ca_secret_stops_issuance_and_no_new_root_is_created() {
    let mut f = Fixture::new("ca-gone").await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", TASK, github(), None).await;
    f.issued_serial("g").await;
    let cms: Api<ConfigMap> = f.ns.api();
    wait_for(&cms, "mandate-crl", "published", |_| true).await;

    f.secrets.delete("mandate-ca", &DeleteParams::default()).await.unwrap();
    wait_deleted(&f.secrets, "mandate-ca", "deleted by the test").await;
    wait_for_log(&f.op, "the CA deletion", |log| log.contains("CA Secret deleted")).await;

    f.job("work2", None).await;
    f.grant("g2", "triage", ("batch/v1", "Job", "work2"), github(), None)
        .await;
    let g2 = wait_reason(&f, "g2", "CaMissing").await;
    assert_eq!(g2.status.unwrap().phase, Some(GrantPhase::Pending));
    wait_event(&f.ns, "CaMissing for g2", |e| is_event(e, "g2", "CaMissing")).await;
    assert!(f.secrets.get_opt("g2").await.unwrap().is_none(), "issued without a CA");
    assert!(
        f.secrets.get_opt("mandate-ca").await.unwrap().is_none(),
        "a new root was created"
    );

    // A fresh process finds the CRL of the earlier CA and refuses to bootstrap a root.
    f.op.restart(&f.ns.name).await;
    wait_for_log(&f.op, "the missing CA at start", |log| {
        log.contains("CA is not usable") && log.contains("CaMissing")
    })
    .await;
    // Change the grant so the new process must decide about it again.
    let generation = f
        .grants
        .patch(
            "g2",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": { "purpose": "triage, after the restart" } })),
        )
        .await
        .unwrap()
        .metadata
        .generation;
    let g2 = wait_for(
        &f.grants,
        "g2",
        "CaMissing for the new generation",
        move |g: &ToolGrant| {
            g.status.as_ref().and_then(|s| s.observed_generation) == generation
                && ready(g).is_some_and(|(r, _)| r == "CaMissing")
        },
    )
    .await;
    assert_eq!(g2.status.unwrap().phase, Some(GrantPhase::Pending));
    assert!(f.secrets.get_opt("g2").await.unwrap().is_none(), "issued without a CA");
    assert!(
        f.secrets.get_opt("mandate-ca").await.unwrap().is_none(),
        "a new root was created after the restart"
    );
    assert!(!f.op.log_text().contains("created self-signed root CA"));
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_33_oversized_specs_are_rejected_by_the_schema() {
    let c = support::client().await;
    support::install_crds(&c).await;
    let ns = TestNamespace::new(&c, "oversize").await;
    let grant = |name: &str, tools: serde_json::Value, purpose: String| {
        json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant",
            "metadata": { "name": name },
            "spec": {
                "identityRef": { "name": "triage" },
                "taskRef": { "apiVersion": "batch/v1", "kind": "Job", "name": "work" },
                "tools": tools, "purpose": purpose,
            },
        })
    };
    let tool = |name: String, actions: Vec<String>, destinations: Vec<String>| json!({ "name": name, "actions": actions, "destinations": destinations });
    let read = || vec!["read".to_string()];
    let purpose = || "triage".to_string();

    // The largest spec the limits allow is accepted, so the rejections below are the limits'.
    let max_tools: Vec<_> = (0..64).map(|i| tool(format!("t{i}"), read(), vec![])).collect();
    support::create_raw::<ToolGrant>(&ns, grant("at-limits", json!(max_tools), "p".repeat(1024)))
        .await
        .expect("a grant at the limits is accepted");

    let many_tools: Vec<_> = (0..65).map(|i| tool(format!("t{i}"), read(), vec![])).collect();
    let many_actions = tool("github".into(), (0..33).map(|i| format!("a{i}")).collect(), vec![]);
    let long_destination = tool("github".into(), read(), vec!["a".repeat(300)]);
    let cases = [
        ("65 tools", json!(many_tools), purpose(), "spec.tools"),
        ("33 actions", json!([many_actions]), purpose(), "actions"),
        ("a 1 MiB purpose", github(), "p".repeat(1 << 20), "spec.purpose"),
        (
            "a 300-character destination",
            json!([long_destination]),
            purpose(),
            "destinations",
        ),
    ];
    for (what, tools, purpose, field) in cases {
        let err = support::create_raw::<ToolGrant>(&ns, grant("big", tools, purpose))
            .await
            .expect_err(&format!("a grant with {what} was accepted"));
        match err {
            kube::Error::Api(e) => {
                assert_eq!(e.code, 422, "{what}: {e:?}");
                assert!(e.message.contains(field), "{what}: error does not name {field}: {e:?}");
            }
            e => panic!("{what}: not rejected by the API server: {e}"),
        }
    }
    ns.cleanup().await;
}

/// Every 40-character run of the base64 body of a PEM private key.
fn key_fragments(key_pem: &[u8]) -> Vec<String> {
    let text = String::from_utf8(key_pem.to_vec()).expect("key is PEM text");
    assert!(text.contains("PRIVATE KEY"), "not a private key: {text}");
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(body.len() > 40, "key body too short: {body}");
    (0..=body.len() - 40).map(|i| body[i..i + 40].to_string()).collect()
}

#[tokio::test]
async fn threat_25_private_keys_never_reach_status_events_or_logs() {
    let f = Fixture::new("nokeys").await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", TASK, github(), None).await;
    let serial = f.issued_serial("g").await;
    let leaf_key = secret_for(&f, "g").await.data.unwrap()["tls.key"].0.clone();
    let ca_key = f.secrets.get("mandate-ca").await.unwrap().data.unwrap()["tls.key"]
        .0
        .clone();
    kubelet::finish_job_pod(&f.pods, "work", Outcome::Succeeded).await;
    f.wait_phase("g", GrantPhase::Revoked).await;
    wait_event(&f.ns, "the Issue event", |e| is_event(e, "g", "Initial")).await;
    wait_event(&f.ns, "the Revoke event", |e| is_event(e, "g", "TaskCompleted")).await;

    let grant = serde_json::to_string(&f.grants.get("g").await.unwrap()).unwrap();
    let events = serde_json::to_string(&f.ns.api::<Event>().list(&Default::default()).await.unwrap()).unwrap();
    let core_events = serde_json::to_string(
        &f.ns
            .api::<k8s_openapi::api::core::v1::Event>()
            .list(&Default::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let log = f.op.log_text();
    // What is searched is what was published about this grant.
    assert!(grant.contains(&serial) && log.contains(&serial) && events.contains("TaskCompleted"));

    let fragments: Vec<_> = key_fragments(&leaf_key)
        .into_iter()
        .chain(key_fragments(&ca_key))
        .collect();
    for (what, text) in [
        ("the grant", &grant),
        ("the Events", &events),
        ("the core Events", &core_events),
        ("the operator log", &log),
    ] {
        assert!(!text.contains("PRIVATE KEY"), "a private key header is in {what}");
        if let Some(leak) = fragments.iter().find(|frag| text.contains(frag.as_str())) {
            panic!("private key material {leak:?} is in {what}");
        }
    }
    f.ns.cleanup().await;
}

/// Records the `crlNumber` of every version of the CRL ConfigMap the watch delivers.
fn record_crl_numbers(cms: Api<ConfigMap>) -> (watch::Receiver<Vec<u64>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(vec![]);
    let task = tokio::spawn(async move {
        let cfg = watcher::Config::default().fields("metadata.name=mandate-crl");
        let mut versions = pin!(watcher(cms, cfg).default_backoff().applied_objects());
        let mut last_version = None;
        while let Ok(Some(cm)) = versions.try_next().await {
            if cm.metadata.resource_version == last_version {
                continue; // the same version again, after the watch re-listed
            }
            last_version = cm.metadata.resource_version.clone();
            let number = cm
                .data
                .as_ref()
                .and_then(|d| d.get("crlNumber"))
                .map(|n| n.parse().unwrap());
            tx.send_modify(|seen| seen.push(number.expect("CRL ConfigMap has a crlNumber")));
        }
    });
    (rx, task)
}

/// Waits until the CRL number is above `above` (the ConfigMap is watched) and returns the signed CRL.
async fn wait_crl_number_above(f: &Fixture, above: u64) -> (u64, Vec<String>) {
    let cms: Api<ConfigMap> = f.ns.api();
    wait_for(&cms, "mandate-crl", &format!("crlNumber above {above}"), move |cm| {
        cm.data
            .as_ref()
            .and_then(|d| d.get("crlNumber"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > above)
    })
    .await;
    f.crl().await
}

#[tokio::test]
async fn threat_23_crl_number_only_increases_across_restarts() {
    let mut f = Fixture::new("crlnum").await;
    let (mut seen, recorder) = record_crl_numbers(f.ns.api());
    f.identity("triage").await;
    f.job("work", None).await;
    f.job("work2", None).await;
    f.grant("g", "triage", TASK, github(), None).await;
    let first = f.issued_serial("g").await;
    let n0 = wait_crl_number_above(&f, 0).await.0;

    kubelet::finish_job_pod(&f.pods, "work", Outcome::Succeeded).await;
    f.wait_phase("g", GrantPhase::Revoked).await;
    let (n1, revoked) = f.crl().await;
    assert!(revoked.contains(&first));

    // The restarted operator re-signs the CRL on start: a higher number, nothing dropped.
    f.op.restart(&f.ns.name).await;
    let (n2, revoked) = wait_crl_number_above(&f, n1).await;
    assert!(revoked.contains(&first), "{first} dropped after a restart: {revoked:?}");

    f.grant("g2", "triage", ("batch/v1", "Job", "work2"), github(), None)
        .await;
    let second = f.issued_serial("g2").await;
    kubelet::finish_job_pod(&f.pods, "work2", Outcome::Succeeded).await;
    f.wait_phase("g2", GrantPhase::Revoked).await;
    let (n3, revoked) = f.crl().await;
    assert!(revoked.contains(&first) && revoked.contains(&second), "{revoked:?}");

    f.op.restart(&f.ns.name).await;
    let (n4, revoked) = wait_crl_number_above(&f, n3).await;
    assert!(
        revoked.contains(&first) && revoked.contains(&second),
        "entries dropped after the second restart: {revoked:?}"
    );

    let checkpoints = [n0, n1, n2, n3, n4];
    assert!(
        checkpoints.windows(2).all(|w| w[0] < w[1]),
        "CRL numbers {checkpoints:?}"
    );
    let seen = tokio::time::timeout(TIMEOUT, seen.wait_for(|seen| seen.contains(&n4)))
        .await
        .expect("the CRL watch saw the last version")
        .expect("the CRL watch is running")
        .clone();
    recorder.abort();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "the CRL number went backwards at some point: {seen:?}"
    );
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_19_restoring_the_ca_secret_resumes_issuance_for_waiting_grants() {
    let f = Fixture::new("ca-back").await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", TASK, github(), None).await;
    f.issued_serial("g").await;
    let cms: Api<ConfigMap> = f.ns.api();
    wait_for(&cms, "mandate-crl", "published", |_| true).await;
    let ca = f.secrets.get("mandate-ca").await.unwrap();
    let root = ca.data.as_ref().unwrap()["tls.crt"].0.clone();

    f.secrets.delete("mandate-ca", &DeleteParams::default()).await.unwrap();
    wait_deleted(&f.secrets, "mandate-ca", "deleted by the test").await;
    wait_for_log(&f.op, "the CA deletion", |log| log.contains("CA Secret deleted")).await;
    f.job("work2", None).await;
    f.grant("g2", "triage", ("batch/v1", "Job", "work2"), github(), None)
        .await;
    wait_reason(&f, "g2", "CaMissing").await;

    // The operator's backup is put back: the grant that waited for it is issued under the old root.
    let restored: Secret = serde_json::from_value(json!({
        "metadata": { "name": "mandate-ca" }, "type": "kubernetes.io/tls",
        "data": ca.data,
    }))
    .unwrap();
    f.secrets.create(&PostParams::default(), &restored).await.unwrap();
    f.issued_serial("g2").await;
    let secret = secret_for(&f, "g2").await;
    assert_eq!(secret.data.unwrap()["ca.crt"].0, root, "issued under another root");
    f.ns.cleanup().await;
}
