//! The crash windows themselves (threat 31): the operator aborted at a crash point
//! between two of its writes (`mandate::failpoint`; the e2e build has the `failpoints`
//! feature), then started again. Neither a duplicate certificate nor a lost revocation.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, ResourceExt, api::ListParams};
use mandate::api::{CertificateRecord, GrantPhase, RevocationCause, ToolGrant};

use crate::{
    grants::{Fixture, crl_of, github},
    support::{
        kubelet::{self, Outcome},
        wait::wait_deleted,
        wait_for,
    },
};

/// Every record of the grant object `uid`: (serial, revoked because).
async fn records_of(f: &Fixture, uid: &str) -> Vec<(String, Option<RevocationCause>)> {
    let records: Api<CertificateRecord> = f.ns.api();
    let mut out: Vec<_> = records
        .list(&ListParams::default().labels(&format!("mandate.dev/grant-uid={uid}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| (r.name_any(), r.spec.revocation.map(|v| v.reason)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Restarts the operator with `FAILPOINTS` set to `point=return`.
async fn arm(f: &mut Fixture, point: &str) {
    f.op.failpoints = Some(format!("{point}=return"));
    f.op.restart(&f.ns.name).await;
}

/// Waits for the operator to abort at its crash point, then starts it without one.
async fn crash_and_restart(f: &mut Fixture) {
    assert!(
        f.op.wait_crash().await,
        "the operator exited, but not at its crash point"
    );
    f.op.failpoints = None;
    f.op.restart(&f.ns.name).await;
}

/// Arms `point` and creates grant `g` for a running Job; returns its UID. The operator
/// aborts at the point while issuing.
async fn issue_into(point: &str, prefix: &str) -> (Fixture, String) {
    let mut f = Fixture::new(prefix).await;
    f.identity("triage").await;
    f.job("work", None).await;
    arm(&mut f, point).await;
    let uid = f
        .grant("g", "triage", ("batch/v1", "Job", "work"), github(), None)
        .await
        .uid()
        .unwrap();
    (f, uid)
}

#[tokio::test]
async fn threat_31_a_crash_between_recording_and_writing_the_secret_issues_once_and_revokes_the_orphan() {
    let (mut f, uid) = issue_into("issue-after-record", "crash-record").await;
    assert!(f.op.wait_crash().await);

    // The window: the serial is recorded, nobody holds it.
    let recorded = records_of(&f, &uid).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].1, None);
    assert!(f.secrets.get_opt("g").await.unwrap().is_none());
    let orphan = recorded[0].0.clone();

    f.op.failpoints = None;
    f.op.restart(&f.ns.name).await;
    let serial = f.issued_serial("g").await;
    assert_ne!(serial, orphan);
    // The serial signed before the crash is revoked (nobody may turn up holding it), and
    // the grant's generation has exactly one live certificate.
    let records: Api<CertificateRecord> = f.ns.api();
    let o = orphan.clone();
    wait_for(&records, &orphan, "revoked", |r: &CertificateRecord| {
        r.spec.revocation.is_some()
    })
    .await;
    f.wait_revoked_in_crl(&o).await;
    let after = records_of(&f, &uid).await;
    let live: Vec<_> = after
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(s, _)| s.clone())
        .collect();
    assert_eq!(live, vec![serial.clone()], "{after:?}");
    assert_eq!(
        f.secrets.get("g").await.unwrap().annotations()["mandate.dev/serial"],
        serial
    );
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_31_a_crash_between_writing_the_secret_and_the_status_adopts_the_certificate() {
    let (mut f, uid) = issue_into("issue-after-secret", "crash-secret").await;
    crash_and_restart(&mut f).await;

    let serial = f.issued_serial("g").await;
    let records = records_of(&f, &uid).await;
    assert_eq!(records, vec![(serial.clone(), None)], "a second certificate was signed");
    assert_eq!(
        f.secrets.get("g").await.unwrap().annotations()["mandate.dev/serial"],
        serial
    );
    f.ns.cleanup().await;
}

/// Issues `g`, arms `point`, ends the task, and waits for the crash.
async fn revoke_into(point: &str, prefix: &str) -> (Fixture, String, String) {
    let mut f = Fixture::new(prefix).await;
    f.identity("triage").await;
    f.job("work", None).await;
    let uid = f
        .grant("g", "triage", ("batch/v1", "Job", "work"), github(), None)
        .await
        .uid()
        .unwrap();
    let serial = f.issued_serial("g").await;
    arm(&mut f, point).await;
    kubelet::finish_job_pod(&f.pods, "work", Outcome::Succeeded).await;
    assert!(f.op.wait_crash().await);
    (f, uid, serial)
}

/// After the restart: revoked once, listed, withdrawn, released, nothing issued again.
async fn revoked_for_good(f: &Fixture, uid: &str, serial: &str) {
    let g = f.wait_phase("g", GrantPhase::Revoked).await;
    assert_eq!(
        g.status.as_ref().unwrap().revocation.as_ref().unwrap().reason,
        "TaskCompleted"
    );
    wait_deleted(&f.secrets, "g", "withdrawn").await;
    f.wait_revoked_in_crl(serial).await;
    wait_for(&f.grants, "g", "finalizer removed", |g: &ToolGrant| {
        !g.finalizers().iter().any(|x| x == "mandate.dev/revocation")
    })
    .await;
    assert_eq!(
        records_of(f, uid).await,
        vec![(serial.to_string(), Some(RevocationCause::TaskCompleted))],
        "a certificate was issued after the task ended"
    );
}

#[tokio::test]
async fn threat_31_a_crash_between_recording_a_revocation_and_deleting_the_secret_loses_nothing() {
    let (mut f, uid, serial) = revoke_into("revoke-after-record", "crash-revoke").await;
    // The window: revoked in the record and the CRL, the Secret still there.
    let records: Api<CertificateRecord> = f.ns.api();
    assert_eq!(
        records.get(&serial).await.unwrap().spec.revocation.map(|r| r.reason),
        Some(RevocationCause::TaskCompleted)
    );
    assert!(f.secrets.get_opt("g").await.unwrap().is_some());
    let cms: Api<ConfigMap> = f.ns.api();
    assert!(
        crl_of(&cms.get("mandate-crl").await.unwrap())
            .unwrap()
            .1
            .contains(&serial)
    );

    f.op.failpoints = None;
    f.op.restart(&f.ns.name).await;
    revoked_for_good(&f, &uid, &serial).await;
    f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_31_a_crash_between_deleting_the_secret_and_the_status_neither_reissues_nor_forgets() {
    let (mut f, uid, serial) = revoke_into("revoke-after-secret", "crash-withdrawn").await;
    // The window: the Secret gone, the status still says Issued.
    assert!(f.secrets.get_opt("g").await.unwrap().is_none());
    let g = f.grants.get("g").await.unwrap();
    assert_eq!(g.status.and_then(|s| s.phase), Some(GrantPhase::Issued));

    f.op.failpoints = None;
    f.op.restart(&f.ns.name).await;
    revoked_for_good(&f, &uid, &serial).await;
    f.ns.cleanup().await;
}

/// A split CRL's own crash windows: after the new parts are stored but before the CRL
/// ConfigMap names them, and after it names them but before the old ones are deleted.
/// Either way the stored CRL stays whole (the served one is the old list or the new),
/// and after the restart the revocation is listed and nothing unnamed is left behind.
#[tokio::test]
async fn threat_31_a_crash_inside_a_split_crl_write_leaves_a_whole_crl_and_loses_no_revocation() {
    for (i, point) in ["crl-after-parts", "crl-after-head"].into_iter().enumerate() {
        let mut f = Fixture::with_flags(&format!("crash-crl-{i}"), &["--crl-part-bytes=1024"]).await;
        f.identity("triage").await;
        f.job("work", None).await;
        f.job("last", None).await;
        for n in 0..30 {
            f.grant(&format!("g{n}"), "triage", ("batch/v1", "Job", "work"), github(), None)
                .await;
        }
        for n in 0..30 {
            f.issued_serial(&format!("g{n}")).await;
        }
        f.grant("last", "triage", ("batch/v1", "Job", "last"), github(), None)
            .await;
        let last = f.issued_serial("last").await;
        // A CRL long enough to be split: the 30 revoked.
        f.jobs
            .delete("work", &kube::api::DeleteParams::background())
            .await
            .unwrap();
        for n in 0..30 {
            f.wait_phase(&format!("g{n}"), GrantPhase::Revoked).await;
        }
        arm(&mut f, point).await;
        kubelet::finish_job_pod(&f.pods, "last", Outcome::Succeeded).await;
        assert!(
            f.op.wait_crash().await,
            "{point}: the operator exited, but not at its crash point"
        );

        // The window: what is stored is one whole CRL (assembled and checked as every
        // replica does), the old one or the new.
        let c = crate::support::client().await;
        let (served, run) = mandate::state::crl::watch_served(c, &f.ns.name, "mandate-crl");
        let watch = tokio::spawn(run);
        let mut served = served;
        let whole = tokio::time::timeout(
            crate::support::TIMEOUT,
            served.wait_for(|s| !matches!(s, mandate::state::crl::Served::Loading)),
        )
        .await
        .expect("the stored CRL was read")
        .unwrap()
        .clone();
        assert!(
            matches!(whole, mandate::state::crl::Served::Listed(_)),
            "{point}: the stored CRL is not whole: {whole:?}"
        );
        watch.abort();

        f.op.failpoints = None;
        f.op.restart(&f.ns.name).await;
        f.wait_phase("last", GrantPhase::Revoked).await;
        wait_deleted(&f.secrets, "last", "withdrawn").await;
        // Listed in the CRL every replica serves.
        let deadline = tokio::time::Instant::now() + crate::support::TIMEOUT;
        loop {
            let (status, body) = f.op.get("/v1/crl").await;
            if status == 200 && crate::grants::crl_der(&body).is_some_and(|(_, s)| s.contains(&last)) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{point}: {last} never listed");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        f.ns.cleanup().await;
    }
}
