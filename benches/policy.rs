//! Policy decision latency: `cargo bench --bench policy` (no cluster needed).
//!
//! Builds stores of 10, 100 and 1,000 generated policies shaped like a real cluster's
//! (per-namespace tool permits, per-tool and per-namespace forbids, approval rules, a
//! few agent-specific and cluster-wide policies, some AgentPolicies in Audit mode),
//! spread over 50 namespaces and 100 tools, then times issuance decisions one at a
//! time. Prints a markdown table; docs/policy.md records a run.

// The operator's allocator (src/main.rs), tuned as there (`main` calls `tune`), so
// decisions are timed as they run in the operator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use mandate::api::{PolicyMode, Sensitivity, UserInfo};
use mandate::policy::{
    AgentFacts, AgentPolicyEntry, ApprovalFacts, IssueDecision, IssueRequest, NamespaceMatcher, PolicyStore,
    ToolRequest, compile,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NAMESPACES: usize = 50;
const TOOLS: usize = 100;
const AGENTS_PER_NAMESPACE: usize = 5;
/// Policies per AgentPolicy object.
const POLICIES_PER_OBJECT: usize = 10;
const WARMUP: usize = 20_000;
const DECISIONS: usize = 20_000;
/// Evaluating everything is ~100x slower; fewer samples give the same percentiles.
const UNPRUNED_DECISIONS: usize = 2_000;

fn ns(i: usize) -> String {
    format!("team-{i:02}")
}

fn tool(i: usize) -> String {
    format!("tool-{i:03}")
}

/// The tools namespace `n` is meant to use: 8 of the 100, overlapping between teams.
fn team_tools(n: usize) -> impl Iterator<Item = usize> {
    (0..8).map(move |k| (n * 7 + k * 13) % TOOLS)
}

/// One generated policy; `k` is its position, so the mix is the same at every size.
fn policy(rng: &mut StdRng, k: usize) -> String {
    let n = rng.random_range(0..NAMESPACES);
    let t = team_tools(n).nth(rng.random_range(0..8)).unwrap_or(0);
    let id = format!("@id(\"p{k}\")\n");
    match k % 100 {
        // Per-namespace tool permits, with a lifetime bound.
        0..=59 => format!(
            "{id}permit(principal in Mandate::Namespace::\"{}\", action == Mandate::Action::\"issue\", resource == Mandate::Tool::\"{}\")\nwhen {{ context.ttlSeconds <= {} }};\n",
            ns(n),
            tool(t),
            [900, 1800, 3600, 7200][rng.random_range(0..4)]
        ),
        // Per-tool forbids on risky actions.
        60..=74 => format!(
            "{id}forbid(principal, action == Mandate::Action::\"issue\", resource == Mandate::Tool::\"{}\")\nwhen {{ context.actions.containsAny([\"delete\", \"admin\"]) && context.ttlSeconds > 900 }};\n",
            tool(rng.random_range(0..TOOLS))
        ),
        // Per-namespace approval rules for production destinations.
        75..=84 => format!(
            "{id}@approval(\"required\")\nforbid(principal in Mandate::Namespace::\"{}\", action == Mandate::Action::\"issue\", resource)\nwhen {{ context.actions.contains(\"write\") && context.destinations.containsAny([\"{}.prod.internal\"]) }}\nunless {{ context.approval.approved && !context.approval.selfApproval }};\n",
            ns(n),
            tool(t)
        ),
        // Per-namespace data rules on owners.
        85..=93 => format!(
            "{id}forbid(principal in Mandate::Namespace::\"{}\", action == Mandate::Action::\"issue\", resource)\nwhen {{ resource.sensitivityLevel >= 3 }} unless {{ principal.owner == \"team-security\" }};\n",
            ns(n)
        ),
        // Agent-specific permits.
        94..=98 => format!(
            "{id}permit(principal == Mandate::Agent::\"{}/agent-{}\", action == Mandate::Action::\"issue\", resource == Mandate::Tool::\"{}\");\n",
            ns(n),
            rng.random_range(0..AGENTS_PER_NAMESPACE),
            tool(t)
        ),
        // Cluster-wide rules: evaluated for every request, so they stay few.
        _ => format!(
            "{id}forbid(principal, action == Mandate::Action::\"issue\", resource)\nwhen {{ context.dataSensitivityLevel >= 3 && context.ttlSeconds > {} }};\n",
            600 + 60 * rng.random_range(0..10)
        ),
    }
}

fn store(size: usize) -> (PolicyStore, Duration) {
    let mut rng = StdRng::seed_from_u64(size as u64);
    let texts: Vec<String> = (0..size).map(|k| policy(&mut rng, k)).collect();
    let start = Instant::now();
    let entries = texts
        .chunks(POLICIES_PER_OBJECT)
        .enumerate()
        .map(|(i, chunk)| {
            let compiled = compile(&chunk.concat(), &format!("policies-{i:03}"));
            assert!(compiled.is_valid(), "{:?}", compiled.errors);
            // One object in ten is a dry run; one in three selects namespaces by name.
            let mode = if i % 10 == 9 {
                PolicyMode::Audit
            } else {
                PolicyMode::Enforce
            };
            let namespaces = if i % 3 == 2 {
                NamespaceMatcher::Names(
                    (0..NAMESPACES)
                        .filter(|n| n % 3 != i % 3)
                        .map(ns)
                        .collect::<BTreeSet<_>>(),
                )
            } else {
                NamespaceMatcher::All
            };
            AgentPolicyEntry {
                compiled,
                mode,
                namespaces,
            }
        })
        .collect();
    let store = PolicyStore::new(entries);
    (store, start.elapsed())
}

fn tool_request(rng: &mut StdRng, n: usize) -> ToolRequest {
    // Mostly the team's own tools; sometimes any tool (usually denied by default).
    let t = if rng.random_bool(0.85) {
        team_tools(n).nth(rng.random_range(0..8)).unwrap_or(0)
    } else {
        rng.random_range(0..TOOLS)
    };
    let actions: Vec<String> = ["read", "write", "delete"]
        .iter()
        .filter(|_| rng.random_bool(0.4))
        .map(|s| s.to_string())
        .chain(["read".to_string()])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let env = if rng.random_bool(0.3) { "prod" } else { "staging" };
    ToolRequest {
        name: tool(t),
        actions,
        destinations: vec![format!("{}.{env}.internal", tool(t))],
        sensitivity: [
            Sensitivity::Internal,
            Sensitivity::Confidential,
            Sensitivity::Restricted,
        ][rng.random_range(0..3)],
    }
}

fn request(rng: &mut StdRng) -> IssueRequest {
    let n = rng.random_range(0..NAMESPACES);
    let agent = format!("agent-{}", rng.random_range(0..AGENTS_PER_NAMESPACE));
    // 85% single-tool grants, the rest two or three tools.
    let count = if rng.random_bool(0.85) {
        1
    } else {
        rng.random_range(2..4)
    };
    // `MANDATE_POLICY_BENCH_TOOLS=3` makes every grant name that many tools (the
    // slowest decisions, for profiling the tail).
    let count = std::env::var("MANDATE_POLICY_BENCH_TOOLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(count);
    let mut tools: Vec<ToolRequest> = (0..count).map(|_| tool_request(rng, n)).collect();
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    tools.dedup_by(|a, b| a.name == b.name);
    IssueRequest {
        namespace: ns(n),
        grant_name: format!("task-{}", rng.random_range(0..10_000)),
        generation: 1,
        agent: AgentFacts {
            name: agent.clone(),
            namespace: ns(n),
            owner: if rng.random_bool(0.1) {
                "team-security".into()
            } else {
                ns(n)
            },
            spiffe_id: format!("spiffe://mandate.local/ns/{}/agent/{agent}", ns(n)),
            service_account: agent,
        },
        requester: UserInfo {
            username: "alice@example.com".into(),
            uid: "8d3c".into(),
            groups: vec![format!("{}-oncall", ns(n)), "system:authenticated".into()],
        },
        tools,
        ttl_seconds: [300, 900, 1800, 3600][rng.random_range(0..4)],
        data_sensitivity: [
            Sensitivity::Internal,
            Sensitivity::Confidential,
            Sensitivity::Restricted,
        ][rng.random_range(0..3)],
        purpose: "nightly reconciliation".into(),
        task_kind: "Job".into(),
        task_name: "reconcile".into(),
        approval: rng.random_bool(0.2).then(|| ApprovalFacts {
            name: "ok".into(),
            approver: "bob@example.com".into(),
        }),
    }
}

struct Stats {
    p50: f64,
    p99: f64,
    max: f64,
    outcomes: [usize; 3],
    audited: usize,
}

fn run(n: usize, seed: u64, mut decide: impl FnMut(&IssueRequest) -> IssueDecision) -> Stats {
    let mut rng = StdRng::seed_from_u64(seed);
    let requests: Vec<IssueRequest> = (0..n).map(|_| request(&mut rng)).collect();
    let mut micros = Vec::with_capacity(n);
    let mut outcomes = [0; 3];
    let mut audited = 0;
    for req in &requests {
        let start = Instant::now();
        let d = decide(req);
        micros.push(start.elapsed().as_secs_f64() * 1e6);
        outcomes[d.outcome as usize] += 1;
        audited += usize::from(!d.audit_denials.is_empty());
        std::hint::black_box(d);
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() as f64 * q) as usize).min(micros.len() - 1)];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        max: micros[micros.len() - 1],
        outcomes,
        audited,
    }
}

fn main() {
    mandate::allocator::tune();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| policies | build ms | decisions | p50 µs | p99 µs | max µs | allow / approval / deny | audit denials |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    let row = |out: &mut String, label: &str, build: Option<Duration>, n: usize, s: &Stats| {
        let build = build.map_or("".to_string(), |b| format!("{:.1}", b.as_secs_f64() * 1e3));
        let [allow, approval, deny] = s.outcomes;
        let _ = writeln!(
            out,
            "| {label} | {build} | {n} | {:.1} | {:.1} | {:.1} | {allow} / {approval} / {deny} | {} |",
            s.p50, s.p99, s.max, s.audited
        );
    };
    // `MANDATE_POLICY_BENCH_SIZES=1000` (comma-separated) runs only those sizes, for profiling.
    let sizes: Vec<usize> = std::env::var("MANDATE_POLICY_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 1_000]);
    // `MANDATE_POLICY_BENCH_DECISIONS=2000` takes fewer samples (under callgrind, say).
    let decisions: usize = std::env::var("MANDATE_POLICY_BENCH_DECISIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DECISIONS);
    let warmup = decisions.min(WARMUP);
    let evaluate_all = std::env::var_os("MANDATE_POLICY_BENCH_INDEXED_ONLY").is_none();
    for size in sizes {
        let (store, build) = store(size);
        // Warm the policy-set cache as a running controller's would be.
        run(warmup, 1, |r| store.decide_issue(r));
        let s = run(decisions, 2, |r| store.decide_issue(r));
        row(&mut out, &format!("{size}"), Some(build), decisions, &s);
        if size == 1_000 && evaluate_all {
            run(UNPRUNED_DECISIONS / 10, 1, |r| store.decide_issue_evaluating_all(r));
            let s = run(UNPRUNED_DECISIONS, 2, |r| store.decide_issue_evaluating_all(r));
            row(
                &mut out,
                "1000, evaluating all (no index)",
                None,
                UNPRUNED_DECISIONS,
                &s,
            );
        }
    }
    println!("{out}");
}
