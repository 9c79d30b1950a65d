//! The revocation record on the real control plane: revocation that no requester can
//! lose (a stripped finalizer), no corruption can undo (a damaged or deleted CRL
//! ConfigMap), and no missing CA can hold up (threats 36 to 38); and the schema limits
//! that keep input the record could not hold from reaching the operator (8, 22).

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use mandate::api::{CertificateRecord, GrantPhase, RevocationCause, ToolGrant};
use serde_json::json;

use crate::{
    grants::{Fixture, crl_der, crl_of, github},
    support::{
        kubelet::{self, Outcome},
        wait::wait_deleted,
        wait_for,
    },
};

/// The grant's `Ready` condition reason, if it has one.
fn ready_reason(g: &ToolGrant) -> Option<String> {
    g.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone())
}

/// Waits until the record of `serial` is revoked, and returns why.
async fn wait_record_revoked(f: &Fixture, serial: &str) -> RevocationCause {
    let records: Api<CertificateRecord> = f.ns.api();
    let r = wait_for(&records, serial, "revoked in the record", |r: &CertificateRecord| {
        r.spec.revocation.is_some()
    })
    .await;
    r.spec.revocation.expect("revoked").reason
}

fn job_task(name: &str) -> (&str, &str, &str) {
    ("batch/v1", "Job", name)
}

/// Removes every finalizer of grant `name` (as a user allowed to edit grants may) and
/// deletes it.
async fn strip_and_delete(grants: &Api<ToolGrant>, name: &str) {
    grants
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .expect("finalizers removed");
    grants
        .delete(name, &DeleteParams::default())
        .await
        .expect("grant deleted");
    wait_deleted(grants, name, "gone without its finalizer").await;
}

#[tokio::test]
async fn threat_37_a_grant_whose_finalizer_is_stripped_while_the_operator_runs_is_revoked_anyway() {
    let f = Fixture::new("strip-live").await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", job_task("work"), github(), None).await;
    let serial = f.issued_serial("g").await;
    let records: Api<CertificateRecord> = f.ns.api();
    let record = records.get(&serial).await.expect("a record was written at issuance");
    assert!(record.spec.revocation.is_none());
    assert!(record.finalizers().iter().any(|x| x == "mandate.dev/until-expiry"));

    strip_and_delete(&f.grants, "g").await;
    assert_eq!(wait_record_revoked(&f, &serial).await, RevocationCause::GrantVanished);
    f.wait_revoked_in_crl(&serial).await;
    // Nothing un-revokes: the API server itself refuses to change or drop a revocation,
    // and to rewrite what the record says the certificate was for.
    for patch in [
        json!({ "spec": { "revocation": null } }),
        json!({ "spec": { "revocation": { "reason": "ScopeChanged" } } }),
        json!({ "spec": { "grant": { "uid": "someone-else" } } }),
    ] {
        let err = records
            .patch(&serial, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err("a record's revocation and facts are immutable");
        assert!(
            err.to_string().contains("final") || err.to_string().contains("only spec.revocation"),
            "{err}"
        );
    }
    // The task still runs and co-owns the Secret, so the garbage collector keeps it:
    // the operator withdraws it.
    wait_deleted(&f.secrets, "g", "withdrawn with its vanished grant").await;
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_37_a_grant_whose_finalizer_is_stripped_while_the_operator_is_down_is_revoked_at_start() {
    let mut f = Fixture::new("strip-down").await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.job("other", None).await;
    f.grant("g", "triage", job_task("work"), github(), None).await;
    f.grant("keep", "triage", job_task("other"), github(), None).await;
    let serial = f.issued_serial("g").await;
    let kept = f.issued_serial("keep").await;

    f.op.kill().await;
    strip_and_delete(&f.grants, "g").await;
    // The same name again, another object: the old serial is still the old grant's.
    f.grant("g", "triage", job_task("work"), github(), None).await;
    f.op.restart(&f.ns.name).await;

    assert_eq!(wait_record_revoked(&f, &serial).await, RevocationCause::GrantVanished);
    f.wait_revoked_in_crl(&serial).await;
    let again = f.issued_serial("g").await;
    assert_ne!(again, serial);
    let (_, listed) = f.crl().await;
    assert!(!listed.contains(&kept), "a live grant's serial was revoked");
    assert!(!listed.contains(&again), "the new grant's serial was revoked");
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_36_a_corrupted_or_deleted_crl_stops_issuance_and_drops_no_serial() {
    let f = Fixture::new("crl-corrupt").await;
    f.identity("triage").await;
    for job in ["a", "b", "c"] {
        f.job(job, None).await;
    }
    f.grant("a", "triage", job_task("a"), github(), None).await;
    f.grant("b", "triage", job_task("b"), github(), None).await;
    let serial_a = f.issued_serial("a").await;
    let serial_b = f.issued_serial("b").await;
    kubelet::finish_job_pod(&f.pods, "a", Outcome::Succeeded).await;
    f.wait_phase("a", GrantPhase::Revoked).await;
    f.wait_revoked_in_crl(&serial_a).await;
    let (number_before, _) = f.crl().await;
    let cms: Api<ConfigMap> = f.ns.api();
    let backup = cms.get("mandate-crl").await.unwrap();

    // One bad byte in the CRL number: issuance stops, the ConfigMap is left as it is.
    cms.patch(
        "mandate-crl",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "crlNumber": format!("{number_before}x") } })),
    )
    .await
    .unwrap();
    // Once the operator has seen it (its failure metric says so), nothing is issued.
    wait_metric(&f, "mandate_crl_publish_failures_total{reason=\"CrlUnreadable\"}").await;
    f.grant("c", "triage", job_task("c"), github(), None).await;
    let c = wait_for(&f.grants, "c", "held: CrlUnreadable", |g: &ToolGrant| {
        ready_reason(g).as_deref() == Some("CrlUnreadable")
    })
    .await;
    assert_eq!(c.status.unwrap().phase, Some(GrantPhase::Pending));
    assert!(
        f.secrets.get_opt("c").await.unwrap().is_none(),
        "issued with an unreadable CRL"
    );

    // Withdrawal goes on: b's task ends, its Secret goes and its record says revoked.
    kubelet::finish_job_pod(&f.pods, "b", Outcome::Failed).await;
    f.wait_phase("b", GrantPhase::Revoked).await;
    wait_deleted(&f.secrets, "b", "withdrawn while the CRL is unreadable").await;
    assert_eq!(wait_record_revoked(&f, &serial_b).await, RevocationCause::TaskFailed);
    let cm = cms.get("mandate-crl").await.unwrap();
    assert_eq!(
        cm.data.unwrap()["crlNumber"],
        format!("{number_before}x"),
        "an unreadable CRL ConfigMap was overwritten"
    );

    // Deleted: still nothing is issued and nothing is re-created from nothing.
    cms.delete("mandate-crl", &DeleteParams::default()).await.unwrap();
    wait_for(&f.grants, "c", "held: CrlMissing", |g: &ToolGrant| {
        ready_reason(g).as_deref() == Some("CrlMissing")
    })
    .await;
    assert!(
        cms.get_opt("mandate-crl").await.unwrap().is_none(),
        "re-created from nothing"
    );

    // An operator resets it deliberately (an empty ConfigMap): the CRL is rebuilt from
    // the record, lists both earlier serials, its number is higher, and issuance resumes.
    let empty: ConfigMap = serde_json::from_value(json!({ "metadata": { "name": "mandate-crl" } })).unwrap();
    cms.create(&PostParams::default(), &empty).await.unwrap();
    let (sa, sb) = (serial_a.clone(), serial_b.clone());
    let cm = wait_for(&cms, "mandate-crl", "rebuilt from the record", move |cm: &ConfigMap| {
        crl_of(cm).is_some_and(|(_, s)| s.contains(&sa) && s.contains(&sb))
    })
    .await;
    let (number_after, _) = crl_of(&cm).unwrap();
    assert!(
        number_after > number_before,
        "the CRL number went back: {number_after} <= {number_before}"
    );
    f.issued_serial("c").await;

    // A restored old backup (a lower number, an older list) is replaced at once by a
    // CRL from the record, numbered above everything published before.
    let mut restored = cm.clone();
    restored.data = backup.data.clone();
    cms.replace("mandate-crl", &PostParams::default(), &restored)
        .await
        .unwrap();
    let (sa, sb) = (serial_a.clone(), serial_b.clone());
    wait_for(
        &cms,
        "mandate-crl",
        "re-signed over the old backup",
        move |cm: &ConfigMap| crl_of(cm).is_some_and(|(n, s)| n > number_after && s.contains(&sa) && s.contains(&sb)),
    )
    .await;
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_38_with_no_ca_a_finished_tasks_secret_is_withdrawn_and_listed_once_a_ca_is_back() {
    let f = Fixture::new("no-ca-revoke").await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.grant("g", "triage", job_task("work"), github(), None).await;
    let serial = f.issued_serial("g").await;
    let ca: Secret = f.secrets.get("mandate-ca").await.unwrap();

    f.secrets.delete("mandate-ca", &DeleteParams::default()).await.unwrap();
    wait_deleted(&f.secrets, "mandate-ca", "deleted by the test").await;
    kubelet::finish_job_pod(&f.pods, "work", Outcome::Succeeded).await;
    let g = f.wait_phase("g", GrantPhase::Revoked).await;
    assert_eq!(g.status.unwrap().revocation.unwrap().reason, "TaskCompleted");
    wait_deleted(&f.secrets, "g", "withdrawn without a CA").await;
    assert_eq!(wait_record_revoked(&f, &serial).await, RevocationCause::TaskCompleted);
    let (_, listed) = f.crl().await;
    assert!(!listed.contains(&serial), "listed by a CRL nobody could sign");

    // The CA comes back: the CRL signed with it lists the serial.
    let mut restored = ca.clone();
    restored.metadata = Default::default();
    restored.metadata.name = Some("mandate-ca".into());
    f.secrets.create(&PostParams::default(), &restored).await.unwrap();
    f.wait_revoked_in_crl(&serial).await;
    f.ns.cleanup().await;
}

/// A grant whose ttl is one of `bad`, created raw (the Rust types would not even hold
/// some of these); every one must be refused by the API server itself.
#[tokio::test]
async fn threat_8_ttl_garbage_is_refused_by_the_schema() {
    let c = crate::support::client().await;
    crate::support::install_crds(&c).await;
    let ns = crate::support::TestNamespace::new(&c, "ttl-garbage").await;
    for bad in [
        json!("0s"),
        json!("-5m"),
        json!("1e9"),
        json!("999999h"),
        json!("9223372036854775807ns"),
        json!("2562047h47m16.854775807s"),
        json!("soon"),
        json!(""),
        json!(300),
        json!(-1),
    ] {
        let body = json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant",
            "metadata": { "name": "g" },
            "spec": {
                "identityRef": { "name": "triage" },
                "taskRef": { "apiVersion": "batch/v1", "kind": "Job", "name": "work" },
                "tools": github(), "purpose": "garbage ttl", "ttl": bad,
            },
        });
        let res = crate::support::create_raw::<ToolGrant>(&ns, body).await;
        assert!(res.is_err(), "ttl {bad} was accepted");
    }
    ns.cleanup().await;
}

/// Names that would make an invalid SPIFFE path or label value never reach the
/// operator: the API server refuses them.
#[tokio::test]
async fn threat_22_names_that_cannot_be_a_spiffe_segment_or_a_label_value_are_refused() {
    let c = crate::support::client().await;
    crate::support::install_crds(&c).await;
    let ns = crate::support::TestNamespace::new(&c, "bad-names").await;
    for bad in ["agent.v1", "a..b", &"a".repeat(64)] {
        let body = json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "AgentIdentity",
            "metadata": { "name": bad },
            "spec": { "owner": "team", "serviceAccountName": "sa", "tools": github() },
        });
        let err = crate::support::create_raw::<mandate::api::AgentIdentity>(&ns, body)
            .await
            .expect_err("an identity name that is no SPIFFE segment was accepted");
        assert!(
            err.to_string().contains("SPIFFE") || err.to_string().contains("metadata.name"),
            "{bad}: {err}"
        );
    }
    let body = json!({
        "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant",
        "metadata": { "name": "g".repeat(64) },
        "spec": {
            "identityRef": { "name": "triage" },
            "taskRef": { "apiVersion": "batch/v1", "kind": "Job", "name": "work" },
            "tools": github(), "purpose": "a name too long for a label",
        },
    });
    let err = crate::support::create_raw::<ToolGrant>(&ns, body)
        .await
        .expect_err("a grant name that is no label value was accepted");
    assert!(err.to_string().contains("label value"), "{err}");
    ns.cleanup().await;
}

/// A task of a kind Mandate has no code for (a CRD with `status.conditions`, as Argo
/// Workflows or Tekton TaskRuns have): its end revokes at once, because the kind is
/// watched from the first grant that names it. Nothing else would look again.
#[tokio::test]
async fn a_generic_task_kind_is_watched_and_its_end_revokes_at_once() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let c = crate::support::client().await;
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": { "name": "agenttasks.e2e.mandate.dev" },
        "spec": {
            "group": "e2e.mandate.dev", "scope": "Namespaced",
            "names": { "plural": "agenttasks", "singular": "agenttask", "kind": "AgentTask" },
            "versions": [{ "name": "v1", "served": true, "storage": true, "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } } }],
        },
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    crds.patch(
        crd.metadata.name.as_deref().unwrap(),
        &PatchParams::apply("mandate-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    wait_for(
        &crds,
        "agenttasks.e2e.mandate.dev",
        "Established",
        |c: &CustomResourceDefinition| {
            c.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
        },
    )
    .await;

    let f = Fixture::new("generic-task").await;
    f.identity("triage").await;
    let ar = kube::api::ApiResource {
        group: "e2e.mandate.dev".into(),
        version: "v1".into(),
        api_version: "e2e.mandate.dev/v1".into(),
        kind: "AgentTask".into(),
        plural: "agenttasks".into(),
    };
    let tasks: Api<kube::api::DynamicObject> = Api::namespaced_with(c.clone(), &f.ns.name, &ar);
    let task: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "e2e.mandate.dev/v1", "kind": "AgentTask", "metadata": { "name": "triage-run" },
    }))
    .unwrap();
    tasks.create(&PostParams::default(), &task).await.unwrap();
    f.grant(
        "g",
        "triage",
        ("e2e.mandate.dev/v1", "AgentTask", "triage-run"),
        github(),
        None,
    )
    .await;
    let serial = f.issued_serial("g").await;

    let done = json!({ "status": { "conditions": [{ "type": "Complete", "status": "True", "reason": "Done" }] } });
    tasks
        .patch_status("triage-run", &PatchParams::default(), &Patch::Merge(&done))
        .await
        .unwrap();
    let g = f.wait_phase("g", GrantPhase::Revoked).await;
    assert_eq!(g.status.unwrap().revocation.unwrap().reason, "TaskCompleted");
    f.wait_revoked_in_crl(&serial).await;
    wait_deleted(&f.secrets, "g", "withdrawn when the task ended").await;
    f.ns.cleanup().await;
}

/// The CRL the operator serves (`GET /v1/crl`), once it lists every one of `serials`.
async fn wait_served_listing(f: &Fixture, serials: &[String]) -> (u64, Vec<u8>) {
    let deadline = tokio::time::Instant::now() + crate::support::TIMEOUT;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let (status, body) = f.op.get("/v1/crl").await;
        match crl_der(&body) {
            Some((number, listed)) if status == 200 && serials.iter().all(|s| listed.contains(s)) => {
                return (number, body);
            }
            Some((_, listed)) => last = format!("HTTP {status}, {} of {} listed", listed.len(), serials.len()),
            None => last = format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the served CRL never listed all {} serials: {last}", serials.len());
}

/// The CRL's part ConfigMaps (every object labelled for `mandate-crl` but itself).
async fn crl_parts(cms: &Api<ConfigMap>) -> Vec<ConfigMap> {
    let lp = kube::api::ListParams::default().labels("mandate.dev/crl=mandate-crl");
    let mut parts: Vec<ConfigMap> = cms
        .list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|c| c.name_any() != "mandate-crl")
        .collect();
    parts.sort_by_key(|c| c.name_any());
    parts
}

/// Checks `der`'s signature with a real relying party's tool: `openssl crl -CAfile`.
fn openssl_verifies(der: &[u8], ca_pem: &[u8], dir: &std::path::Path) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let (crl, ca) = (dir.join("crl.der"), dir.join("ca.pem"));
    std::fs::write(&crl, der).unwrap();
    std::fs::write(&ca, ca_pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-in"])
        .arg(&crl)
        .arg("-CAfile")
        .arg(&ca)
        .output()
        .expect("openssl runs");
    out.status.success() && String::from_utf8_lossy(&out.stderr).contains("verify OK")
}

#[tokio::test]
async fn threat_39_a_crl_larger_than_a_configmap_is_split_stored_and_served_as_one_signed_list() {
    // Parts of 1 KiB, so forty revocations need several (the default, 768 KiB, needs
    // about 15,000 revocations per part).
    let f = Fixture::with_flags("crl-split", &["--crl-part-bytes=1024"]).await;
    f.identity("triage").await;
    f.job("work", None).await;
    f.job("later", None).await;
    let names: Vec<String> = (0..40).map(|i| format!("g{i}")).collect();
    for n in &names {
        f.grant(n, "triage", job_task("work"), github(), None).await;
    }
    let mut serials = vec![];
    for n in &names {
        serials.push(f.issued_serial(n).await);
    }
    let ca_pem = f.secrets.get("g0").await.unwrap().data.unwrap()["ca.crt"].0.clone();
    f.jobs
        .delete("work", &DeleteParams::background())
        .await
        .expect("task deleted");
    let (number, der) = wait_served_listing(&f, &serials).await;

    // Stored in parts the CRL ConfigMap names; together they are exactly what is served.
    let cms: Api<ConfigMap> = f.ns.api();
    let head = cms.get("mandate-crl").await.unwrap();
    let data = head.data.clone().unwrap();
    assert!(!data.contains_key("crl.pem"), "a split CRL has no inline copy");
    assert_eq!(data["crlNumber"], number.to_string());
    let named: Vec<String> = data["parts"].split(',').map(str::to_string).collect();
    assert!(named.len() >= 2, "{} parts", named.len());
    let parts = wait_for_parts(&cms, &named).await;
    let mut joined = vec![];
    for p in &parts {
        assert_eq!(p.immutable, Some(true));
        let bytes = &p.binary_data.as_ref().unwrap()["crl.der.part"].0;
        assert!(bytes.len() <= 1024, "a part is larger than --crl-part-bytes");
        joined.extend_from_slice(bytes);
    }
    assert_eq!(joined, der, "the parts are not the served CRL");
    let dir = crate::support::repo_root().join("target/e2e-logs").join(&f.ns.name);
    assert!(
        openssl_verifies(&der, &ca_pem, &dir),
        "openssl does not verify the served CRL"
    );
    let (status, pem_body) = f.op.get("/v1/crl.pem").await;
    assert_eq!(status, 200);
    assert_eq!(::pem::parse(&pem_body).unwrap().into_contents(), der);

    // One part deleted: nothing is served rather than a shorter list, and issuance stops
    // (the writer's failure metric says when it has seen the damage).
    cms.delete(&parts[0].name_any(), &DeleteParams::default())
        .await
        .unwrap();
    wait_metric(&f, "mandate_crl_publish_failures_total{reason=\"CrlUnreadable\"}").await;
    f.grant("held", "triage", job_task("later"), github(), None).await;
    wait_for(&f.grants, "held", "held: CrlUnreadable", |g: &ToolGrant| {
        ready_reason(g).as_deref() == Some("CrlUnreadable")
    })
    .await;
    let (status, body) = f.op.get("/v1/crl").await;
    assert_eq!(status, 503, "a damaged CRL was served");
    assert!(String::from_utf8_lossy(&body).contains("cannot be read"));

    // A deliberate reset (an empty CRL ConfigMap) rebuilds it from the record: every
    // serial is still listed, under a higher number, and issuance resumes.
    cms.replace(
        "mandate-crl",
        &PostParams::default(),
        &serde_json::from_value(json!({ "metadata": {
            "name": "mandate-crl", "resourceVersion": cms.get("mandate-crl").await.unwrap().resource_version(),
        }}))
        .unwrap(),
    )
    .await
    .expect("CRL ConfigMap reset");
    let (after, der) = wait_served_listing(&f, &serials).await;
    assert!(after > number, "the CRL number went from {number} to {after}");
    assert!(openssl_verifies(&der, &ca_pem, &dir));
    f.wait_phase("held", GrantPhase::Issued).await;
    f.ns.cleanup().await;
}

/// Waits until exactly the parts `named` (in that order) are stored: the parts older
/// CRLs named are deleted once nothing names them.
async fn wait_for_parts(cms: &Api<ConfigMap>, named: &[String]) -> Vec<ConfigMap> {
    let deadline = tokio::time::Instant::now() + crate::support::TIMEOUT;
    loop {
        let parts = crl_parts(cms).await;
        let mut stored: Vec<String> = parts.iter().map(|p| p.name_any()).collect();
        stored.sort();
        let mut want = named.to_vec();
        want.sort();
        if stored == want {
            return named
                .iter()
                .map(|n| parts.iter().find(|p| p.name_any() == *n).unwrap().clone())
                .collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "parts stored: {stored:?}, named: {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Waits until the operator's `/metrics` has the sample `series` with a value above 0.
async fn wait_metric(f: &Fixture, series: &str) {
    let deadline = tokio::time::Instant::now() + crate::support::TIMEOUT;
    loop {
        let (_, body) = f.op.get("/metrics").await;
        let text = String::from_utf8_lossy(&body);
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if value.is_some_and(|v| v > 0.0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never rose above 0:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn threat_10_a_task_that_never_ends_loses_its_certificate_at_the_grants_maximum_lifetime() {
    let f = Fixture::new("lifetime").await;
    let mut id = crate::identity::identity("triage");
    id.spec.max_grant_lifetime = std::time::Duration::from_secs(60).into();
    f.ids.create(&PostParams::default(), &id).await.unwrap();
    f.job("forever", None).await;
    let uid = f
        .grant("g", "triage", job_task("forever"), github(), Some("1m"))
        .await
        .uid()
        .unwrap();
    let serial = f.issued_serial("g").await;
    let issued = f.grants.get("g").await.unwrap().status.unwrap();
    let first_issued = issued.first_issued.unwrap().0;

    // The task runs on; the grant's lifetime ends anyway.
    let g = crate::support::wait::wait_for_within(
        &f.grants,
        "g",
        "Expired",
        std::time::Duration::from_secs(150),
        |g: &ToolGrant| g.status.as_ref().and_then(|s| s.phase) == Some(GrantPhase::Expired),
    )
    .await;
    assert_eq!(
        g.status.unwrap().revocation.unwrap().reason,
        RevocationCause::MaxLifetimeReached.as_str()
    );
    wait_deleted(&f.secrets, "g", "withdrawn at the maximum lifetime").await;
    assert!(
        f.jobs
            .get("forever")
            .await
            .unwrap()
            .status
            .and_then(|s| s.completion_time)
            .is_none(),
        "the task was meant to still run"
    );
    // No certificate the grant ever had outlives its lifetime (renewals were capped),
    // and each one is revoked.
    let records: Api<CertificateRecord> = f.ns.api();
    let mine = records
        .list(&kube::api::ListParams::default().labels(&format!("mandate.dev/grant-uid={uid}")))
        .await
        .unwrap()
        .items;
    assert!(!mine.is_empty());
    let limit = first_issued + k8s_openapi::jiff::SignedDuration::from_secs(60);
    for r in &mine {
        assert!(
            r.spec.not_after.0 <= limit,
            "{} outlives the grant's lifetime",
            r.name_any()
        );
        assert!(r.spec.revocation.is_some(), "{} is not revoked", r.name_any());
    }
    // One still valid is on the CRL (one that expired with the lifetime needs no entry).
    let (_, listed) = f.crl().await;
    let now = k8s_openapi::jiff::Timestamp::now();
    for r in mine.iter().filter(|r| r.spec.not_after.0 > now) {
        assert!(
            listed.contains(&r.name_any()),
            "{} is valid and not listed",
            r.name_any()
        );
    }
    assert!(mine.iter().any(|r| r.name_any() == serial));
    f.ns.cleanup().await;
}
