//! The revocation ledger at scale, against the real local control plane.
//!
//! `make bench` runs this after the issuance benchmark. It fills the ledger with
//! 100,000 revoked, unexpired CertificateRecords (written straight to the API: issuing
//! 100,000 real grants would take a quarter of an hour and measure issuance again), then
//! starts the operator (release build) and measures:
//! - start to the first CRL listing all 100,000 (reading the record, signing, storing
//!   the parts), and the CRL's size and parts;
//! - a task's completion to its serial in the stored CRL *and* its Secret gone, one at
//!   a time and for a burst, with 100,000 entries in every CRL written;
//! - the time one CRL write takes (the operator's own histogram);
//! - the operator's resident memory with the 100,000 records in memory, and its peak.
//!
//! Results go to stdout and to `target/bench/ledger.md`.

mod common;
#[path = "../e2e/support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Arrivals, finish_pod, memory_kib, phase, revoke_together, summary, watch_secrets};
use futures::{StreamExt, stream};
use k8s_openapi::{
    api::core::v1::{ConfigMap, Pod},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, api::PostParams};
use mandate::{
    api::{
        AgentIdentity, CertificateRecord, CertificateRecordSpec, RecordedGrant, RecordedRevocation, RecordedTask,
        RevocationCause, ToolGrant,
    },
    state::crl::{Served, watch_served},
};
use support::{TestNamespace, operator::Operator};
use tokio::sync::watch;

const LEDGER: usize = 100_000;
const REVOKE_SEQUENTIAL: usize = 40;
const REVOKE_BURST: usize = 200;
const CONCURRENCY: usize = 64;
const FIRST_CRL_TIMEOUT: Duration = Duration::from_secs(600);

/// A revoked record of a certificate that expires in two hours, as the operator writes
/// them (without the finalizer, so the benchmark's namespace can go at the end).
fn record(i: usize, now: Timestamp) -> CertificateRecord {
    let serial = format!("5a{i:030x}");
    let spec = CertificateRecordSpec {
        serial_number: serial.clone(),
        not_after: Time(now + SignedDuration::from_hours(2)),
        grant: RecordedGrant {
            namespace: "tenant".into(),
            name: format!("g{i}"),
            uid: format!("00000000-0000-0000-0000-{i:012}"),
            generation: 1,
        },
        task: RecordedTask {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: format!("t{i}"),
            uid: format!("10000000-0000-0000-0000-{i:012}"),
        },
        identity: "bench".into(),
        revocation: Some(RecordedRevocation {
            time: Time(now),
            reason: RevocationCause::TaskCompleted,
        }),
    };
    CertificateRecord::new(&serial, spec)
}

/// What the stored CRL lists, fed by the operator's own assembly of it (the same
/// `state::crl` watch every replica serves `/v1/crl` from): each serial's first
/// listing, and the latest CRL's number, entries and size.
fn watch_stored_crl(client: kube::Client, ns: &str, listed: Arc<Arrivals>) -> watch::Receiver<(u64, usize, usize)> {
    let (mut served, run) = watch_served(client, ns, "mandate-crl");
    tokio::spawn(run);
    let (tx, rx) = watch::channel((0, 0, 0));
    tokio::spawn(async move {
        while served.changed().await.is_ok() {
            let Served::Listed(crl) = served.borrow_and_update().clone() else {
                continue;
            };
            let (number, der) = (crl.number, crl.der.clone());
            let (_, crl) = x509_parser::parse_x509_crl(&der).expect("the stored CRL parses");
            let mut entries = 0;
            for r in crl.iter_revoked_certificates() {
                listed.record(r.raw_serial_as_string().replace(':', ""));
                entries += 1;
            }
            let _ = tx.send((number, entries, der.len()));
        }
    });
    rx
}

/// The value of one sample in the operator's `/metrics`.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() {
    let client = support::client().await;
    std::fs::create_dir_all(support::repo_root().join("target/bench")).unwrap();
    support::install_crds(&client).await;
    let ns = TestNamespace::new(&client, "bench-ledger").await;
    support::agent_policy(&ns, "permit-all", "Enforce", support::PERMIT_ALL).await;

    // First an operator on an empty ledger: it makes the CA and the first CRL, and is
    // stopped while the ledger fills, so what follows is a restart with a full one.
    let listed = Arc::new(Arrivals::default());
    let mut stored = watch_stored_crl(client.clone(), &ns.name, listed.clone());
    let mut op = Operator::start(&ns.name, &[&format!("--ca-secret-namespace={}", ns.name)]).await;
    tokio::time::timeout(FIRST_CRL_TIMEOUT, stored.wait_for(|(number, _, _)| *number > 0))
        .await
        .expect("the first CRL is published")
        .unwrap();
    op.kill().await;

    phase("fill the ledger");
    let records: Api<CertificateRecord> = ns.api();
    let now = Timestamp::now();
    let t0 = Instant::now();
    stream::iter(0..LEDGER)
        .for_each_concurrent(CONCURRENCY, |i| {
            let records = records.clone();
            async move {
                records.create(&PostParams::default(), &record(i, now)).await.unwrap();
            }
        })
        .await;
    let fill_secs = t0.elapsed().as_secs_f64();

    phase("restart with a full ledger");
    let t0 = Instant::now();
    op.restart(&ns.name).await;
    let pid = op.pid().expect("operator running");
    tokio::time::timeout(FIRST_CRL_TIMEOUT, stored.wait_for(|(_, entries, _)| *entries >= LEDGER))
        .await
        .expect("the first CRL lists the whole ledger")
        .unwrap();
    let first_crl = t0.elapsed();
    let (_, first_entries, first_bytes) = *stored.borrow();
    let rss_loaded = memory_kib(pid, "VmRSS:");
    let cms: Api<ConfigMap> = ns.api();
    let parts: usize = cms
        .get("mandate-crl")
        .await
        .unwrap()
        .data
        .unwrap_or_default()
        .get("parts")
        .map(|p| p.split(',').count())
        .unwrap_or(1);

    phase("grants to revoke");
    let pods: Api<Pod> = ns.api();
    let grants: Api<ToolGrant> = ns.api();
    let ids: Api<AgentIdentity> = ns.api();
    let issued = Arc::new(Arrivals::default());
    let deleted = Arc::new(Arrivals::default());
    let serials = Arc::new(Mutex::new(HashMap::new()));
    watch_secrets(ns.api(), issued.clone(), deleted.clone(), serials.clone());
    common::bench_identity(&ids).await;
    let names: Vec<String> = (0..REVOKE_SEQUENTIAL + REVOKE_BURST)
        .map(|i| format!("t{i:04}"))
        .collect();
    common::create_pods_and_grants(&pods, &grants, &names, CONCURRENCY).await;
    for n in &names {
        issued.wait(n).await;
    }

    phase("one revocation at a time, 100,000 in the ledger");
    let mut one = vec![];
    for n in &names[..REVOKE_SEQUENTIAL] {
        let serial = serials.lock().unwrap()[n].clone();
        let t0 = finish_pod(&pods, n).await;
        let done = deleted.wait(n).await.max(listed.wait(&serial).await);
        one.push(done - t0);
    }

    phase("revocation burst, 100,000 in the ledger");
    let rest = &names[REVOKE_SEQUENTIAL..];
    let (burst, span) = revoke_together(&pods, rest, &deleted, &listed, &serials, CONCURRENCY).await;
    let burst_secs = span.as_secs_f64();
    let peak = memory_kib(pid, "VmHWM:");
    let rss_end = memory_kib(pid, "VmRSS:");
    let (_, body) = op.get("/metrics").await;
    let text = String::from_utf8_lossy(&body);
    let writes = metric(&text, "mandate_crl_write_seconds_count");
    let write_secs = metric(&text, "mandate_crl_write_seconds_sum");
    let (number, entries, bytes) = *stored.borrow();

    let report = format!(
        "| measurement ({LEDGER} revocations in the ledger) | n | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n{}\n{}\n\n\
         - ledger filled: {LEDGER} CertificateRecords written in {fill_secs:.1} s ({:.0}/s at concurrency {CONCURRENCY})\n\
         - operator restart to the first CRL listing all of them: **{:.2} s**; that CRL: {first_entries} entries, **{:.2} MiB DER in {parts} ConfigMaps**\n\
         - burst: {} revocations in {burst_secs:.2} s = **{:.0} revocations/s**\n\
         - CRL writes (sign, store the parts, name them, delete the old parts): {writes:.0}, **{:.0} ms each** on average\n\
         - last CRL: number {number}, {entries} entries, {:.2} MiB\n\
         - operator resident memory: **{:.1} MiB with the {LEDGER} records loaded**, {:.1} MiB at the end, peak {:.1} MiB\n",
        summary(
            "task completed -> serial in CRL and Secret deleted (one at a time)",
            one
        ),
        summary("task completed -> serial in CRL and Secret deleted (burst)", burst),
        LEDGER as f64 / fill_secs,
        first_crl.as_secs_f64(),
        first_bytes as f64 / 1_048_576.0,
        rest.len(),
        rest.len() as f64 / burst_secs,
        write_secs / writes * 1e3,
        bytes as f64 / 1_048_576.0,
        rss_loaded as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        peak as f64 / 1024.0,
    );
    println!("{report}");
    std::fs::write(support::repo_root().join("target/bench/ledger.md"), &report).unwrap();
    drop(op);
    ns.cleanup().await;
}
