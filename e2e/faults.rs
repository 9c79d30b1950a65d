//! Fault injection: 200 grants taken through issuance, renewal and every kind of
//! revocation while the operator is SIGKILLed and restarted at random moments. At the
//! end the API and the signed CRL must agree that nothing was lost or doubled.
//!
//! The seed is printed; `MANDATE_FAULT_SEED=<seed>` replays a run's choices (the
//! moments are as close as a real cluster allows).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use mandate::api::{CertificateRecord, GrantPhase, ToolGrant};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::json;

use crate::{
    grants::{Fixture, crl_of, github},
    support::{
        kubelet::{self, Outcome},
        wait::{wait_deleted, wait_for_within},
        wait_for,
    },
};

const GRANTS: usize = 200;
const KILLS: usize = 20;

/// How each grant's story ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Runs,
    TaskSucceeds,
    TaskFails,
    TaskDeleted,
    GrantDeleted,
    FinalizerStripped,
    IdentitySuspended,
}

fn end_for(i: usize) -> End {
    match i % 10 {
        0..=2 => End::Runs,
        3 => End::TaskSucceeds,
        4 => End::TaskFails,
        5 => End::TaskDeleted,
        6 => End::GrantDeleted,
        7 => End::FinalizerStripped,
        _ => End::IdentitySuspended,
    }
}

/// Every certificate seen in a grant Secret: serial -> (grant UID, generation, notAfter).
type Seen = Arc<Mutex<BTreeMap<String, (String, i64, i64)>>>;

fn record_secret(seen: &Seen, s: &Secret) {
    let Some(pem) = s.data.as_ref().and_then(|d| d.get("tls.crt")) else {
        return;
    };
    let Ok(info) = mandate::pki::inspect_leaf_pem(&String::from_utf8_lossy(&pem.0)) else {
        return;
    };
    let Some(scope) = info.scope else { return };
    seen.lock().unwrap().insert(
        info.serial_hex,
        (scope.grant_uid, scope.grant_generation, info.not_after.unix_timestamp()),
    );
}

#[tokio::test]
async fn faults_200_grants_through_20_kills_lose_and_double_nothing() {
    let seed: u64 = std::env::var("MANDATE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("fault injection seed: {seed} (replay with MANDATE_FAULT_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut f = Fixture::with_flags("faults", &["--grant-concurrency=16"]).await;
    f.identity("triage").await;
    f.identity("other").await;
    let seen: Seen = Arc::default();
    let numbers: Arc<Mutex<Vec<u64>>> = Arc::default();
    let watchers = {
        let (seen, secrets) = (seen.clone(), f.secrets.clone());
        let secret_watch = tokio::spawn(async move {
            let cfg = watcher::Config::default().labels("mandate.dev/grant");
            let _ = watcher(secrets, cfg)
                .applied_objects()
                .try_for_each(|s| {
                    record_secret(&seen, &s);
                    futures::future::ready(Ok(()))
                })
                .await;
        });
        let (numbers, cms) = (numbers.clone(), f.ns.api::<ConfigMap>());
        let crl_watch = tokio::spawn(async move {
            let cfg = watcher::Config::default().fields("metadata.name=mandate-crl");
            let _ = watcher(cms, cfg)
                .applied_objects()
                .try_for_each(|cm| {
                    if let Some((n, _)) = crl_of(&cm) {
                        numbers.lock().unwrap().push(n);
                    }
                    futures::future::ready(Ok(()))
                })
                .await;
        });
        [secret_watch, crl_watch]
    };

    // 200 Pods, each the task of one grant with a one-minute certificate, so renewals
    // happen during the run.
    let pods: Api<Pod> = f.ns.api();
    for i in 0..GRANTS {
        let name = format!("t{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": { "restartPolicy": "Never", "containers": [{ "name": "a", "image": "example.invalid/a" }] },
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        kubelet::start_pod(&pods, &name).await;
        let identity = if end_for(i) == End::IdentitySuspended {
            "other"
        } else {
            "triage"
        };
        f.grant(&format!("g{i}"), identity, ("v1", "Pod", &name), github(), Some("1m"))
            .await;
    }

    // Kills during issuance and renewals, then during the endings.
    let mut endings: Vec<usize> = (0..GRANTS).filter(|i| end_for(*i) != End::Runs).collect();
    endings.shuffle(&mut rng);
    let per_kill = endings.len().div_ceil(KILLS / 2);
    let mut kills = 0;
    let started = tokio::time::Instant::now();
    while kills < KILLS {
        // A random moment: the process has just started, or has been running a while.
        let pause = Duration::from_millis(rng.random_range(0..2500));
        tokio::time::sleep(pause).await;
        if kills >= KILLS / 2 {
            let batch: Vec<usize> = endings.drain(..per_kill.min(endings.len())).collect();
            for i in batch {
                end(&f, i, &pods).await;
            }
        }
        f.op.kill().await;
        kills += 1;
        // Halfway, let renewals happen (one-minute certificates renew after about 40 s)
        // before the endings begin: wait until the Secret watch has seen some.
        if kills == KILLS / 2 {
            f.op.restart(&f.ns.name).await;
            let deadline = started + Duration::from_secs(150);
            while seen.lock().unwrap().len() < GRANTS + GRANTS / 10 {
                assert!(tokio::time::Instant::now() < deadline, "no renewals within 150 s");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            f.op.kill().await;
        }
        f.op.restart(&f.ns.name).await;
    }
    for i in endings {
        end(&f, i, &pods).await;
    }

    // Settle: every story reaches its end state.
    let settle = Duration::from_secs(180);
    for i in 0..GRANTS {
        let name = format!("g{i}");
        match end_for(i) {
            End::Runs => {
                wait_for_within(&f.grants, &name, "Issued", settle, |g: &ToolGrant| {
                    g.status.as_ref().and_then(|s| s.phase) == Some(GrantPhase::Issued)
                })
                .await;
            }
            End::GrantDeleted | End::FinalizerStripped => wait_deleted(&f.grants, &name, "deleted").await,
            _ => {
                wait_for_within(&f.grants, &name, "Revoked", settle, |g: &ToolGrant| {
                    g.status.as_ref().and_then(|s| s.phase) == Some(GrantPhase::Revoked)
                })
                .await;
            }
        }
        if end_for(i) != End::Runs {
            wait_deleted(&f.secrets, &name, "no Secret of a finished task remains").await;
        }
    }

    // The record settles too: every vanished grant's serials revoked.
    let records: Api<CertificateRecord> = f.ns.api();
    let grants = f.grants.list(&Default::default()).await.unwrap().items;
    let by_uid: BTreeMap<String, ToolGrant> = grants.into_iter().map(|g| (g.uid().unwrap(), g)).collect();
    let unrevoked_orphans = || async {
        records
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|r| r.spec.revocation.is_none() && !by_uid.contains_key(&r.spec.grant.uid))
            .count()
    };
    let deadline = tokio::time::Instant::now() + settle;
    while unrevoked_orphans().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "records of vanished grants left unrevoked"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Renewals go on while we look. Each renewal writes record, Secret, then status,
    // so read in that order and later reads only ever know more: the certificates
    // seen, the CRL, the records, the Secrets, then the grants.
    for w in watchers {
        w.abort();
    }
    let seen = seen.lock().unwrap().clone();
    let cm = wait_for(&f.ns.api::<ConfigMap>(), "mandate-crl", "published", |_| true).await;
    let (_, crl) = crl_of(&cm).expect("a readable CRL");
    let crl: BTreeSet<String> = crl.into_iter().collect();
    let all_records = records.list(&Default::default()).await.unwrap().items;

    // Every certificate ever seen is in the CRL, expired, or live for a running task's
    // current grant generation (the Secret's, or one it superseded by renewal).
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let secrets: BTreeMap<String, Secret> = f
        .secrets
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| (s.name_any(), s))
        .collect();
    let by_uid: BTreeMap<String, ToolGrant> = f
        .grants
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|g| (g.uid().unwrap(), g))
        .collect();
    let mut live_per_generation: BTreeMap<(String, i64), Vec<String>> = BTreeMap::new();
    let (mut listed, mut expired, mut live) = (0, 0, 0);
    for (serial, (uid, generation, not_after)) in &seen {
        if crl.contains(serial) {
            listed += 1;
            continue;
        }
        if *not_after <= now {
            expired += 1;
            continue;
        }
        let grant = by_uid
            .get(uid)
            .unwrap_or_else(|| panic!("serial {serial} of a vanished grant is valid and not in the CRL"));
        let status = grant.status.clone().unwrap_or_default();
        assert_eq!(
            status.phase,
            Some(GrantPhase::Issued),
            "serial {serial} valid for a grant that is not Issued"
        );
        assert_eq!(
            grant.metadata.generation,
            Some(*generation),
            "serial {serial} of an old generation"
        );
        let in_secret = secrets
            .get(&grant.name_any())
            .and_then(|s| s.annotations().get("mandate.dev/serial").cloned())
            .as_deref()
            == Some(serial.as_str());
        let superseded = status.superseded.iter().any(|s| &s.serial_number == serial);
        assert!(
            in_secret || superseded,
            "serial {serial} is valid, unlisted and nobody's current or superseded"
        );
        if in_secret {
            live_per_generation
                .entry((uid.clone(), *generation))
                .or_default()
                .push(serial.clone());
        }
        live += 1;
    }
    for ((uid, generation), serials) in &live_per_generation {
        assert_eq!(
            serials.len(),
            1,
            "grant {uid} generation {generation} has two live certificates: {serials:?}"
        );
    }
    // Every unrevoked record is a running grant's current or superseded certificate.
    for r in all_records {
        if r.spec.revocation.is_some() || r.spec.not_after.0.as_second() <= now {
            continue;
        }
        let grant = by_uid
            .get(&r.spec.grant.uid)
            .expect("an unrevoked record's grant exists");
        let status = grant.status.clone().unwrap_or_default();
        let current = status.certificate.as_ref().map(|c| c.serial_number.as_str()) == Some(r.name_any().as_str());
        let superseded = status.superseded.iter().any(|s| s.serial_number == r.name_any());
        assert!(
            current || superseded,
            "record {} is unrevoked but nobody's certificate",
            r.name_any()
        );
    }
    let numbers = numbers.lock().unwrap().clone();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "the CRL number went back: {numbers:?}"
    );
    let renewed = seen.len().saturating_sub(GRANTS);
    eprintln!(
        "fault injection (seed {seed}): {GRANTS} grants, {kills} kills, {} certificates seen ({renewed} beyond one per grant), \
         {listed} in the CRL, {expired} expired, {live} live; {} CRL versions, numbers only rising",
        seen.len(),
        numbers.len()
    );
    assert!(renewed > 0, "no renewal happened during the run");
    f.ns.cleanup().await;
}

async fn end(f: &Fixture, i: usize, pods: &Api<Pod>) {
    let task = format!("t{i}");
    let grant = format!("g{i}");
    match end_for(i) {
        End::Runs => {}
        End::TaskSucceeds => {
            kubelet::finish_pod(pods, &task, Outcome::Succeeded).await;
        }
        End::TaskFails => {
            kubelet::finish_pod(pods, &task, Outcome::Failed).await;
        }
        End::TaskDeleted => {
            pods.delete(&task, &DeleteParams::default()).await.unwrap();
        }
        End::GrantDeleted => {
            f.grants.delete(&grant, &DeleteParams::default()).await.unwrap();
        }
        End::FinalizerStripped => {
            f.grants
                .patch(
                    &grant,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
                )
                .await
                .unwrap();
            f.grants.delete(&grant, &DeleteParams::default()).await.unwrap();
        }
        End::IdentitySuspended => {
            f.ids
                .patch(
                    "other",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": { "suspended": true } })),
                )
                .await
                .unwrap();
        }
    }
}
