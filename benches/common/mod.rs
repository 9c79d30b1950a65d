//! What the benchmarks on the control plane share: arrival times fed by watches, the
//! tasks and grants they create, and the process measurements.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::watcher,
};
use mandate::api::ToolGrant;
use serde_json::json;
use tokio::sync::Notify;

pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// When each object was first seen in a given state, fed by one watch.
#[derive(Default)]
pub struct Arrivals {
    at: Mutex<HashMap<String, Instant>>,
    notify: Notify,
}

impl Arrivals {
    pub fn record(&self, key: String) {
        self.at.lock().unwrap().entry(key).or_insert_with(Instant::now);
        self.notify.notify_waiters();
    }

    pub fn get(&self, key: &str) -> Option<Instant> {
        self.at.lock().unwrap().get(key).copied()
    }

    pub async fn wait(&self, key: &str) -> Instant {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let notified = self.notify.notified();
            if let Some(t) = self.get(key) {
                return t;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                panic!("timed out waiting for {key}");
            }
        }
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn summary(name: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} |",
        v.len(),
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.99).as_secs_f64() * 1e3,
        v.last().unwrap().as_secs_f64() * 1e3
    )
}

pub fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Marks the start of a phase on stderr, with the wall-clock time, so that profiles
/// taken alongside (for example the API server's /debug/pprof) can be matched to it.
pub fn phase(name: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!("bench: {name} starts at unix time {:.1}", now.as_secs_f64());
}

pub fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "agent", "image": "example.invalid/agent:1" }] },
    }))
    .unwrap()
}

pub fn grant(name: &str) -> ToolGrant {
    serde_json::from_value(json!({
        "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant",
        "metadata": { "name": name },
        "spec": {
            "identityRef": { "name": "bench" },
            "taskRef": { "apiVersion": "v1", "kind": "Pod", "name": name },
            "tools": [{ "name": "github", "actions": ["read"], "destinations": ["api.github.com"] }],
            "ttl": "30m",
            "purpose": "benchmark",
        },
    }))
    .unwrap()
}

/// Watches Secrets: records when each appears with a certificate that parses and
/// chains to its ca.crt, and when each is deleted.
pub fn watch_secrets(
    api: Api<Secret>,
    issued: Arc<Arrivals>,
    deleted: Arc<Arrivals>,
    serials: Arc<Mutex<HashMap<String, String>>>,
) {
    tokio::spawn(async move {
        let mut s = watcher(api, watcher::Config::default().labels("mandate.dev/grant")).boxed();
        while let Ok(Some(ev)) = s.try_next().await {
            match ev {
                watcher::Event::Apply(sec) | watcher::Event::InitApply(sec) => {
                    let d = sec.data.clone().unwrap_or_default();
                    let (Some(crt), Some(ca)) = (d.get("tls.crt"), d.get("ca.crt")) else {
                        continue;
                    };
                    let leaf = ::pem::parse(&crt.0).unwrap().into_contents();
                    let root = ::pem::parse(&ca.0).unwrap().into_contents();
                    let (_, l) = x509_parser::parse_x509_certificate(&leaf).unwrap();
                    let (_, r) = x509_parser::parse_x509_certificate(&root).unwrap();
                    l.verify_signature(Some(r.public_key()))
                        .expect("certificate chains to ca.crt");
                    serials
                        .lock()
                        .unwrap()
                        .insert(sec.name_any(), l.raw_serial_as_string().replace(':', ""));
                    issued.record(sec.name_any());
                }
                watcher::Event::Delete(sec) => deleted.record(sec.name_any()),
                _ => {}
            }
        }
    });
}

pub async fn finish_pod(pods: &Api<Pod>, name: &str) -> Instant {
    let status = json!({ "status": { "phase": "Succeeded" } });
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    Instant::now()
}

/// Ends the Pods `names` together (`concurrency` status patches in flight) and waits
/// for each one's Secret to be deleted and its serial listed in the CRL. Returns each
/// one's time from its end to both, and the span from the first end to the last.
pub async fn revoke_together(
    pods: &Api<Pod>,
    names: &[String],
    deleted: &Arrivals,
    listed: &Arrivals,
    serials: &Mutex<HashMap<String, String>>,
    concurrency: usize,
) -> (Vec<Duration>, Duration) {
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let t0 = Instant::now();
    futures::stream::iter(names.to_vec())
        .for_each_concurrent(concurrency, |n| {
            let (pods, started) = (pods.clone(), started.clone());
            async move {
                let t = finish_pod(&pods, &n).await;
                started.lock().unwrap().insert(n, t);
            }
        })
        .await;
    let mut each = vec![];
    let mut last = t0;
    for n in names {
        let serial = serials.lock().unwrap()[n].clone();
        let done = deleted.wait(n).await.max(listed.wait(&serial).await);
        last = last.max(done);
        each.push(done - started.lock().unwrap()[n]);
    }
    (each, last - t0)
}

/// Creates the AgentIdentity `bench` the benchmarks' grants name, and waits until Ready.
pub async fn bench_identity(ids: &Api<mandate::api::AgentIdentity>) {
    use mandate::api::AgentIdentity;
    let identity: AgentIdentity = serde_json::from_value(json!({
        "apiVersion": "mandate.dev/v1alpha1", "kind": "AgentIdentity", "metadata": { "name": "bench" },
        "spec": { "owner": "bench", "serviceAccountName": "bench",
                  "tools": [{ "name": "github", "actions": ["read"], "destinations": ["api.github.com"] }] },
    }))
    .unwrap();
    ids.create(&kube::api::PostParams::default(), &identity).await.unwrap();
    crate::support::wait_for(ids, "bench", "Ready", |i: &AgentIdentity| {
        i.status
            .as_ref()
            .is_some_and(|s| mandate::conditions::is_true(&s.conditions, "Ready"))
    })
    .await;
}

/// Creates a Pod and a ToolGrant for it for each of `names`, `concurrency` at a time.
pub async fn create_pods_and_grants(pods: &Api<Pod>, grants: &Api<ToolGrant>, names: &[String], concurrency: usize) {
    use kube::api::PostParams;
    futures::stream::iter(names.to_vec())
        .for_each_concurrent(concurrency, |n| {
            let (pods, grants) = (pods.clone(), grants.clone());
            async move {
                pods.create(&PostParams::default(), &pod(&n)).await.unwrap();
                grants.create(&PostParams::default(), &grant(&n)).await.unwrap();
            }
        })
        .await;
}

/// CPU time (user + system) a process has used so far. `/proc` counts it in USER_HZ
/// ticks, which Linux fixes at 100 per second whatever the kernel's own tick rate.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces, so split after its ')').
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat; 3 is the first after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Who shares the two cores: the control plane and the operator, and this benchmark.
pub fn processes(operator: u32) -> Vec<(&'static str, u32)> {
    let mut out = control_plane_and(operator);
    out.push(("benchmark client", std::process::id()));
    out
}

/// The control plane's processes (from the pid files the cluster script writes) and
/// the operator.
pub fn control_plane_and(operator: u32) -> Vec<(&'static str, u32)> {
    let dir = super::support::repo_root().join(".cluster");
    let mut out = vec![];
    for name in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        let pid = std::fs::read_to_string(dir.join(format!("{name}.pid")))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        if let Some(pid) = pid {
            out.push((name, pid));
        }
    }
    out.push(("operator", operator));
    out
}

pub fn cpu_snapshot(procs: &[(&'static str, u32)]) -> Vec<(&'static str, f64)> {
    procs.iter().map(|(n, pid)| (*n, cpu_secs(*pid))).collect()
}

/// How the machine settled before a measurement.
pub struct Settled {
    /// How long it took (the whole timeout when it never did).
    pub after: Duration,
    /// Whether it did.
    pub quiet: bool,
    /// The share of one core `procs` used in the last window.
    pub busy: f64,
}

/// Waits until `procs` (the control plane and the operator, say) together use under
/// `limit` of one core over three consecutive one-second windows, or `timeout` passes.
///
/// Right after 10,000 grants are issued the API server, etcd and the operator are
/// still finishing the burst (the last status writes and events, the API server's
/// garbage collection) for a few seconds; a latency run started then measures that
/// burst's tail, not the decision service (a p50 of 0.85 ms instead of 0.31 in one run
/// of session 17). A gateway's decisions run beside a settled control plane.
pub async fn settle(procs: &[(&'static str, u32)], limit: f64, timeout: Duration) -> Settled {
    let start = Instant::now();
    let total = |s: &[(&'static str, f64)]| s.iter().map(|(_, c)| c).sum::<f64>();
    let mut quiet_windows = 0;
    let mut busy = f64::NAN;
    while start.elapsed() < timeout {
        let (before, t0) = (total(&cpu_snapshot(procs)), Instant::now());
        // A sampling window, not a synchronisation: CPU use is only defined over one.
        tokio::time::sleep(Duration::from_secs(1)).await;
        busy = (total(&cpu_snapshot(procs)) - before) / t0.elapsed().as_secs_f64();
        quiet_windows = if busy < limit { quiet_windows + 1 } else { 0 };
        if quiet_windows == 3 {
            return Settled {
                after: start.elapsed(),
                quiet: true,
                busy,
            };
        }
    }
    Settled {
        after: start.elapsed(),
        quiet: false,
        busy,
    }
}
