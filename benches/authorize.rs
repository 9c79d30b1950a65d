//! Request-time decisions under load, against the real local control plane.
//!
//! `make bench` runs this after the ledger benchmark. It issues 10,000 real grants (one
//! Pod each) and loads 1,000 `invoke` policies (100 AgentPolicies, shaped like the
//! policy benchmark's: per-namespace tool permits, per-tool forbids on arguments,
//! per-namespace forbids on destinations, a few cluster-wide forbids), then measures
//! over loopback, with h2load (nghttp2's HTTP/2 load generator; vegeta through Envoy,
//! which wants a client certificate):
//! - `POST /v1/authorize` and gRPC ext_authz (`Authorization/Check`): latency at a
//!   fixed rate and throughput at saturation;
//! - the same question answered by OPA (built from the Go module proxy) with an
//!   equivalent Rego policy over the same 10,000 grants, same generator, same run;
//! - the latency Envoy adds with Mandate's ext_authz against the same Envoy without it;
//! - revoke-to-deny: a task completed to the first denied decision;
//! - the operator's resident memory at 10,000 grants.
//!
//! Results go to stdout and to `target/bench/authorize.md`.

mod common;
#[path = "../e2e/support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Arrivals, finish_pod, memory_kib, phase, summary, watch_secrets};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, attribute_context};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use mandate::api::{AgentIdentity, ToolGrant};
use prost::Message;
use serde_json::{Value, json};
use support::{
    TestNamespace,
    envoy::Envoy,
    operator::Operator,
    tls::{Pair, Signer},
};
use time::OffsetDateTime;

const GRANTS: usize = 10_000;
const POLICY_OBJECTS: usize = 100;
const POLICIES_PER_OBJECT: usize = 10;
const CONCURRENCY: usize = 64;
const REVOKES: usize = 100;
/// Each load run.
const RUN: &str = "10s";
/// Through Envoy, three processes (Envoy, Mandate, the upstream) share the cores with
/// vegeta: a rate all of them sustain, so the difference is Mandate's check.
const ENVOY_RATE: &str = "500";
/// h2load at saturation: connections, and concurrent streams on each.
const H2_CLIENTS: usize = 8;
const H2_STREAMS: usize = 16;
/// h2load at a fixed rate: the rate of each connection. h2load's `--rps` timer fires
/// at most every 10 ms and then sends every request due at once, so a connection at
/// 500/s sends bursts of 5 (and 4 of them, started together, bursts of 20 every 10 ms:
/// a queue test, not a rate). At 100/s a connection sends one request per tick, and
/// connections started 1 ms apart spread the ticks over the 10 ms.
const H2_RATE_PER_CLIENT: u32 = 100;
/// The fixed rate latency is measured at (below saturation, as a gateway runs).
const RATE: u32 = 2000;
/// The first second of a fixed-rate run is its warm-up (h2load's `--warm-up-time` is
/// not available with staggered connections).
const WARM_UP_US: u64 = 1_000_000;
/// The ServiceAccount the load generator calls the decision service as: a trusted
/// proxy, authenticated by its token (h2load presents no client certificates).
const GATEWAY_SA: &str = "bench-gateway";
const GATEWAY: &str = "spiffe://bench.example/gateway";
/// Settled: the control plane and the operator together under this share of one core.
const SETTLED_CORE_SHARE: f64 = 0.05;

fn tool(i: usize) -> String {
    format!("tool-{i:03}")
}

/// One generated `invoke` policy; `k` is its position, so the mix is the same each run.
fn policy(k: usize) -> String {
    let n = (k * 7) % 50;
    let t = (k * 13) % 100;
    let id = format!("@id(\"p{k}\")\n");
    match k % 100 {
        0..=59 => format!(
            "{id}permit(principal in Mandate::Namespace::\"team-{n:02}\", action == Mandate::Action::\"invoke\", resource == Mandate::Tool::\"{}\")\nwhen {{ context.dataSensitivityLevel <= {} }};\n",
            tool(t),
            k % 4
        ),
        60..=84 => format!(
            "{id}forbid(principal, action == Mandate::Action::\"invoke\", resource == Mandate::Tool::\"{}\")\nwhen {{ context.arguments.hasTag(\"query\") && context.arguments.getTag(\"query\") like \"*DROP*\" }};\n",
            tool(t)
        ),
        85..=97 => format!(
            "{id}forbid(principal in Mandate::Namespace::\"team-{n:02}\", action == Mandate::Action::\"invoke\", resource)\nwhen {{ context.destination like \"*.internal/*\" }};\n"
        ),
        _ => format!(
            "{id}forbid(principal, action == Mandate::Action::\"invoke\", resource)\nwhen {{ context.intent like \"*exfiltrate*\" }};\n"
        ),
    }
}

fn tool_path(var: &str, script: &str) -> String {
    if let Ok(p) = std::env::var(var) {
        return p;
    }
    let out = std::process::Command::new(support::repo_root().join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(out.status.success(), "{script} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// What vegeta measured.
struct Load {
    requests: u64,
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
    success: f64,
}

/// One vegeta attack of `targets` (vegeta's JSON target format) at `rate`: through
/// Envoy, whose listener wants the agent's client certificate (h2load has none).
fn attack(vegeta: &str, dir: &Path, name: &str, targets: &[Value], client: &Pair, roots: &Path, rate: &str) -> Load {
    let targets_file = dir.join(format!("{name}.targets"));
    let lines: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    std::fs::write(&targets_file, lines.join("\n") + "\n").unwrap();
    let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&crt, &client.cert).unwrap();
    std::fs::write(&key, &client.key).unwrap();
    let results = dir.join(format!("{name}.bin"));
    let mut args = vec![
        "attack".to_string(),
        "-format=json".into(),
        format!("-targets={}", targets_file.display()),
        format!("-duration={RUN}"),
        format!("-rate={rate}"),
        format!("-cert={}", crt.display()),
        format!("-key={}", key.display()),
        format!("-root-certs={}", roots.display()),
        "-http2".into(),
        "-keepalive".into(),
        format!("-output={}", results.display()),
    ];
    if name.starts_with("envoy") {
        // Envoy's serving certificate is the test's own; Go's verifier refused it now
        // and then ("not valid for any names") where rustls accepts it. The connection
        // is still TLS with the agent's client certificate, kept alive.
        args.push("-insecure".into());
    }
    args.push("-workers=16".into());
    let status = std::process::Command::new(vegeta)
        .args(&args)
        .status()
        .expect("vegeta runs");
    assert!(status.success(), "vegeta attack {name} failed");
    let out = std::process::Command::new(vegeta)
        .args(["report", "-type=json", &results.display().to_string()])
        .output()
        .expect("vegeta report");
    let r: Value = serde_json::from_slice(&out.stdout).expect("a vegeta JSON report");
    let codes = r["status_codes"].clone();
    let ok = codes["200"].as_u64().unwrap_or(0);
    let requests = r["requests"].as_u64().unwrap_or(0);
    // Reported, not asserted: a run that outpaces the service shows as failed requests
    // in the table rather than losing every other measurement.
    assert!(ok > 0, "{name}: no request answered 200: {codes}");
    if ok != requests {
        eprintln!("bench: {name}: not every request answered 200: {codes}");
    }
    Load {
        requests,
        throughput: r["throughput"].as_f64().unwrap_or(0.0),
        p50_ms: r["latencies"]["50th"].as_f64().unwrap_or(0.0) / 1e6,
        p99_ms: r["latencies"]["99th"].as_f64().unwrap_or(0.0) / 1e6,
        success: r["success"].as_f64().unwrap_or(0.0),
    }
}

/// One h2load run against `url` with `body` (POSTed) and `headers`: at `rate` requests
/// per second in total (`None`: as fast as `H2_CLIENTS` connections with
/// `H2_STREAMS` streams each go). Latencies come from its per-request log.
#[allow(clippy::too_many_arguments)]
fn h2load(
    h2load: &str,
    dir: &Path,
    name: &str,
    url: &str,
    body: &[u8],
    headers: &[(&str, &str)],
    rate: Option<u32>,
) -> Load {
    let body_file = dir.join(format!("{name}.body"));
    std::fs::write(&body_file, body).unwrap();
    let log = dir.join(format!("{name}.log"));
    // h2load appends to its log: a log left by an earlier run would count twice.
    let _ = std::fs::remove_file(&log);
    let seconds: u32 = RUN.trim_end_matches('s').parse().unwrap();
    let mut args = vec![
        "-t1".to_string(),
        format!("-d{}", body_file.display()),
        format!("--log-file={}", log.display()),
    ];
    for (k, v) in headers {
        args.push(format!("-H{k}: {v}"));
    }
    match rate {
        Some(rate) => {
            // A fixed rate: connections at H2_RATE_PER_CLIENT each, started 1 ms apart
            // (`-r` creates one per period; it needs a request count, not a duration),
            // for the run and a second of warm-up.
            let clients = rate / H2_RATE_PER_CLIENT;
            args.push(format!("-n{}", u64::from(rate) * u64::from(seconds + 1)));
            args.push(format!("-c{clients}"));
            args.push("-m4".into());
            args.push(format!("--rps={H2_RATE_PER_CLIENT}"));
            args.push("-r1".into());
            args.push("--rate-period=1ms".into());
        }
        None => {
            args.push(format!("-D{seconds}"));
            args.push("--warm-up-time=1".into());
            args.push(format!("-c{H2_CLIENTS}"));
            args.push(format!("-m{H2_STREAMS}"));
        }
    }
    args.push(url.to_string());
    let out = std::process::Command::new(h2load)
        .args(&args)
        .stderr(Stdio::inherit())
        .output()
        .expect("h2load runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "h2load {name} failed: {text}");
    // "finished in 10.00s, 19234.50 req/s, 5.12MB/s"
    let throughput = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("finished in ")?
                .split(", ")
                .nth(1)?
                .strip_suffix(" req/s")?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("h2load {name}: no throughput in its report: {text}"));
    // One line per request: start (µs since the epoch), status (-1: failed), µs taken.
    let lines: Vec<(u64, String, u64)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let mut cols = line.split('\t');
            let start = cols.next()?.parse().ok()?;
            let status = cols.next()?.to_string();
            Some((start, status, cols.next()?.parse().ok()?))
        })
        .collect();
    // A fixed-rate run measures after its warm-up second (a saturation run's log
    // starts after h2load's own warm-up).
    let from = match rate {
        Some(_) => lines.iter().map(|l| l.0).min().unwrap_or(0) + WARM_UP_US,
        None => 0,
    };
    let mut ok = 0u64;
    let mut micros: Vec<u64> = vec![];
    for (_, status, us) in lines.iter().filter(|l| l.0 >= from) {
        micros.push(*us);
        if status == "200" {
            ok += 1;
        }
    }
    let requests = micros.len() as u64;
    assert!(ok > 0, "{name}: no request answered 200: {text}");
    if ok != requests {
        eprintln!(
            "bench: {name}: {} of {requests} requests did not answer 200",
            requests - ok
        );
    }
    micros.sort_unstable();
    let pct = |p: f64| micros[((micros.len() as f64 * p) as usize).min(micros.len() - 1)] as f64 / 1000.0;
    Load {
        requests,
        throughput,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        success: ok as f64 / requests as f64,
    }
}

/// A gRPC unary request body: the 5-byte frame header and the message.
fn grpc_frame(msg: &impl Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&body);
    framed
}

fn check_request(cert_pem: &str) -> CheckRequest {
    let encoded = percent_encoding::utf8_percent_encode(cert_pem, percent_encoding::NON_ALPHANUMERIC).to_string();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                certificate: encoded,
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    host: "api.github.com".into(),
                    path: "/repos/acme/widgets/issues".into(),
                    headers: HashMap::from([("x-request-id".to_string(), "bench".to_string())]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([
                ("tool".to_string(), "github".to_string()),
                ("action".to_string(), "read".to_string()),
            ]),
            ..Default::default()
        }),
    }
}

/// The Rego equivalent of what Mandate checks for this question, over the same grants.
const REGO: &str = r#"package mandate.authz

import rego.v1

default allow := false

allow if {
	g := data.grants[input.serial]
	not data.revoked[input.serial]
	not data.finished[g.task]
	some t in g.tools
	t.name == input.tool
	input.action in t.actions
	some d in t.destinations
	within(input.destination, d)
	input.sensitivity <= g.sensitivity
	not forbidden
}

within(wanted, allowed) if wanted == allowed

within(wanted, allowed) if startswith(wanted, concat("", [allowed, "/"]))

forbidden if {
	input.tool == "query"
	contains(input.arguments.query, "DROP")
}

forbidden if contains(input.intent, "exfiltrate")
"#;

/// A persistent HTTP/2 connection to the decision service, for revoke-to-deny.
async fn h2(
    port: u16,
    roots: &str,
    client: &Pair,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    let mut store = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots.as_bytes()) {
        store.add(c.unwrap()).unwrap();
    }
    let certs = CertificateDer::pem_slice_iter(client.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_client_auth_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

async fn allowed(
    send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    body: &[u8],
) -> bool {
    use http_body_util::BodyExt;
    let req = hyper::Request::post("https://localhost/v1/authorize")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["allowed"] == true
}

/// One plain HTTP/1.1 POST (OPA's sanity check).
async fn http1_post(port: u16, path: &str, body: &[u8]) -> Value {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

fn authorize_body(cert: &str) -> Value {
    json!({"certificate": cert, "tool": "github", "action": "read",
           "destination": "api.github.com/repos/acme/widgets/issues", "intent": "triage the open issues"})
}

#[tokio::main]
async fn main() {
    let dir: PathBuf = support::repo_root().join("target/bench/authz");
    std::fs::create_dir_all(&dir).unwrap();
    let vegeta = tool_path("MANDATE_VEGETA", "hack/tools/vegeta.sh");
    let h2l = tool_path("MANDATE_H2LOAD", "hack/tools/h2load.sh");
    let opa = tool_path("MANDATE_OPA", "hack/tools/opa.sh");
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = TestNamespace::new(&client, "bench-authz").await;

    phase("policies");
    support::agent_policy(&ns, "issue", "Enforce", support::PERMIT_ALL).await;
    let own = format!(
        "@id(\"bench-in-scope\")\npermit(principal in Mandate::Namespace::\"{}\", action == Mandate::Action::\"invoke\", resource == Mandate::Tool::\"github\");\n",
        ns.name
    );
    support::agent_policy(&ns, "own", "Enforce", &own).await;
    for o in 0..POLICY_OBJECTS {
        let text: String = (0..POLICIES_PER_OBJECT)
            .map(|i| policy(o * POLICIES_PER_OBJECT + i))
            .collect();
        support::agent_policy(&ns, &format!("gen-{o:03}"), "Enforce", &text).await;
    }

    let op = Operator::start(
        &ns.name,
        &[
            &format!("--ca-secret-namespace={}", ns.name),
            "--trust-domain=bench.example",
            &format!("--decision-proxy-spiffe-ids={GATEWAY}"),
            &format!("--decision-proxy-service-accounts={}/{GATEWAY_SA}", ns.name),
        ],
    )
    .await;
    let pid = op.pid().expect("operator pid");

    phase("10,000 grants");
    let pods: Api<Pod> = ns.api();
    let grants: Api<ToolGrant> = ns.api();
    let ids: Api<AgentIdentity> = ns.api();
    let issued = Arc::new(Arrivals::default());
    let deleted = Arc::new(Arrivals::default());
    let serials = Arc::new(Mutex::new(HashMap::new()));
    watch_secrets(ns.api(), issued.clone(), deleted.clone(), serials.clone());
    common::bench_identity(&ids).await;
    // MANDATE_BENCH_GRANTS: fewer grants for a quick profile; reports use GRANTS.
    let grants_n = std::env::var("MANDATE_BENCH_GRANTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(GRANTS);
    let names: Vec<String> = (0..grants_n).map(|i| format!("t{i:05}")).collect();
    let t0 = Instant::now();
    common::create_pods_and_grants(&pods, &grants, &names, CONCURRENCY).await;
    for n in &names {
        issued.wait(n).await;
    }
    let fill = t0.elapsed();
    let rss = memory_kib(pid, "VmRSS:");
    if std::env::var_os("MANDATE_BENCH_FILL_ONLY").is_some() {
        // For heap profiles of the filled operator (MANDATE_OPERATOR_WRAPPER).
        println!(
            "{} grants issued in {:.1} s; resident {:.1} MiB",
            names.len(),
            fill.as_secs_f64(),
            rss as f64 / 1024.0
        );
        drop(op);
        ns.cleanup().await;
        return;
    }

    let secrets: Api<Secret> = ns.api();
    let ca = Signer::mandate(&secrets).await;
    let now = OffsetDateTime::now_utc();
    let gateway = ca.client(
        GATEWAY,
        now - time::Duration::minutes(5),
        now + time::Duration::hours(2),
        None,
    );
    let roots = dir.join("ca.crt");
    std::fs::write(&roots, &ca.cert_pem).unwrap();
    let cert_of = |s: &Secret| String::from_utf8(s.data.as_ref().unwrap()["tls.crt"].0.clone()).unwrap();
    let key_of = |s: &Secret| String::from_utf8(s.data.as_ref().unwrap()["tls.key"].0.clone()).unwrap();
    let first = secrets.get(&names[0]).await.unwrap();
    let agent = Pair {
        cert: cert_of(&first),
        key: key_of(&first),
    };
    loop {
        if op.get("/readyz").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base = format!("https://localhost:{}", op.decision_port);
    // The latency runs measure the decision service beside a settled control plane,
    // not the tail of the issuance burst (common::settle).
    let settled = common::settle(
        &common::control_plane_and(pid),
        SETTLED_CORE_SHARE,
        Duration::from_secs(180),
    )
    .await;

    let token = support::service_account_token(&ns.api(), GATEWAY_SA).await;
    let bearer = format!("Bearer {token}");

    phase("POST /v1/authorize");
    let body = serde_json::to_vec(&authorize_body(&agent.cert)).unwrap();
    let grpc_body = grpc_frame(&check_request(&agent.cert));
    // MANDATE_BENCH_PAUSE: for profiling by hand against the filled operator (perf,
    // other h2load shapes): writes the URL, a token and the pid to pause.env and waits
    // for a `resume` file. Unset in `make bench`.
    if std::env::var_os("MANDATE_BENCH_PAUSE").is_some() {
        std::fs::write(dir.join("authorize.body"), &body).unwrap();
        std::fs::write(dir.join("grpc.body"), &grpc_body).unwrap();
        std::fs::write(dir.join("pause.env"), format!("URL={base}\nTOKEN={token}\nPID={pid}\n")).unwrap();
        while !dir.join("resume").exists() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let authorize_url = format!("{base}/v1/authorize");
    let json_headers = [("content-type", "application/json"), ("authorization", bearer.as_str())];
    let a_lat = h2load(
        &h2l,
        &dir,
        "authorize",
        &authorize_url,
        &body,
        &json_headers,
        Some(RATE),
    );
    let a_max = h2load(&h2l, &dir, "authorize-max", &authorize_url, &body, &json_headers, None);

    phase("gRPC ext_authz");
    let grpc_url = format!("{base}/envoy.service.auth.v3.Authorization/Check");
    let grpc_headers = [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("authorization", bearer.as_str()),
    ];
    let g_lat = h2load(&h2l, &dir, "grpc", &grpc_url, &grpc_body, &grpc_headers, Some(RATE));
    let g_max = h2load(&h2l, &dir, "grpc-max", &grpc_url, &grpc_body, &grpc_headers, None);
    let (_, metrics) = op.get("/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics).to_string();
    let counted = |protocol: &str, result: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("mandate_authorizations_total")
                    && l.contains(&format!("protocol=\"{protocol}\""))
                    && l.contains(&format!("result=\"{result}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // Every request of those runs was a decision, and every decision an allow (gRPC
    // answers 200 whatever the verdict, so the service's own count is the check).
    assert_eq!(counted("authorize", "denied"), 0.0, "{metrics}");
    assert_eq!(counted("ext_authz_grpc", "denied"), 0.0, "{metrics}");
    let answered = |l: &Load| (l.requests as f64 * l.success).floor();
    assert!(
        counted("ext_authz_grpc", "allowed") >= answered(&g_lat) + answered(&g_max),
        "{metrics}"
    );
    assert!(
        counted("authorize", "allowed") >= answered(&a_lat) + answered(&a_max),
        "{metrics}"
    );
    let rss_loaded = memory_kib(pid, "VmRSS:");

    phase("OPA");
    let mut grants_data = serde_json::Map::new();
    for n in &names {
        let serial = serials.lock().unwrap()[n].clone();
        grants_data.insert(
            serial,
            json!({"task": format!("task-{n}"), "sensitivity": 1,
                   "tools": [{"name": "github", "actions": ["read"], "destinations": ["api.github.com"]}]}),
        );
    }
    let data = json!({"grants": grants_data, "revoked": {}, "finished": {}});
    std::fs::write(dir.join("data.json"), data.to_string()).unwrap();
    std::fs::write(dir.join("authz.rego"), REGO).unwrap();
    let opa_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opa_proc = tokio::process::Command::new(&opa)
        .current_dir(&dir)
        .args([
            "run",
            "--server",
            "--skip-version-check",
            &format!("--addr=127.0.0.1:{opa_port}"),
            // Cleartext HTTP/2: OPA's TLS listener does not offer h2 (its per-client
            // TLS config drops the ALPN list), and HTTP/1.1 would handicap it.
            "--h2c",
            "--log-level=error",
            "authz.rego",
            "data.json",
        ])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("opa runs");
    let serial0 = serials.lock().unwrap()[&names[0]].clone();
    let opa_body = serde_json::to_vec(&json!({"input": {
        "serial": serial0, "tool": "github", "action": "read",
        "destination": "api.github.com/repos/acme/widgets/issues", "sensitivity": 1,
        "intent": "triage the open issues", "arguments": {}}}))
    .unwrap();
    let opa_url = format!("http://127.0.0.1:{opa_port}/v1/data/mandate/authz/allow");
    // OPA is up once it listens and answers allow.
    {
        let deadline = Instant::now() + Duration::from_secs(120);
        while tokio::net::TcpStream::connect(("127.0.0.1", opa_port)).await.is_err() {
            assert!(Instant::now() < deadline, "OPA never listened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let reply = http1_post(opa_port, "/v1/data/mandate/authz/allow", &opa_body).await;
        assert_eq!(reply["result"], true, "OPA allows the question");
    }
    // Cleartext HTTP/2 (h2load speaks it with prior knowledge to an http:// URL).
    let opa_headers = [("content-type", "application/json")];
    let o_lat = h2load(&h2l, &dir, "opa", &opa_url, &opa_body, &opa_headers, Some(RATE));
    let o_max = h2load(&h2l, &dir, "opa-max", &opa_url, &opa_body, &opa_headers, None);
    let opa_rss = opa_proc.id().map(|p| memory_kib(p, "VmRSS:")).unwrap_or(0);
    let _ = opa_proc.kill().await;

    phase("Envoy with and without ext_authz");
    let envoy = Envoy::start(&format!("{}-bench", ns.name), &ca, &gateway, op.decision_port).await;
    let through = |port: u16| {
        json!({"method": "GET", "url": format!("https://localhost:{port}/github/repos/acme/widgets/issues"),
               "header": {"Host": ["api.github.com"]}})
    };
    let e_plain = attack(
        &vegeta,
        &dir,
        "envoy-plain",
        &[through(envoy.plain_port)],
        &agent,
        &roots,
        ENVOY_RATE,
    );
    let e_authz = attack(
        &vegeta,
        &dir,
        "envoy-authz",
        &[through(envoy.grpc_port)],
        &agent,
        &roots,
        ENVOY_RATE,
    );
    drop(envoy);

    phase("revoke to deny");
    let mut send = h2(op.decision_port, &ca.cert_pem, &gateway).await;
    let mut revoke = vec![];
    for n in &names[1..=REVOKES] {
        let s = secrets.get(n).await.unwrap();
        let body = serde_json::to_vec(&authorize_body(&cert_of(&s))).unwrap();
        assert!(allowed(&mut send, &body).await, "{n} allowed before its task ends");
        let t0 = finish_pod(&pods, n).await;
        let deadline = t0 + Duration::from_secs(30);
        while allowed(&mut send, &body).await {
            assert!(Instant::now() < deadline, "{n} never denied");
        }
        revoke.push(t0.elapsed());
    }
    let peak = memory_kib(pid, "VmHWM:");

    let row = |name: &str, l: &Load| {
        format!(
            "| {name} | {} | {:.3} | {:.3} | {:.0} | {:.1}% |",
            l.requests,
            l.p50_ms,
            l.p99_ms,
            l.throughput,
            l.success * 100.0
        )
    };
    let report = format!(
        "| run ({RUN} each; h2load: latency at {RATE}/s over {} connections at {H2_RATE_PER_CLIENT}/s started 1 ms apart, throughput at {H2_CLIENTS} connections x {H2_STREAMS} streams; Envoy: vegeta) | requests | p50 ms | p99 ms | decisions/s | 200s |\n|---|---|---|---|---|---|\n\
         {}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n\n\
         | measurement | n | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n{}\n\n\
         - {GRANTS} grants issued in {:.1} s; {} invoke policies in {POLICY_OBJECTS} AgentPolicies (plus the namespace's own permit)\n\
         - the load runs started {}\n\
         - Mandate vs OPA, throughput at saturation: **/v1/authorize {:.2}x, gRPC ext_authz {:.2}x**; p99 at {RATE}/s: /v1/authorize {:.3} ms vs OPA {:.3} ms\n\
         - Envoy + Mandate ext_authz adds **{:.3} ms at p50, {:.3} ms at p99** over the same Envoy without it\n\
         - operator resident memory: **{:.1} MiB at {GRANTS} grants** (after issuance), {:.1} MiB after the load runs, peak {:.1} MiB; OPA with the same grants as data: {:.1} MiB\n",
        RATE / H2_RATE_PER_CLIENT,
        row("POST /v1/authorize (Mandate), fixed rate", &a_lat),
        row("POST /v1/authorize (Mandate), saturation", &a_max),
        row("gRPC ext_authz Check (Mandate), fixed rate", &g_lat),
        row("gRPC ext_authz Check (Mandate), saturation", &g_max),
        row("OPA POST /v1/data (same question, cleartext h2c), fixed rate", &o_lat),
        row("OPA POST /v1/data (same question, cleartext h2c), saturation", &o_max),
        row(&format!("Envoy, no ext_authz ({ENVOY_RATE}/s)"), &e_plain),
        row(&format!("Envoy + Mandate gRPC ext_authz ({ENVOY_RATE}/s)"), &e_authz),
        summary("task completed -> first denied decision", revoke),
        fill.as_secs_f64(),
        POLICY_OBJECTS * POLICIES_PER_OBJECT,
        if settled.quiet {
            format!(
                "{:.0} s after the last grant was issued, once etcd, the API server, the controller manager and the operator used under {:.0}% of a core together for 3 s ({:.1}% in the last second)",
                settled.after.as_secs_f64(),
                SETTLED_CORE_SHARE * 100.0,
                settled.busy * 100.0
            )
        } else {
            format!(
                "**without the machine settling**: etcd, the API server, the controller manager and the operator still used {:.0}% of a core together {:.0} s after the last grant was issued",
                settled.busy * 100.0,
                settled.after.as_secs_f64()
            )
        },
        a_max.throughput / o_max.throughput,
        g_max.throughput / o_max.throughput,
        a_lat.p99_ms,
        o_lat.p99_ms,
        e_authz.p50_ms - e_plain.p50_ms,
        e_authz.p99_ms - e_plain.p99_ms,
        rss as f64 / 1024.0,
        rss_loaded as f64 / 1024.0,
        peak as f64 / 1024.0,
        opa_rss as f64 / 1024.0,
    );
    println!("{report}");
    std::fs::write(support::repo_root().join("target/bench/authorize.md"), &report).unwrap();
    drop(op);
    ns.cleanup().await;
}
