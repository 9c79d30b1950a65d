//! Task-bound certificates on the real control plane: issuance, renewal, revocation
//! when the task ends, and what must never happen (a foreign Secret overwritten, a
//! certificate beyond the ceiling, a duplicate after a crash).

use std::time::Duration;

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, Pod, Secret},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use mandate::api::{AgentIdentity, GrantPhase, ToolGrant};
use serde_json::json;
use x509_parser::prelude::*;

use crate::{
    controlplane::job,
    identity::identity,
    support::{
        TestNamespace, client,
        kubelet::{self, Outcome},
        operator::Operator,
        wait::{wait_deleted, wait_for_within},
        wait_for,
    },
};

/// A test namespace with its own operator whose CA and CRL live in that namespace.
pub(crate) struct Fixture {
    pub(crate) ns: TestNamespace,
    pub(crate) op: Operator,
    pub(crate) grants: Api<ToolGrant>,
    pub(crate) secrets: Api<Secret>,
    pub(crate) jobs: Api<Job>,
    pub(crate) pods: Api<Pod>,
    pub(crate) ids: Api<AgentIdentity>,
}

impl Fixture {
    pub(crate) async fn new(prefix: &str) -> Fixture {
        Self::with_flags(prefix, &[]).await
    }

    pub(crate) async fn with_flags(prefix: &str, flags: &[&str]) -> Fixture {
        let c = client().await;
        crate::support::install_crds(&c).await;
        let ns = TestNamespace::new(&c, prefix).await;
        Self::start(ns, flags).await
    }

    /// The operator for `ns`, with a policy permitting every issuance there.
    pub(crate) async fn start(ns: TestNamespace, flags: &[&str]) -> Fixture {
        crate::support::agent_policy(&ns, "permit-all", "Enforce", crate::support::PERMIT_ALL).await;
        Self::start_without_policies(ns, flags).await
    }

    /// The operator for `ns`, with no AgentPolicy: every grant is denied by default.
    pub(crate) async fn start_without_policies(ns: TestNamespace, flags: &[&str]) -> Fixture {
        let mut args = vec![
            format!("--ca-secret-namespace={}", ns.name),
            "--trust-domain=e2e.example".to_string(),
        ];
        args.extend(flags.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let op = Operator::start(&ns.name, &refs).await;
        Self::with_operator(ns, op)
    }

    /// A fixture around an operator already started for `ns`.
    pub(crate) fn with_operator(ns: TestNamespace, op: Operator) -> Fixture {
        Fixture {
            grants: ns.api(),
            secrets: ns.api(),
            jobs: ns.api(),
            pods: ns.api(),
            ids: ns.api(),
            ns,
            op,
        }
    }

    pub(crate) async fn identity(&self, name: &str) {
        self.ids.create(&PostParams::default(), &identity(name)).await.unwrap();
    }

    pub(crate) async fn job(&self, name: &str, deadline: Option<i64>) -> Job {
        let mut j = job(name);
        j.spec.as_mut().unwrap().active_deadline_seconds = deadline;
        self.jobs.create(&PostParams::default(), &j).await.unwrap()
    }

    pub(crate) async fn grant(
        &self,
        name: &str,
        identity: &str,
        task: (&str, &str, &str),
        tools: serde_json::Value,
        ttl: Option<&str>,
    ) -> ToolGrant {
        let mut spec = json!({
            "identityRef": { "name": identity },
            "taskRef": { "apiVersion": task.0, "kind": task.1, "name": task.2 },
            "tools": tools,
            "purpose": "triage new issues in acme/widgets",
        });
        if let Some(ttl) = ttl {
            spec["ttl"] = json!(ttl);
        }
        let g: ToolGrant = serde_json::from_value(json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant",
            "metadata": { "name": name }, "spec": spec,
        }))
        .unwrap();
        self.grants.create(&PostParams::default(), &g).await.unwrap()
    }

    pub(crate) async fn wait_phase(&self, name: &str, phase: GrantPhase) -> ToolGrant {
        wait_for(&self.grants, name, &format!("{phase:?}"), move |g: &ToolGrant| {
            g.status.as_ref().and_then(|s| s.phase) == Some(phase)
        })
        .await
    }

    /// Waits until the grant is Issued and returns its certificate's serial.
    pub(crate) async fn issued_serial(&self, name: &str) -> String {
        let g = self.wait_phase(name, GrantPhase::Issued).await;
        g.status
            .and_then(|s| s.certificate)
            .expect("an issued grant reports its certificate")
            .serial_number
    }

    pub(crate) async fn crl(&self) -> (u64, Vec<String>) {
        let cms: Api<ConfigMap> = self.ns.api();
        let cm = cms.get("mandate-crl").await.expect("CRL ConfigMap published");
        crl_of(&cm).expect("the CRL ConfigMap holds a readable CRL")
    }

    /// Waits until the CRL lists `serial` (the ConfigMap is watched, not polled).
    pub(crate) async fn wait_revoked_in_crl(&self, serial: &str) {
        let cms: Api<ConfigMap> = self.ns.api();
        let serial = serial.to_string();
        wait_for(&cms, "mandate-crl", "listing the serial", move |cm: &ConfigMap| {
            crl_of(cm).is_some_and(|(_, serials)| serials.contains(&serial))
        })
        .await;
    }
}

/// The CRL number and serials of the signed CRL in a CRL ConfigMap, checked against the
/// `crlNumber` beside it; `None` if there is no readable CRL.
pub(crate) fn crl_of(cm: &ConfigMap) -> Option<(u64, Vec<String>)> {
    let data = cm.data.as_ref()?;
    let der = ::pem::parse(data.get("crl.pem")?).ok()?.into_contents();
    let (number, serials) = crl_der(&der)?;
    assert_eq!(
        data.get("crlNumber").map(String::as_str),
        Some(number.to_string().as_str()),
        "crlNumber disagrees with the signed CRL"
    );
    Some((number, serials))
}

/// The CRL number and serials of a DER CRL; `None` if it does not parse.
pub(crate) fn crl_der(der: &[u8]) -> Option<(u64, Vec<String>)> {
    let (rest, crl) = parse_x509_crl(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let number = crl.crl_number()?.to_u64_digits().first().copied().unwrap_or(0);
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial_as_string().replace(':', ""))
        .collect();
    Some((number, serials))
}

pub(crate) fn github() -> serde_json::Value {
    json!([{ "name": "github", "actions": ["read"], "destinations": ["api.github.com"] }])
}

/// Parses the Secret's certificate and checks the X.509-SVID profile and the chain.
pub(crate) fn check_svid(secret: &Secret, spiffe_id: &str) -> (String, i64) {
    let data = secret.data.as_ref().expect("secret has data");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(data.contains_key(key), "secret lacks {key}");
    }
    let leaf_der = ::pem::parse(&data["tls.crt"].0).unwrap().into_contents();
    let ca_der = ::pem::parse(&data["ca.crt"].0).unwrap().into_contents();
    let (_, leaf) = parse_x509_certificate(&leaf_der).unwrap();
    let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
    leaf.verify_signature(Some(ca.public_key()))
        .expect("leaf chains to ca.crt");
    let sans = leaf.subject_alternative_name().unwrap().expect("has SAN").value;
    assert_eq!(sans.general_names.len(), 1, "exactly one SAN");
    assert_eq!(sans.general_names[0], GeneralName::URI(spiffe_id));
    let bc = leaf.basic_constraints().unwrap().expect("basicConstraints present");
    assert!(!bc.value.ca);
    let ku = leaf.key_usage().unwrap().expect("keyUsage present");
    assert!(ku.critical);
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().expect("EKU present").value;
    assert!(eku.client_auth && eku.server_auth);
    let scope = mandate::pki::read_scope(&leaf_der)
        .unwrap()
        .expect("scope extension present");
    assert_eq!(scope.tools[0].name, "github");
    (
        leaf.raw_serial_as_string().replace(':', ""),
        leaf.validity().not_after.timestamp(),
    )
}

pub(crate) fn secret_for(f: &Fixture, name: &str) -> impl std::future::Future<Output = Secret> {
    let secrets = f.secrets.clone();
    let name = name.to_string();
    async move { wait_for(&secrets, &name, "present", |_| true).await }
}

#[tokio::test]
async fn job_grant_issues_a_valid_svid_capped_by_the_job_deadline() {
    let f = Fixture::new("issue-job").await;
    f.identity("triage").await;
    let j = f.job("work", Some(600)).await;
    let pod = kubelet::wait_for_job_pod(&f.pods, "work").await;
    kubelet::start_pod(&f.pods, &pod.name_any()).await;
    // The Job controller sets status.startTime; the deadline counts from there.
    let started = wait_for(&f.jobs, "work", "started", |j: &Job| {
        j.status.as_ref().and_then(|s| s.start_time.as_ref()).is_some()
    })
    .await;
    f.grant("g", "triage", ("batch/v1", "Job", "work"), github(), Some("2h"))
        .await;
    let g = f.wait_phase("g", GrantPhase::Issued).await;
    let status = g.status.unwrap();
    let cert = status.certificate.unwrap();
    assert_eq!(cert.lifetime_cap, mandate::api::LifetimeCap::TaskDeadline);
    let secret = secret_for(&f, "g").await;
    let spiffe = format!("spiffe://e2e.example/ns/{}/agent/triage", f.ns.name);
    let (serial, not_after) = check_svid(&secret, &spiffe);
    assert_eq!(serial, cert.serial_number);
    let deadline = started.status.unwrap().start_time.unwrap().0.as_second() + 600;
    assert!(
        not_after <= deadline,
        "notAfter {not_after} beyond the Job deadline {deadline}"
    );
    // Labels and owners: the grant controls it, the task owns it too.
    assert_eq!(secret.labels()["mandate.dev/grant"], "g");
    let owners = secret.owner_references();
    assert!(
        owners
            .iter()
            .any(|o| o.kind == "ToolGrant" && o.controller == Some(true))
    );
    assert!(owners.iter().any(|o| o.kind == "Job" && o.uid == j.uid().unwrap()));
    // The trust bundle is published in the identity's namespace.
    let cms: Api<ConfigMap> = f.ns.api();
    wait_for(&cms, "mandate-trust-bundle", "published", |cm: &ConfigMap| {
        cm.data.as_ref().is_some_and(|d| d.contains_key("ca.crt"))
    })
    .await;
    f.ns.cleanup().await;
}

#[tokio::test]
async fn completed_job_revokes_the_serial_then_deletes_the_secret() {
    let f = Fixture::new("complete").await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", ("batch/v1", "Job", "work"), github(), Some("10m"))
        .await;
    let serial = f.issued_serial("g").await;
    let (number_before, _) = f.crl().await;
    kubelet::finish_job_pod(&f.pods, "work", Outcome::Succeeded).await;
    let g = f.wait_phase("g", GrantPhase::Revoked).await;
    let rev = g.status.unwrap().revocation.unwrap();
    assert_eq!(rev.reason, "TaskCompleted");
    assert_eq!(rev.serial_numbers, vec![serial.clone()]);
    let (number_after, serials) = f.crl().await;
    assert!(serials.contains(&serial), "serial {serial} not in the CRL {serials:?}");
    assert!(number_after > number_before, "CRL number did not increase");
    assert!(f.secrets.get_opt("g").await.unwrap().is_none(), "Secret left behind");
    f.ns.cleanup().await;
}

#[tokio::test]
async fn pod_grant_is_revoked_when_the_pod_fails() {
    let f = Fixture::new("podfail").await;
    f.identity("triage").await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "agent" },
        "spec": { "restartPolicy": "Never", "activeDeadlineSeconds": 900, "containers": [{ "name": "a", "image": "example.invalid/a" }] },
    }))
    .unwrap();
    f.pods.create(&PostParams::default(), &pod).await.unwrap();
    kubelet::start_pod(&f.pods, "agent").await;
    f.grant("g", "triage", ("v1", "Pod", "agent"), github(), None).await;
    let g = f.wait_phase("g", GrantPhase::Issued).await;
    let spiffe = format!("spiffe://e2e.example/ns/{}/agent/triage", f.ns.name);
    check_svid(&secret_for(&f, "g").await, &spiffe);
    let serial = g.status.unwrap().certificate.unwrap().serial_number;
    kubelet::finish_pod(&f.pods, "agent", Outcome::Failed).await;
    let g = f.wait_phase("g", GrantPhase::Revoked).await;
    assert_eq!(g.status.unwrap().revocation.unwrap().reason, "TaskFailed");
    assert!(f.crl().await.1.contains(&serial));
    assert!(f.secrets.get_opt("g").await.unwrap().is_none());
    f.ns.cleanup().await;
}

#[tokio::test]
async fn deleted_task_revokes_the_grant() {
    let f = Fixture::new("taskdel").await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", ("batch/v1", "Job", "work"), github(), None)
        .await;
    let serial = f.issued_serial("g").await;
    f.jobs.delete("work", &DeleteParams::foreground()).await.unwrap();
    let g = f.wait_phase("g", GrantPhase::Revoked).await;
    assert_eq!(g.status.unwrap().revocation.unwrap().reason, "TaskDeleted");
    assert!(f.crl().await.1.contains(&serial));
    wait_deleted(&f.secrets, "g", "deleted with its task").await;
    f.ns.cleanup().await;
}

#[tokio::test]
async fn deleted_grant_is_revoked_before_it_goes() {
    let f = Fixture::new("grantdel").await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", ("batch/v1", "Job", "work"), github(), None)
        .await;
    let g = f.wait_phase("g", GrantPhase::Issued).await;
    assert!(g.finalizers().iter().any(|x| x == "mandate.dev/revocation"));
    let serial = g.status.unwrap().certificate.unwrap().serial_number;
    f.grants.delete("g", &DeleteParams::default()).await.unwrap();
    wait_deleted(&f.grants, "g", "finalized after revocation").await;
    assert!(
        f.crl().await.1.contains(&serial),
        "deleted grant's serial not in the CRL"
    );
    wait_deleted(&f.secrets, "g", "deleted with its grant").await;
    f.ns.cleanup().await;
}

#[tokio::test]
async fn suspended_identity_revokes_its_grants_for_good() {
    let f = Fixture::new("suspend").await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", ("batch/v1", "Job", "work"), github(), None)
        .await;
    let serial = f.issued_serial("g").await;
    let suspend = |on: bool| json!({ "spec": { "suspended": on } });
    f.ids
        .patch("triage", &PatchParams::default(), &Patch::Merge(&suspend(true)))
        .await
        .unwrap();
    let g = f.wait_phase("g", GrantPhase::Revoked).await;
    assert_eq!(g.status.unwrap().revocation.unwrap().reason, "IdentitySuspended");
    assert!(f.crl().await.1.contains(&serial));
    assert!(f.secrets.get_opt("g").await.unwrap().is_none());
    // Lifting the suspension does not bring the revoked grant back.
    f.ids
        .patch("triage", &PatchParams::default(), &Patch::Merge(&suspend(false)))
        .await
        .unwrap();
    wait_for(&f.ids, "triage", "Ready again", |i: &AgentIdentity| {
        i.status
            .as_ref()
            .is_some_and(|s| mandate::conditions::is_true(&s.conditions, "Ready"))
    })
    .await;
    // Touch the grant so it is reconciled after the identity change, then check it stays revoked.
    f.grants
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "metadata": { "labels": { "poke": "1" } } })),
        )
        .await
        .unwrap();
    let g = wait_for(&f.grants, "g", "reconciled after the poke", |g: &ToolGrant| {
        g.labels().contains_key("poke")
    })
    .await;
    assert_eq!(g.status.unwrap().phase, Some(GrantPhase::Revoked));
    assert!(f.secrets.get_opt("g").await.unwrap().is_none());
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_2_grant_beyond_the_ceiling_is_denied_with_the_excess_named() {
    let f = Fixture::new("ceiling").await;
    f.identity("triage").await;
    f.job("work", None).await;
    let tools = json!([
        { "name": "github", "actions": ["read", "admin"], "destinations": ["api.github.com"] },
        { "name": "postgres", "actions": ["read"] },
    ]);
    f.grant("g", "triage", ("batch/v1", "Job", "work"), tools, None).await;
    let g = f.wait_phase("g", GrantPhase::Denied).await;
    let ready = g
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "ExceedsIdentityCeiling");
    assert!(
        ready.message.contains("\"admin\"") && ready.message.contains("\"postgres\""),
        "{}",
        ready.message
    );
    assert!(f.secrets.get_opt("g").await.unwrap().is_none());
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_5_foreign_secret_is_never_overwritten() {
    let f = Fixture::new("foreign").await;
    f.identity("triage").await;
    f.job("work", None).await;
    let foreign: Secret = serde_json::from_value(
        json!({ "metadata": { "name": "app-secret" }, "stringData": { "password": "hunter2" } }),
    )
    .unwrap();
    f.secrets.create(&PostParams::default(), &foreign).await.unwrap();
    let mut g: ToolGrant = serde_json::from_value(json!({
        "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant", "metadata": { "name": "g" },
        "spec": {
            "identityRef": { "name": "triage" }, "taskRef": { "apiVersion": "batch/v1", "kind": "Job", "name": "work" },
            "tools": github(), "purpose": "p", "secretName": "app-secret",
        },
    }))
    .unwrap();
    g.metadata.namespace = None;
    f.grants.create(&PostParams::default(), &g).await.unwrap();
    let g = wait_for(&f.grants, "g", "SecretConflict", |g: &ToolGrant| {
        g.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "SecretConflict"))
    })
    .await;
    assert_eq!(g.status.unwrap().phase, Some(GrantPhase::Pending));
    let s = f.secrets.get("app-secret").await.unwrap();
    assert_eq!(s.data.as_ref().unwrap()["password"].0, b"hunter2");
    assert!(s.owner_references().is_empty());
    f.ns.cleanup().await;
}

#[tokio::test]
async fn certificate_is_renewed_with_a_new_key_and_serial_before_expiry() {
    let f = Fixture::new("renew").await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", ("batch/v1", "Job", "work"), github(), Some("1m"))
        .await;
    let first = f
        .wait_phase("g", GrantPhase::Issued)
        .await
        .status
        .unwrap()
        .certificate
        .unwrap();
    let first_key = secret_for(&f, "g").await.data.unwrap()["tls.key"].clone();
    // Renewal is due at about two thirds of the 1-minute lifetime.
    let old = first.serial_number.clone();
    let renewed = wait_for_within(
        &f.grants,
        "g",
        "renewed",
        Duration::from_secs(90),
        move |g: &ToolGrant| {
            g.status
                .as_ref()
                .and_then(|s| s.certificate.as_ref())
                .is_some_and(|c| c.serial_number != old)
        },
    )
    .await
    .status
    .unwrap();
    let second = renewed.certificate.unwrap();
    assert!(second.not_after.0 > first.not_after.0);
    assert_eq!(
        renewed.superseded[0].serial_number, first.serial_number,
        "the old serial is remembered for revocation"
    );
    let second_key = f.secrets.get("g").await.unwrap().data.unwrap()["tls.key"].clone();
    assert_ne!(first_key, second_key, "renewal must use a new key");
    // Completion revokes both the current and the superseded certificate.
    kubelet::finish_job_pod(&f.pods, "work", Outcome::Succeeded).await;
    f.wait_phase("g", GrantPhase::Revoked).await;
    let serials = f.crl().await.1;
    assert!(serials.contains(&first.serial_number) && serials.contains(&second.serial_number));
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_31_operator_killed_and_restarted_neither_duplicates_nor_loses_a_revocation() {
    let mut f = Fixture::new("restart").await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", ("batch/v1", "Job", "work"), github(), Some("30m"))
        .await;
    let serial = f.issued_serial("g").await;
    // Crash and come back: the same certificate stays, none is issued twice.
    // Read the CRL number before the restart: the new process re-signs at once.
    let (number, _) = f.crl().await;
    f.op.restart(&f.ns.name).await;
    let cms: Api<ConfigMap> = f.ns.api();
    // The restarted operator re-signs the CRL on start; once it has, it has reconciled too.
    wait_for(&cms, "mandate-crl", "re-signed after restart", move |cm: &ConfigMap| {
        cm.data
            .as_ref()
            .and_then(|d| d.get("crlNumber"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > number)
    })
    .await;
    let g = f.wait_phase("g", GrantPhase::Issued).await;
    assert_eq!(
        g.status.unwrap().certificate.unwrap().serial_number,
        serial,
        "a restart issued a second certificate"
    );
    let secret = f.secrets.get("g").await.unwrap();
    assert_eq!(secret.annotations()["mandate.dev/serial"], serial);
    // Crash, let the task finish while the operator is down, come back: revoked.
    f.op.kill().await;
    kubelet::finish_job_pod(&f.pods, "work", Outcome::Succeeded).await;
    f.op.restart(&f.ns.name).await;
    let g = f.wait_phase("g", GrantPhase::Revoked).await;
    assert_eq!(g.status.unwrap().revocation.unwrap().reason, "TaskCompleted");
    f.wait_revoked_in_crl(&serial).await;
    assert!(f.crl().await.1.contains(&serial));
    assert!(f.secrets.get_opt("g").await.unwrap().is_none());
    f.ns.cleanup().await;
}

/// Changes made while the operator is down are all acted on when it starts, however
/// its caches race each other to fill: every grant is reconciled, none is left behind.
/// (kube-runtime's cache readiness once woke only one of many waiting reconciles, and
/// the rest never ran again.)
#[tokio::test]
async fn threat_31_every_grant_changed_while_the_operator_was_down_is_reissued_at_start() {
    const GRANTS: usize = 24;
    const FILLER_SECRETS: usize = 200;
    let mut f = Fixture::new("restart-many").await;
    f.identity("triage").await;
    f.job("work", None).await;
    let names: Vec<String> = (0..GRANTS).map(|i| format!("g{i}")).collect();
    for name in &names {
        f.grant(name, "triage", ("batch/v1", "Job", "work"), github(), None)
            .await;
    }
    let mut before = Vec::new();
    for name in &names {
        before.push(f.issued_serial(name).await);
    }
    // Many more labelled Secrets than grants (as left by other grants' tasks), so the
    // Secret cache tends to fill after the grant cache and reconciles wait on it.
    for i in 0..FILLER_SECRETS {
        let filler: Secret = serde_json::from_value(json!({
            "metadata": { "name": format!("filler-{i}"), "labels": { "mandate.dev/grant": "other" } },
            "stringData": { "padding": "x".repeat(4096) },
        }))
        .unwrap();
        f.secrets.create(&PostParams::default(), &filler).await.unwrap();
    }

    // Down: every grant's scope changes (a new generation), then the operator starts.
    f.op.kill().await;
    for name in &names {
        let patch = json!({ "spec": { "purpose": "triage, rescoped while the operator was down" } });
        f.grants
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    f.op.restart(&f.ns.name).await;

    for (name, old) in names.iter().zip(&before) {
        let g = wait_for(&f.grants, name, "reissued for generation 2", |g: &ToolGrant| {
            g.status.as_ref().is_some_and(|s| {
                s.observed_generation == Some(2)
                    && s.phase == Some(GrantPhase::Issued)
                    && s.certificate.as_ref().is_some_and(|c| c.grant_generation == 2)
            })
        })
        .await;
        let serial = g.status.unwrap().certificate.unwrap().serial_number;
        assert_ne!(&serial, old, "{name} kept the certificate of its old scope");
        let secret = f.secrets.get(name).await.unwrap();
        assert_eq!(
            secret.annotations()["mandate.dev/serial"],
            serial,
            "{name}'s Secret does not hold the certificate its status reports"
        );
    }
    let (_, revoked) = f.crl().await;
    for (name, old) in names.iter().zip(&before) {
        assert!(
            revoked.contains(old),
            "{name}'s superseded serial {old} is not in the CRL"
        );
    }
    let secrets = f.secrets.list(&Default::default()).await.unwrap();
    let grant_secrets = secrets
        .items
        .iter()
        .filter(|s| s.labels().contains_key("mandate.dev/grant") && !s.name_any().starts_with("filler-"))
        .count();
    assert_eq!(grant_secrets, GRANTS, "one Secret per grant, no more");
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_20_invalid_user_supplied_ca_stops_issuance_with_a_reason() {
    let c = client().await;
    crate::support::install_crds(&c).await;
    let ns = TestNamespace::new(&c, "badca").await;
    // A CA certificate presented with someone else's key.
    let now = mandate::pki::OffsetDateTime::now_utc();
    let a = mandate::pki::CertificateAuthority::generate_root("a", now, Duration::from_secs(3600)).unwrap();
    let b = mandate::pki::CertificateAuthority::generate_root("b", now, Duration::from_secs(3600)).unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "mandate-ca" }, "type": "kubernetes.io/tls",
        "stringData": { "tls.crt": a.cert_pem(), "tls.key": b.key_pem().expose() },
    }))
    .unwrap();
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let f = Fixture::start(ns, &[]).await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", ("batch/v1", "Job", "work"), github(), None)
        .await;
    let g = wait_for(&f.grants, "g", "pending on the CA", |g: &ToolGrant| {
        g.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "CaKeyMismatch"))
    })
    .await;
    assert_eq!(g.status.unwrap().phase, Some(GrantPhase::Pending));
    assert!(f.secrets.get_opt("g").await.unwrap().is_none());
    // The Secret was not replaced by a fresh root.
    let ca = f.secrets.get("mandate-ca").await.unwrap();
    assert_eq!(ca.data.unwrap()["tls.crt"].0, a.cert_pem().as_bytes());
    let log = f.op.log_text();
    assert!(
        log.contains("CaKeyMismatch"),
        "operator log does not report the CA problem"
    );
    assert!(!log.contains("PRIVATE KEY"), "threat 25: key material in the log");
    f.ns.cleanup().await;
}
