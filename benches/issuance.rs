//! Issuance and revocation benchmark against the real local control plane.
//!
//! `make bench` starts the control plane if needed and runs this with the operator
//! built in release mode. It measures, with Pods as tasks (the Job controller adds its
//! own batching delay, which is not ours to measure):
//! - creation of a ToolGrant to a Secret holding a valid certificate, one grant at a time;
//! - sustained issuance rate for a burst of grants created together;
//! - a task's completion to its serial being in the published CRL *and* its Secret gone,
//!   one task at a time and for a burst;
//! - the operator's resident memory with 1,000 active grants, and its peak.
//!
//! Results go to stdout and to `target/bench/issuance.md`.

mod common;
#[path = "../e2e/support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    Arrivals, cpu_snapshot, finish_pod, grant, memory_kib, phase, pod, processes, revoke_together, summary,
    watch_secrets,
};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use mandate::api::{AgentIdentity, ToolGrant};
use serde_json::json;
use support::{TestNamespace, operator::Operator};

const SEQUENTIAL: usize = 200;
const BURST: usize = 800;
const REVOKE_SEQUENTIAL: usize = 200;
const CONCURRENCY: usize = 64;

/// CPU seconds each process used between two snapshots, as a Markdown list.
fn cpu_split(before: &[(&str, f64)], after: &[(&str, f64)], per: usize, what: &str) -> String {
    let mut out = String::new();
    let total: f64 = after.iter().zip(before).map(|((_, a), (_, b))| a - b).sum();
    for ((name, a), (_, b)) in after.iter().zip(before) {
        out.push_str(&format!(
            "{name} {:.2} s ({:.1} ms per {what}), ",
            a - b,
            (a - b) * 1e3 / per as f64
        ));
    }
    out.push_str(&format!(
        "total {total:.2} s ({:.1} ms per {what})",
        total * 1e3 / per as f64
    ));
    out
}

/// Watches the CRL ConfigMap: records when each serial is first listed.
fn watch_crl(api: Api<ConfigMap>, listed: Arc<Arrivals>) {
    tokio::spawn(async move {
        let cfg = watcher::Config::default().fields("metadata.name=mandate-crl");
        let mut s = watcher(api, cfg).applied_objects().boxed();
        while let Ok(Some(cm)) = s.try_next().await {
            let Some(pem_text) = cm.data.as_ref().and_then(|d| d.get("crl.pem")) else {
                continue;
            };
            let der = ::pem::parse(pem_text).unwrap().into_contents();
            let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
            for r in crl.iter_revoked_certificates() {
                listed.record(r.raw_serial_as_string().replace(':', ""));
            }
        }
    });
}

/// What one status write of an issued grant costs, by the way it is written: the
/// same status written to the idle namespace's grants (no operator, no webhook), half
/// by server-side apply and half by a JSON patch replacing `/status`.
async fn status_write_costs(
    grants: &Api<ToolGrant>,
    status: &mandate::api::ToolGrantStatus,
    procs: &[(&'static str, u32)],
) -> String {
    let half = BURST / 2;
    let mut out = vec![];
    for (how, offset) in [("server-side apply", 0), ("JSON patch", half)] {
        let before = cpu_snapshot(procs);
        let t0 = Instant::now();
        stream::iter(offset..offset + half)
            .for_each_concurrent(CONCURRENCY, |i| {
                let grants = grants.clone();
                async move {
                    let name = format!("alone-{i:04}");
                    let patch = if how == "JSON patch" {
                        let ops = json!([{ "op": "add", "path": "/status", "value": status }]);
                        Patch::<serde_json::Value>::Json(serde_json::from_value(ops).unwrap())
                    } else {
                        Patch::Apply(json!({
                            "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant", "status": status,
                        }))
                    };
                    let pp = if how == "JSON patch" {
                        PatchParams::default()
                    } else {
                        PatchParams::apply("mandate/status").force()
                    };
                    grants.patch_status(&name, &pp, &patch).await.unwrap();
                }
            })
            .await;
        let rate = half as f64 / t0.elapsed().as_secs_f64();
        out.push(format!(
            "{how}: {rate:.0} writes/s, CPU {}",
            cpu_split(&before, &cpu_snapshot(procs), half, "write")
        ));
    }
    out.join("; ")
}

#[tokio::main]
async fn main() {
    let client = support::client().await;
    std::fs::create_dir_all(support::repo_root().join("target/bench")).unwrap();
    support::install_crds(&client).await;
    let ns = TestNamespace::new(&client, "bench").await;
    support::agent_policy(&ns, "permit-all", "Enforce", support::PERMIT_ALL).await;
    let op = Operator::start(&ns.name, &[&format!("--ca-secret-namespace={}", ns.name)]).await;
    let pid = op.pid().expect("operator running");
    let procs = processes(pid);
    let pods: Api<Pod> = ns.api();
    let grants: Api<ToolGrant> = ns.api();
    let ids: Api<AgentIdentity> = ns.api();

    let issued = Arc::new(Arrivals::default());
    let deleted = Arc::new(Arrivals::default());
    let listed = Arc::new(Arrivals::default());
    let serials = Arc::new(Mutex::new(HashMap::new()));
    watch_secrets(ns.api(), issued.clone(), deleted.clone(), serials.clone());
    watch_crl(ns.api(), listed.clone());

    common::bench_identity(&ids).await;

    let total = SEQUENTIAL + BURST;
    let names: Vec<String> = (0..total).map(|i| format!("t{i:04}")).collect();
    stream::iter(names.clone())
        .for_each_concurrent(CONCURRENCY, |n| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &pod(&n)).await.unwrap();
            }
        })
        .await;
    let rss_idle = memory_kib(pid, "VmRSS:");

    phase("secrets alone");
    // 0. What the API server alone sustains here: plain Secrets (not watched by the
    // operator) created at the same concurrency. Every issuance needs at least four
    // writes of this kind (the grant, its Secret, its status, an Event) plus two
    // webhook calls, so this bounds the issuance rate on this machine.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = ns.api();
    let t0 = Instant::now();
    stream::iter(0..BURST)
        .for_each_concurrent(CONCURRENCY, |i| {
            let secrets = secrets.clone();
            async move {
                let s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
                    "metadata": { "name": format!("baseline-{i:04}") },
                    "stringData": { "tls.crt": "x".repeat(700), "tls.key": "y".repeat(240) },
                }))
                .unwrap();
                secrets.create(&PostParams::default(), &s).await.unwrap();
            }
        })
        .await;
    let baseline_rate = BURST as f64 / t0.elapsed().as_secs_f64();

    phase("grants alone");
    // 0b. ToolGrant creates alone: the same burst in a namespace no operator watches
    // and no webhook selects, so it measures the API server's cost of the custom
    // resource itself (schema, CEL rules, storage), with nothing else running.
    let idle_ns = TestNamespace::new(&client, "bench-grants-alone").await;
    let idle_grants: Api<ToolGrant> = idle_ns.api();
    let cpu_before = cpu_snapshot(&procs);
    let t0 = Instant::now();
    stream::iter(0..BURST)
        .for_each_concurrent(CONCURRENCY, |i| {
            let grants = idle_grants.clone();
            async move {
                grants
                    .create(&PostParams::default(), &grant(&format!("alone-{i:04}")))
                    .await
                    .unwrap();
            }
        })
        .await;
    let grants_alone_rate = BURST as f64 / t0.elapsed().as_secs_f64();
    let alone_cpu = cpu_split(&cpu_before, &cpu_snapshot(&procs), BURST, "create");

    phase("one grant at a time");
    // 1. One grant at a time: creation to a Secret with a valid certificate.
    let mut create_to_secret = vec![];
    for n in &names[..SEQUENTIAL] {
        let t0 = Instant::now();
        grants.create(&PostParams::default(), &grant(n)).await.unwrap();
        create_to_secret.push(issued.wait(n).await - t0);
    }

    phase("issuance burst");
    // 2. A burst: sustained issuance rate.
    let burst = &names[SEQUENTIAL..];
    let cpu_before = cpu_snapshot(&procs);
    let t0 = Instant::now();
    stream::iter(burst.to_vec())
        .for_each_concurrent(CONCURRENCY, |n| {
            let grants = grants.clone();
            async move {
                grants.create(&PostParams::default(), &grant(&n)).await.unwrap();
            }
        })
        .await;
    let creates_secs = t0.elapsed().as_secs_f64();
    let mut last = t0;
    for n in burst {
        last = last.max(issued.wait(n).await);
    }
    let burst_secs = (last - t0).as_secs_f64();
    let rate = burst.len() as f64 / burst_secs;
    let issue_cpu = cpu_split(&cpu_before, &cpu_snapshot(&procs), burst.len(), "grant");
    let rss_active = memory_kib(pid, "VmRSS:");

    phase("status writes alone");
    let issued_grant = grants.get(&burst[0]).await.unwrap();
    let issued_json = serde_json::to_string_pretty(&issued_grant).unwrap();
    std::fs::write(
        support::repo_root().join("target/bench/issued-grant.json"),
        &issued_json,
    )
    .unwrap();
    let issued_status = issued_grant.status.clone().unwrap();
    let status_costs = status_write_costs(&idle_grants, &issued_status, &procs).await;
    idle_ns.cleanup().await;
    // Heap and stacks, against pages of the binary itself (its code counts too).
    let (anon_active, file_active) = (memory_kib(pid, "RssAnon:"), memory_kib(pid, "RssFile:"));

    phase("one revocation at a time");
    // 3. One task at a time: completion to serial in the CRL and Secret deleted.
    let mut complete_to_revoked = vec![];
    let mut out_of_order = 0;
    for n in &names[..REVOKE_SEQUENTIAL] {
        let serial = serials.lock().unwrap()[n].clone();
        let t0 = finish_pod(&pods, n).await;
        let (gone, crl) = (deleted.wait(n).await, listed.wait(&serial).await);
        // Two watches deliver independently, so allow for a little reordering on the way.
        if crl > gone + Duration::from_millis(50) {
            out_of_order += 1;
        }
        complete_to_revoked.push(gone.max(crl) - t0);
    }

    phase("revocation burst");
    // 4. The rest together: revocation under load.
    let rest = &names[REVOKE_SEQUENTIAL..];
    let cpu_before = cpu_snapshot(&procs);
    let (burst_revoke, burst_span) = revoke_together(&pods, rest, &deleted, &listed, &serials, CONCURRENCY).await;
    let revoke_rate = rest.len() as f64 / burst_span.as_secs_f64();
    let revoke_cpu = cpu_split(&cpu_before, &cpu_snapshot(&procs), rest.len(), "revocation");
    let peak = memory_kib(pid, "VmHWM:");

    let report = format!(
        "| measurement | n | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n{}\n{}\n{}\n\n\
         - API server alone: {BURST} plain Secret creates at concurrency {CONCURRENCY} = **{baseline_rate:.0} writes/s**; {BURST} ToolGrant creates with no webhook and no operator = **{grants_alone_rate:.0} grants/s** (CPU: {alone_cpu})\n\
         - sustained issuance: {} grants in {:.2} s = **{:.0} grants/s** (concurrency {CONCURRENCY}; the creates themselves, through the admission webhook, took {creates_secs:.2} s)\n\
         - CPU used during the issuance burst: {issue_cpu}\n\
         - one status write of an issued grant, alone: {status_costs}\n\
         - burst revocation: {} tasks in {:.2} s = **{:.0} revocations/s**\n\
         - CPU used during the revocation burst: {revoke_cpu}\n\
         - Secret deletion observed more than 50 ms before the CRL listing: {out_of_order} of {REVOKE_SEQUENTIAL}\n\
         - operator resident memory: {:.1} MiB idle with {} Pods, **{:.1} MiB with {} active grants** ({:.1} MiB heap and stacks, {:.1} MiB of mapped binary), peak {:.1} MiB\n",
        summary(
            "grant created -> Secret with valid certificate (one at a time)",
            create_to_secret
        ),
        summary(
            "task completed -> serial in CRL and Secret deleted (one at a time)",
            complete_to_revoked
        ),
        summary(
            "task completed -> serial in CRL and Secret deleted (burst)",
            burst_revoke
        ),
        burst.len(),
        burst_secs,
        rate,
        rest.len(),
        burst_span.as_secs_f64(),
        revoke_rate,
        rss_idle as f64 / 1024.0,
        total,
        rss_active as f64 / 1024.0,
        total,
        anon_active as f64 / 1024.0,
        file_active as f64 / 1024.0,
        peak as f64 / 1024.0,
    );
    println!("{report}");
    let dir = support::repo_root().join("target/bench");
    std::fs::write(dir.join("issuance.md"), &report).unwrap();
    drop(op);
    ns.cleanup().await;
}
