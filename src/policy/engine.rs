//! The decision: may this grant be issued, and under which policies?
//!
//! A [`PolicyStore`] holds every compiled AgentPolicy, indexed by scope, as small
//! Cedar policy sets built once. It is immutable: the controller builds a new one
//! whenever an AgentPolicy (or a namespace's labels) changes and swaps an `Arc`, so
//! a decision never sees half an update and needs no lock.
//!
//! A decision evaluates, per tool, only the policies whose scope can match, each with
//! Cedar's own evaluator, and combines them with Cedar's rule (allow iff some permit
//! and no forbid is satisfied), which gives exactly the answer of one policy set
//! holding them all. The store calls the evaluator rather than Cedar's `Authorizer`:
//! the authorizer's per-call bookkeeping (a response listing every policy, satisfied
//! or not) and the scope expression it rebuilds for each policy on each call cost more
//! than evaluating the handful of policies the index selects.

mod invoke;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use cedar_policy_core::ast::{self, Expr, ExprKind, Literal, SlotEnv, ValueKind};
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

use super::compile::{Compiled, Effect};
use super::index::{PrincipalScope, ScopeIndex, classify};
use super::input::{ApprovalContext, IssueInput, IssueRequest, ToolRequest};
use crate::api::PolicyMode;
pub use invoke::{InvokeDecision, InvokeDenial};

/// The approver Mandate puts in `context.approval` to ask "would an approval by
/// someone other than the requester lift this denial?". Not a valid Kubernetes
/// username, so a policy cannot single it out by accident.
pub const HYPOTHETICAL_APPROVER: &str = "<any approver other than the requester>";

/// Which namespaces an AgentPolicy selects. The controller resolves the label
/// selector against the namespaces it watches and rebuilds the store when either
/// changes, so the store itself never sees labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceMatcher {
    /// Every namespace (no selector, or an empty one).
    All,
    /// Exactly these namespaces.
    Names(BTreeSet<String>),
}

impl NamespaceMatcher {
    /// Whether grants in `namespace` are subject to the AgentPolicy.
    pub fn applies_to(&self, namespace: &str) -> bool {
        match self {
            NamespaceMatcher::All => true,
            NamespaceMatcher::Names(names) => names.contains(namespace),
        }
    }
}

/// One AgentPolicy as the store needs it.
#[derive(Clone, Debug)]
pub struct AgentPolicyEntry {
    /// The compiled text, with the AgentPolicy's name.
    pub compiled: Compiled,
    /// Enforce or Audit.
    pub mode: PolicyMode,
    /// The namespaces it selects.
    pub namespaces: NamespaceMatcher,
}

/// What to do with a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Issue it.
    Allow,
    /// Wait for a ToolGrantApproval of this generation.
    RequireApproval,
    /// Do not issue it.
    Deny,
}

impl Outcome {
    /// `Allow`, `RequireApproval` or `Deny`, as in `DecisionRecord.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "Allow",
            Outcome::RequireApproval => "RequireApproval",
            Outcome::Deny => "Deny",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decision on one grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueDecision {
    /// What to do.
    pub outcome: Outcome,
    /// Ids (`<AgentPolicy>/<policy id>`) of the Enforce policies that decided: the
    /// permits for Allow, the forbids (or failing policies) for Deny, the approval
    /// forbids for RequireApproval. Empty for a default deny. Sorted.
    pub policies: Vec<String>,
    /// Why, one sentence per reason.
    pub reasons: Vec<String>,
    /// Audit policies that would have denied (or required an approval for) a grant
    /// the Enforce policies allow or send for approval. Sorted.
    pub audit_denials: Vec<String>,
    /// Evaluation errors, as `<policy id>: <error>`; Audit ones are prefixed `audit `.
    pub evaluation_errors: Vec<String>,
}

impl IssueDecision {
    fn deny(reason: String) -> Self {
        IssueDecision {
            outcome: Outcome::Deny,
            policies: vec![],
            reasons: vec![reason],
            audit_denials: vec![],
            evaluation_errors: vec![],
        }
    }
}

/// A usable policy, as decisions evaluate it.
#[derive(Debug)]
struct StoredPolicy {
    /// `<AgentPolicy>/<policy id>`.
    id: String,
    effect: Effect,
    requires_approval: bool,
    audit: bool,
    /// Index into `PolicyStore::matchers`.
    matcher: usize,
    /// The whole condition as written: scope and body. Built once here, because
    /// Cedar builds it afresh from the policy each time it is asked.
    written: Expr,
    /// The condition without the scope constraints its index bucket implies
    /// ([`classify`]): what a policy selected through the index is evaluated with.
    indexed: Expr,
    /// Slot values: always empty (templates are refused at compile time), kept so
    /// evaluation never assumes it.
    env: SlotEnv,
}

/// Policies evaluated together: all Enforce or all Audit, all selected by the same
/// namespaces. Numbers index `PolicyStore::policies`.
#[derive(Debug)]
struct Group {
    /// Index into `PolicyStore::matchers`; `None` when the group's namespace
    /// selection was settled when the store was built.
    matcher: Option<usize>,
    audit: bool,
    /// Whether members are evaluated with their `indexed` or `written` condition.
    indexed: bool,
    policies: Vec<u32>,
}

/// An AgentPolicy that cannot be used, and why.
#[derive(Debug)]
struct Invalid {
    name: String,
    mode: PolicyMode,
    namespaces: NamespaceMatcher,
    problem: String,
}

/// Every AgentPolicy, compiled and indexed. Immutable once built; cheap to share
/// behind an `Arc`.
#[derive(Debug)]
pub struct PolicyStore {
    /// Distinct namespace selections of the valid AgentPolicies.
    matchers: Vec<NamespaceMatcher>,
    /// Every usable policy, numbered.
    policies: Vec<StoredPolicy>,
    /// Policy numbers by qualified id.
    by_id: HashMap<String, u32>,
    /// Policy groups by scope: what `decide_issue` evaluates.
    index: ScopeIndex<Vec<Group>>,
    /// One group per valid AgentPolicy and mode: what `decide_issue_evaluating_all`
    /// evaluates.
    owners: Vec<Group>,
    invalid: Vec<Invalid>,
}

/// How policies are chosen: through the scope index, or every policy of the
/// selected AgentPolicies (the reference the index is tested and benchmarked against).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Selection {
    Indexed,
    All,
}

/// One tool's verdict.
#[derive(Debug, PartialEq, Eq)]
enum ToolVerdict {
    Allow {
        permits: Vec<String>,
    },
    RequireApproval {
        forbids: Vec<String>,
        reasons: Vec<String>,
    },
    Deny {
        policies: Vec<String>,
        reasons: Vec<String>,
        errors: Vec<String>,
    },
}

impl ToolVerdict {
    fn outcome(&self) -> Outcome {
        match self {
            ToolVerdict::Allow { .. } => Outcome::Allow,
            ToolVerdict::RequireApproval { .. } => Outcome::RequireApproval,
            ToolVerdict::Deny { .. } => Outcome::Deny,
        }
    }

    fn policies(&self) -> &[String] {
        match self {
            ToolVerdict::Allow { permits } => permits,
            ToolVerdict::RequireApproval { forbids, .. } => forbids,
            ToolVerdict::Deny { policies, .. } => policies,
        }
    }
}

/// What a set of policy groups said about one request: the satisfied permits and
/// forbids, and the errors. Cedar's decision over the union of the groups follows
/// from it (allow iff some permit and no forbid), which is what lets the store
/// evaluate small groups instead of one set per request.
#[derive(Clone, Debug, Default)]
struct Tally {
    permits: BTreeSet<String>,
    forbids: BTreeSet<String>,
    /// `(policy id, error)`.
    errors: BTreeSet<(String, String)>,
}

impl Tally {
    /// Evaluates `group`'s policies for the request `eval` holds. An error counts as
    /// neither permit nor forbid, as in Cedar, and is recorded: [`failure`] turns any
    /// into a Deny.
    fn add(&mut self, store: &PolicyStore, eval: &Evaluator<'_>, group: &Group) {
        for &n in &group.policies {
            let p = &store.policies[n as usize];
            let condition = if group.indexed { &p.indexed } else { &p.written };
            // A condition is a conjunction, which Cedar only ever evaluates to a
            // boolean or an error; anything else is treated as an error all the same.
            let satisfied = eval
                .interpret(condition, &p.env)
                .map_err(|e| e.to_string())
                .and_then(|v| match v.value_kind() {
                    ValueKind::Lit(Literal::Bool(b)) => Ok(*b),
                    _ => Err(format!("the condition evaluated to {v}, not a boolean")),
                });
            match satisfied {
                Ok(false) => {}
                Ok(true) => {
                    let satisfied = match p.effect {
                        Effect::Permit => &mut self.permits,
                        Effect::Forbid => &mut self.forbids,
                    };
                    satisfied.insert(p.id.clone());
                }
                Err(e) => {
                    self.errors.insert((p.id.clone(), e));
                }
            }
        }
    }

    fn union(&self, other: &Tally) -> Tally {
        let mut t = self.clone();
        t.permits.extend(other.permits.iter().cloned());
        t.forbids.extend(other.forbids.iter().cloned());
        t.errors.extend(other.errors.iter().cloned());
        t
    }
}

fn ids(ids: impl Iterator<Item = impl AsRef<str>>) -> Vec<String> {
    let mut v: Vec<String> = ids.map(|i| i.as_ref().to_string()).collect();
    v.sort();
    v.dedup();
    v
}

fn quoted(ids: &[String]) -> String {
    ids.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
}

/// The groups of one tool's decision, and their tallies, computed on demand: most
/// decisions never need the hypothetical approval or the Audit groups.
struct ToolEval<'a> {
    store: &'a PolicyStore,
    req: &'a IssueRequest,
    tool: &'a ToolRequest,
    input: &'a IssueInput,
    enforce: Vec<&'a Group>,
    audit: Vec<&'a Group>,
    /// Evaluators of the (actual approval, hypothetical approval) requests, built
    /// once each.
    evaluators: [Option<Evaluator<'a>>; 2],
    /// Tallies by [enforce, audit] x [actual, hypothetical].
    tallies: [[Option<Tally>; 2]; 2],
}

impl<'a> ToolEval<'a> {
    fn tally(&mut self, audit: bool, hypothetical: bool) -> &Tally {
        let (m, a) = (usize::from(audit), usize::from(hypothetical));
        if self.tallies[m][a].is_none() {
            let (req, tool, input) = (self.req, self.tool, self.input);
            let eval = self.evaluators[a].get_or_insert_with(|| {
                let approval = if hypothetical {
                    ApprovalContext::hypothetical()
                } else {
                    ApprovalContext::of(req)
                };
                Evaluator::new(
                    input.ast_request(tool, &approval),
                    input.entities.as_ref(),
                    Extensions::all_available(),
                )
            });
            let mut tally = Tally::default();
            let groups = if audit { &self.audit } else { &self.enforce };
            for group in groups {
                tally.add(self.store, eval, group);
            }
            self.tallies[m][a] = Some(tally);
        }
        self.tallies[m][a].get_or_insert_with(Tally::default)
    }

    /// The Enforce tally, or Enforce and Audit together.
    fn combined(&mut self, with_audit: bool, hypothetical: bool) -> Tally {
        let enforce = self.tally(false, hypothetical).clone();
        if !with_audit {
            return enforce;
        }
        enforce.union(self.tally(true, hypothetical))
    }

    /// Decide the tool under the Enforce policies, or (`with_audit`) under Enforce
    /// and Audit policies as if all were enforced.
    fn verdict(&mut self, with_audit: bool) -> ToolVerdict {
        let agent = self.req.agent.entity_id();
        let t = self.tool.name.clone();
        let actual = self.combined(with_audit, false);
        if let Some(failed) = failure(&actual, &t) {
            return failed;
        }
        if actual.forbids.is_empty() {
            return if actual.permits.is_empty() {
                default_deny(&t, &agent)
            } else {
                ToolVerdict::Allow {
                    permits: actual.permits.into_iter().collect(),
                }
            };
        }

        let (approval, plain): (Vec<String>, Vec<String>) =
            actual.forbids.into_iter().partition(|id| self.store.needs_approval(id));
        if !plain.is_empty() {
            let mut reasons = vec![format!(
                "{} forbid `issue` of tool {t} for agent {agent}",
                quoted(&plain)
            )];
            if !approval.is_empty() {
                reasons.push(format!("{} would also require an approval", quoted(&approval)));
            }
            return ToolVerdict::Deny {
                policies: ids(plain.iter().chain(&approval)),
                reasons,
                errors: vec![],
            };
        }

        // Only approval forbids deny. Would an approval by someone other than the
        // requester lift them, with nothing else standing in the way?
        let lifted = self.combined(with_audit, true);
        if let Some(failed) = failure(&lifted, &t) {
            return failed;
        }
        if !lifted.forbids.is_empty() || lifted.permits.is_empty() {
            let others: Vec<String> = lifted.forbids.into_iter().collect();
            let reason = if others.is_empty() {
                format!(
                    "{} require an approval for tool {t}, but even with one no policy permits `issue` of it for agent {agent}",
                    quoted(&approval)
                )
            } else {
                format!(
                    "{} forbid `issue` of tool {t} for agent {agent} even with an approval",
                    quoted(&others)
                )
            };
            return ToolVerdict::Deny {
                policies: ids(approval.iter().chain(&others)),
                reasons: vec![reason],
                errors: vec![],
            };
        }
        let mut reasons = vec![format!(
            "{} require an approval of `issue` of tool {t} for agent {agent}",
            quoted(&approval)
        )];
        if let Some(present) = &self.req.approval {
            let why = if present.approver == self.req.requester.username {
                " (self-approval: the approver is the requester)"
            } else {
                ""
            };
            reasons.push(format!(
                "the present approval {} by {} does not satisfy {}{why}",
                present.name,
                present.approver,
                quoted(&approval)
            ));
        }
        ToolVerdict::RequireApproval {
            forbids: approval,
            reasons,
        }
    }
}

impl PolicyStore {
    /// Index `entries`. An AgentPolicy with compile errors takes no part in decisions
    /// except to deny every grant in the namespaces it selects (Enforce only; see
    /// `decide_issue`). Two entries with the same name make the later one invalid.
    pub fn new(entries: Vec<AgentPolicyEntry>) -> Self {
        let mut matchers: Vec<NamespaceMatcher> = Vec::new();
        let mut policies: Vec<StoredPolicy> = Vec::new();
        let mut by_id = HashMap::new();
        let mut invalid = Vec::new();
        let mut owners = Vec::new();
        let mut index = ScopeIndex::<Vec<u32>>::default();
        let mut seen = BTreeSet::new();
        for entry in entries {
            let name = entry.compiled.name.clone();
            if let Some(problem) = problem(&entry, seen.insert(name.clone())) {
                invalid.push(Invalid {
                    name,
                    mode: entry.mode,
                    namespaces: entry.namespaces,
                    problem,
                });
                continue;
            }
            let matcher = match matchers.iter().position(|m| *m == entry.namespaces) {
                Some(i) => i,
                None => {
                    matchers.push(entry.namespaces);
                    matchers.len() - 1
                }
            };
            let audit = entry.mode == PolicyMode::Audit;
            let mut numbers = Vec::new();
            for p in entry.compiled.policies {
                let Ok(n) = u32::try_from(policies.len()) else { break };
                let (scope, relaxed) = classify(&p.policy);
                index.insert(&scope, n);
                numbers.push(n);
                let written = condition(p.policy.as_ref());
                by_id.insert(p.qualified_id.clone(), n);
                policies.push(StoredPolicy {
                    id: p.qualified_id,
                    effect: p.effect,
                    requires_approval: p.requires_approval && p.effect == Effect::Forbid,
                    audit,
                    matcher,
                    indexed: relaxed
                        .as_ref()
                        .map_or_else(|| written.clone(), |r| condition(r.as_ref())),
                    written,
                    env: AsRef::<ast::Policy>::as_ref(&p.policy).env().clone(),
                });
            }
            owners.push(Group {
                matcher: Some(matcher),
                audit,
                indexed: false,
                policies: numbers,
            });
        }

        let index = index.map(|principal, numbers| {
            // Split each leaf by mode and namespace selection. A leaf scoped to one
            // namespace knows already which AgentPolicies select it, so it needs
            // no check per request and fewer, larger groups.
            let mut split: BTreeMap<(Option<usize>, bool), Vec<u32>> = BTreeMap::new();
            for n in numbers {
                let StoredPolicy { matcher, audit, .. } = policies[n as usize];
                let key = match principal {
                    PrincipalScope::Namespace(ns) if !matchers[matcher].applies_to(ns) => continue,
                    PrincipalScope::Namespace(_) => None,
                    _ => Some(matcher),
                };
                split.entry((key, audit)).or_default().push(n);
            }
            split
                .into_iter()
                .map(|((matcher, audit), policies)| Group {
                    matcher,
                    audit,
                    indexed: true,
                    policies,
                })
                .collect()
        });

        PolicyStore {
            matchers,
            policies,
            by_id,
            index,
            owners,
            invalid,
        }
    }

    /// The problem of an invalid Enforce AgentPolicy selecting `namespace`, if any: the
    /// grant controller holds such grants (no issuance, no revocation) rather than
    /// treating a typo as a denial.
    pub fn invalid_for(&self, namespace: &str) -> Option<String> {
        self.invalid
            .iter()
            .find(|b| b.mode == PolicyMode::Enforce && b.namespaces.applies_to(namespace))
            .map(|b| format!("AgentPolicy {} is invalid: {}", b.name, b.problem))
    }

    /// Number of usable policies (of valid AgentPolicies).
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// True when no usable policy is loaded (every grant is then denied by default).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Decide whether `req` may be issued: action `issue`, once per tool.
    ///
    /// Only AgentPolicies selecting `req.namespace` count. Fail closed: an invalid
    /// Enforce AgentPolicy selecting the namespace, any evaluation error, or a request
    /// Cedar cannot represent is a Deny. A Deny caused only by `@approval("required")`
    /// forbids that an approval by someone other than the requester would lift is a
    /// RequireApproval. Audit policies never change the outcome; see docs/policy.md.
    pub fn decide_issue(&self, req: &IssueRequest) -> IssueDecision {
        self.decide(req, Selection::Indexed)
    }

    /// [`decide_issue`](Self::decide_issue) without the scope index: every policy of
    /// the selected AgentPolicies is evaluated. Always the same decision, slower; it
    /// exists to test and benchmark the index against.
    pub fn decide_issue_evaluating_all(&self, req: &IssueRequest) -> IssueDecision {
        self.decide(req, Selection::All)
    }

    fn decide(&self, req: &IssueRequest, selection: Selection) -> IssueDecision {
        let mut evaluation_errors = Vec::new();
        for bad in self.invalid.iter().filter(|b| b.namespaces.applies_to(&req.namespace)) {
            match bad.mode {
                PolicyMode::Enforce => {
                    return IssueDecision::deny(format!(
                        "AgentPolicy {} is invalid: {}; no grant in namespace {} is issued until it is fixed",
                        bad.name, bad.problem, req.namespace
                    ));
                }
                // A dry run must not block issuance, even a broken one; it is
                // reported in its own status, and here for the record.
                PolicyMode::Audit => evaluation_errors.push(format!(
                    "audit AgentPolicy {} is invalid and was not evaluated: {}",
                    bad.name, bad.problem
                )),
            }
        }
        if req.tools.is_empty() {
            return IssueDecision::deny("the grant names no tools".to_string());
        }
        // Policies see the agent in its namespace, AgentPolicies select by the grant's;
        // they are the same for every grant the API admits (identityRef is local).
        if req.agent.namespace != req.namespace {
            return IssueDecision::deny(format!(
                "agent {} is not in the grant's namespace {}",
                req.agent.entity_id(),
                req.namespace
            ));
        }
        let input = match IssueInput::new(req) {
            Ok(input) => input,
            Err(e) => return IssueDecision::deny(e.to_string()),
        };

        let agent = req.agent.entity_id();
        let mut evals: Vec<(ToolEval<'_>, ToolVerdict)> = Vec::with_capacity(req.tools.len());
        for tool in &req.tools {
            let mut eval = self.tool_eval(req, tool, &input, &agent, selection);
            let verdict = eval.verdict(false);
            if let ToolVerdict::Deny { errors, .. } = &verdict {
                evaluation_errors.extend(errors.iter().cloned());
            }
            evals.push((eval, verdict));
        }

        let outcome = evals.iter().map(|(_, v)| v.outcome()).max().unwrap_or(Outcome::Deny);
        let mut policies = BTreeSet::new();
        let mut reasons = Vec::new();
        for (eval, verdict) in evals.iter().filter(|(_, v)| v.outcome() == outcome) {
            policies.extend(verdict.policies().iter().cloned());
            match verdict {
                ToolVerdict::Allow { permits } => reasons.push(format!(
                    "{} permit `issue` of tool {} for agent {agent}",
                    quoted(permits),
                    eval.tool.name
                )),
                ToolVerdict::RequireApproval { reasons: r, .. } | ToolVerdict::Deny { reasons: r, .. } => {
                    reasons.extend(r.iter().cloned())
                }
            }
        }

        // Audit: Enforce and Audit policies together, as if all were enforced; report
        // the Audit policies that would make the outcome stricter.
        let mut audit_denials = BTreeSet::new();
        if outcome != Outcome::Deny {
            for (eval, verdict) in evals.iter_mut().filter(|(e, _)| !e.audit.is_empty()) {
                let union = eval.verdict(true);
                if union.outcome() <= verdict.outcome() {
                    continue;
                }
                if let ToolVerdict::Deny { errors, .. } = &union {
                    evaluation_errors.extend(errors.iter().map(|e| format!("audit {e}")));
                }
                let audit_ids = union
                    .policies()
                    .iter()
                    .filter(|id| self.policy(id).is_some_and(|p| p.audit));
                let before = audit_denials.len();
                audit_denials.extend(audit_ids.cloned());
                if audit_denials.len() == before && union.policies().is_empty() {
                    // Unreachable in Cedar's semantics (only an Audit policy can make
                    // the union stricter), but never report a stricter union silently.
                    audit_denials.insert(format!("(audit default deny of tool {})", eval.tool.name));
                }
            }
        }

        evaluation_errors.sort();
        evaluation_errors.dedup();
        IssueDecision {
            outcome,
            policies: policies.into_iter().collect(),
            reasons,
            audit_denials: audit_denials.into_iter().collect(),
            evaluation_errors,
        }
    }

    /// The policy groups that can apply to `tool` of `req`: of AgentPolicies
    /// selecting the namespace, and (when indexed) whose scope can match.
    fn tool_eval<'a>(
        &'a self,
        req: &'a IssueRequest,
        tool: &'a ToolRequest,
        input: &'a IssueInput,
        agent: &str,
        selection: Selection,
    ) -> ToolEval<'a> {
        let selected = |g: &&Group| g.matcher.is_none_or(|m| self.matchers[m].applies_to(&req.namespace));
        let groups: Vec<&Group> = match selection {
            Selection::Indexed => self
                .index
                .leaves("issue", &req.namespace, agent, &tool.name)
                .into_iter()
                .flatten()
                .filter(selected)
                .collect(),
            Selection::All => self.owners.iter().filter(selected).collect(),
        };
        let (audit, enforce): (Vec<&Group>, Vec<&Group>) = groups.into_iter().partition(|g| g.audit);
        ToolEval {
            store: self,
            req,
            tool,
            input,
            enforce,
            audit,
            evaluators: [None, None],
            tallies: [[None, None], [None, None]],
        }
    }

    fn policy(&self, id: &str) -> Option<&StoredPolicy> {
        self.by_id.get(id).map(|&n| &self.policies[n as usize])
    }

    fn needs_approval(&self, id: &str) -> bool {
        self.policy(id).is_some_and(|p| p.requires_approval)
    }
}

/// A policy's condition as Cedar evaluates it: its scope constraints and body in one
/// conjunction, left to right, but without the `true` each unconstrained scope
/// position (and a missing body) contributes. Most policies selected through the
/// index have no scope constraint left ([`classify`]), and those `true`s would be
/// most of what evaluating them costs.
fn condition(policy: &ast::Policy) -> Expr {
    [
        policy.principal_constraint().as_expr(),
        policy.action_constraint().as_expr(),
        policy.resource_constraint().as_expr(),
        policy
            .non_scope_constraints()
            .cloned()
            .unwrap_or_else(|| Expr::val(true)),
    ]
    .into_iter()
    .filter(|e| !matches!(e.expr_kind(), ExprKind::Lit(Literal::Bool(true))))
    .reduce(Expr::and)
    .unwrap_or_else(|| Expr::val(true))
}

/// Why an entry cannot be used, if it cannot.
fn problem(entry: &AgentPolicyEntry, first_of_its_name: bool) -> Option<String> {
    if !first_of_its_name {
        return Some("another AgentPolicy has the same name".to_string());
    }
    let first = entry.compiled.errors.first()?;
    let at = match (first.line, first.column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        _ => String::new(),
    };
    let more = match entry.compiled.errors.len() {
        1 => String::new(),
        n => format!(" (and {} more errors)", n - 1),
    };
    Some(format!("{}{at}{more}", first.message))
}

fn default_deny(tool: &str, agent: &str) -> ToolVerdict {
    ToolVerdict::Deny {
        policies: vec![],
        reasons: vec![format!("no policy permits `issue` of tool {tool} for agent {agent}")],
        errors: vec![],
    }
}

/// Any evaluation error is a Deny naming the failing policies. Cedar itself skips a
/// policy that errors, so a `forbid` that errors would otherwise silently let the
/// request through.
fn failure(tally: &Tally, tool: &str) -> Option<ToolVerdict> {
    if tally.errors.is_empty() {
        return None;
    }
    let policies = ids(tally.errors.iter().map(|(id, _)| id));
    let errors: Vec<String> = tally.errors.iter().map(|(id, e)| format!("{id}: {e}")).collect();
    let reasons = errors
        .iter()
        .map(|e| format!("evaluating policy {e} failed for tool {tool}; failing closed"))
        .collect();
    Some(ToolVerdict::Deny {
        policies,
        reasons,
        errors,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::api::Sensitivity;
    use crate::policy::ApprovalFacts;
    use crate::policy::compile::compile;
    use crate::policy::input::tests::request;

    pub(crate) fn entry(name: &str, mode: PolicyMode, namespaces: NamespaceMatcher, text: &str) -> AgentPolicyEntry {
        AgentPolicyEntry {
            compiled: compile(text, name),
            mode,
            namespaces,
        }
    }

    fn enforce(name: &str, text: &str) -> AgentPolicyEntry {
        let e = entry(name, PolicyMode::Enforce, NamespaceMatcher::All, text);
        assert!(e.compiled.is_valid(), "{:?}", e.compiled.errors);
        e
    }

    fn audit(name: &str, text: &str) -> AgentPolicyEntry {
        AgentPolicyEntry {
            mode: PolicyMode::Audit,
            ..enforce(name, text)
        }
    }

    const PERMIT_PAYMENTS: &str = r#"
@id("payments-stripe")
permit(principal in Mandate::Namespace::"team-payments", action == Mandate::Action::"issue", resource == Mandate::Tool::"stripe");
"#;

    const APPROVE_REFUNDS: &str = r#"
@id("refunds-need-approval")
@approval("required")
forbid(principal, action == Mandate::Action::"issue", resource)
when { context.actions.contains("refund") }
unless { context.approval.approved && !context.approval.selfApproval };
"#;

    #[test]
    fn a_permit_allows_and_is_named() {
        let store = PolicyStore::new(vec![enforce("base", PERMIT_PAYMENTS)]);
        let d = store.decide_issue(&request());
        assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
        assert_eq!(d.policies, ["base/payments-stripe"]);
        assert!(d.reasons[0].contains("tool stripe"), "{:?}", d.reasons);
        assert!(d.audit_denials.is_empty() && d.evaluation_errors.is_empty());
    }

    #[test]
    fn without_a_permit_the_default_is_deny_with_no_policies() {
        let store = PolicyStore::new(vec![]);
        let d = store.decide_issue(&request());
        assert_eq!(d.outcome, Outcome::Deny);
        assert!(d.policies.is_empty());
        assert_eq!(
            d.reasons,
            ["no policy permits `issue` of tool stripe for agent team-payments/refunder"]
        );
    }

    #[test]
    fn a_forbid_overrides_a_permit() {
        let store = PolicyStore::new(vec![
            enforce("base", PERMIT_PAYMENTS),
            enforce(
                "ttl",
                "@id(\"short\")\nforbid(principal, action == Mandate::Action::\"issue\", resource) when { context.ttlSeconds > 600 };",
            ),
        ]);
        let d = store.decide_issue(&request());
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(d.policies, ["ttl/short"]);
        assert!(d.reasons[0].contains("`ttl/short` forbid"), "{:?}", d.reasons);
    }

    #[test]
    fn every_tool_must_be_allowed() {
        let store = PolicyStore::new(vec![enforce("base", PERMIT_PAYMENTS)]);
        let mut req = request();
        req.tools.push(ToolRequest {
            name: "postgres".into(),
            actions: vec!["read".into()],
            ..Default::default()
        });
        let d = store.decide_issue(&req);
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(
            d.reasons,
            ["no policy permits `issue` of tool postgres for agent team-payments/refunder"]
        );
    }

    #[test]
    fn policies_of_agent_policies_not_selecting_the_namespace_do_not_count() {
        let elsewhere = NamespaceMatcher::Names(BTreeSet::from(["team-support".to_string()]));
        let store = PolicyStore::new(vec![
            enforce("base", PERMIT_PAYMENTS),
            entry(
                "support",
                PolicyMode::Enforce,
                elsewhere,
                "forbid(principal, action, resource);",
            ),
        ]);
        assert_eq!(store.decide_issue(&request()).outcome, Outcome::Allow);
    }

    #[test]
    fn an_invalid_enforce_agent_policy_denies_in_the_namespaces_it_selects() {
        let broken = |ns: &str| {
            entry(
                "broken",
                PolicyMode::Enforce,
                NamespaceMatcher::Names(BTreeSet::from([ns.to_string()])),
                "permit(principal, action, resource) when { principal.ownr == \"x\" };",
            )
        };
        let store = PolicyStore::new(vec![enforce("base", PERMIT_PAYMENTS), broken("team-payments")]);
        let d = store.decide_issue(&request());
        assert_eq!(d.outcome, Outcome::Deny);
        assert!(
            d.reasons[0].starts_with("AgentPolicy broken is invalid: "),
            "{:?}",
            d.reasons
        );
        assert!(d.reasons[0].contains("line 1"), "{:?}", d.reasons);
        assert!(
            store
                .invalid_for("team-payments")
                .is_some_and(|m| m.starts_with("AgentPolicy broken is invalid"))
        );
        assert_eq!(store.invalid_for("team-support"), None);

        let store = PolicyStore::new(vec![enforce("base", PERMIT_PAYMENTS), broken("team-support")]);
        assert_eq!(store.decide_issue(&request()).outcome, Outcome::Allow);
    }

    #[test]
    fn an_invalid_audit_agent_policy_is_reported_but_does_not_deny() {
        let bad = entry(
            "dry-run",
            PolicyMode::Audit,
            NamespaceMatcher::All,
            "forbid(principal, action, resource",
        );
        let store = PolicyStore::new(vec![enforce("base", PERMIT_PAYMENTS), bad]);
        let d = store.decide_issue(&request());
        assert_eq!(d.outcome, Outcome::Allow);
        assert!(
            d.evaluation_errors[0].contains("audit AgentPolicy dry-run is invalid"),
            "{:?}",
            d.evaluation_errors
        );
    }

    #[test]
    fn an_evaluation_error_denies_naming_the_policy() {
        // Overflow is a run-time error the validator cannot see. Cedar would skip the
        // erroring forbid and allow; Mandate must not.
        let store = PolicyStore::new(vec![
            enforce("base", PERMIT_PAYMENTS),
            enforce(
                "math",
                "@id(\"overflow\")\nforbid(principal, action == Mandate::Action::\"issue\", resource) when { context.ttlSeconds * 9223372036854775807 > 0 };",
            ),
        ]);
        let d = store.decide_issue(&request());
        assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
        assert_eq!(d.policies, ["math/overflow"]);
        assert_eq!(d.evaluation_errors.len(), 1);
        assert!(
            d.evaluation_errors[0].starts_with("math/overflow: "),
            "{:?}",
            d.evaluation_errors
        );
        assert!(d.reasons[0].contains("failing closed"));
    }

    #[test]
    fn an_approval_forbid_requires_approval_and_an_approval_by_someone_else_allows() {
        let store = PolicyStore::new(vec![
            enforce("base", PERMIT_PAYMENTS),
            enforce("refunds", APPROVE_REFUNDS),
        ]);
        let mut req = request();
        let d = store.decide_issue(&req);
        assert_eq!(d.outcome, Outcome::RequireApproval, "{d:?}");
        assert_eq!(d.policies, ["refunds/refunds-need-approval"]);
        assert_eq!(d.reasons.len(), 1);

        req.approval = Some(ApprovalFacts {
            name: "ok".into(),
            approver: "bob@example.com".into(),
        });
        let d = store.decide_issue(&req);
        assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
        assert_eq!(d.policies, ["base/payments-stripe"]);
    }

    #[test]
    fn a_self_approval_does_not_satisfy_a_policy_refusing_it() {
        let store = PolicyStore::new(vec![
            enforce("base", PERMIT_PAYMENTS),
            enforce("refunds", APPROVE_REFUNDS),
        ]);
        let mut req = request();
        req.approval = Some(ApprovalFacts {
            name: "mine".into(),
            approver: req.requester.username.clone(),
        });
        let d = store.decide_issue(&req);
        assert_eq!(d.outcome, Outcome::RequireApproval, "{d:?}");
        assert_eq!(
            d.reasons[1],
            "the present approval mine by alice@example.com does not satisfy `refunds/refunds-need-approval` \
             (self-approval: the approver is the requester)"
        );
    }

    #[test]
    fn an_approval_cannot_lift_a_default_deny_or_a_plain_forbid() {
        let store = PolicyStore::new(vec![enforce("refunds", APPROVE_REFUNDS)]);
        let d = store.decide_issue(&request());
        assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
        assert!(
            d.reasons[0].contains("even with one no policy permits"),
            "{:?}",
            d.reasons
        );

        let store = PolicyStore::new(vec![
            enforce("base", PERMIT_PAYMENTS),
            enforce("refunds", APPROVE_REFUNDS),
            enforce(
                "no-refunds",
                "@id(\"never\")\nforbid(principal, action == Mandate::Action::\"issue\", resource) when { context.actions.contains(\"refund\") };",
            ),
        ]);
        let d = store.decide_issue(&request());
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(d.policies, ["no-refunds/never", "refunds/refunds-need-approval"]);
    }

    #[test]
    fn audit_policies_report_would_be_denials_without_changing_the_outcome() {
        let store = PolicyStore::new(vec![
            enforce("base", PERMIT_PAYMENTS),
            audit(
                "dry-run",
                "@id(\"no-confidential\")\nforbid(principal, action, resource) when { resource.sensitivityLevel >= 2 };",
            ),
        ]);
        let d = store.decide_issue(&request());
        assert_eq!(d.outcome, Outcome::Allow);
        assert_eq!(d.policies, ["base/payments-stripe"]);
        assert_eq!(d.audit_denials, ["dry-run/no-confidential"]);

        // Where Enforce already denies, there is nothing for Audit to report.
        let mut req = request();
        req.tools[0].name = "postgres".into();
        let d = store.decide_issue(&req);
        assert_eq!(d.outcome, Outcome::Deny);
        assert!(d.audit_denials.is_empty());
    }

    #[test]
    fn audit_policies_that_would_require_approval_are_reported() {
        let mut refunds = enforce("refunds", APPROVE_REFUNDS);
        refunds.mode = PolicyMode::Audit;
        let store = PolicyStore::new(vec![enforce("base", PERMIT_PAYMENTS), refunds]);
        let d = store.decide_issue(&request());
        assert_eq!(d.outcome, Outcome::Allow);
        assert_eq!(d.audit_denials, ["refunds/refunds-need-approval"]);
    }

    #[test]
    fn audit_permits_never_allow() {
        let mut permit = enforce("base", PERMIT_PAYMENTS);
        permit.mode = PolicyMode::Audit;
        let d = PolicyStore::new(vec![permit]).decide_issue(&request());
        assert_eq!(d.outcome, Outcome::Deny);
    }

    #[test]
    fn ids_from_different_agent_policies_never_collide() {
        let text = "@id(\"p\")\npermit(principal, action, resource);";
        let store = PolicyStore::new(vec![enforce("a", text), enforce("b", text)]);
        assert_eq!(store.len(), 2);
        assert_eq!(store.decide_issue(&request()).policies, ["a/p", "b/p"]);
    }

    #[test]
    fn a_duplicate_agent_policy_name_makes_the_later_one_invalid() {
        let text = "permit(principal, action, resource);";
        let d = PolicyStore::new(vec![enforce("a", text), enforce("a", text)]).decide_issue(&request());
        assert_eq!(d.outcome, Outcome::Deny);
        assert!(d.reasons[0].contains("same name"));
    }

    // ---- The index never changes a decision ----

    const NAMESPACES: [&str; 3] = ["ns-a", "ns-b", "ns-c"];
    const TOOLS: [&str; 4] = ["stripe", "github", "postgres", "jira"];
    const AGENTS: [&str; 2] = ["bot", "helper"];
    const GROUPS: [&str; 2] = ["admins", "oncall"];
    const ACTIONS: [&str; 4] = ["read", "write", "delete", "refund"];

    fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
        items[rng.random_range(0..items.len())]
    }

    fn random_policy(rng: &mut StdRng) -> String {
        let principal = match rng.random_range(0..5) {
            0 | 1 => "principal".to_string(),
            2 => format!("principal in Mandate::Namespace::\"{}\"", pick(rng, &NAMESPACES)),
            3 => format!(
                "principal == Mandate::Agent::\"{}/{}\"",
                pick(rng, &NAMESPACES),
                pick(rng, &AGENTS)
            ),
            _ => format!(
                "principal is Mandate::Agent in Mandate::Namespace::\"{}\"",
                pick(rng, &NAMESPACES)
            ),
        };
        let action_choice = rng.random_range(0..6);
        let action = match action_choice {
            0 => "action",
            1 => "action in [Mandate::Action::\"issue\", Mandate::Action::\"invoke\"]",
            2 => "action == Mandate::Action::\"invoke\"",
            _ => "action == Mandate::Action::\"issue\"",
        };
        let resource = match rng.random_range(0..4) {
            0 => "resource".to_string(),
            1 => format!("resource in Mandate::Tool::\"{}\"", pick(rng, &TOOLS)),
            2 => "resource is Mandate::Tool".to_string(),
            _ => format!("resource == Mandate::Tool::\"{}\"", pick(rng, &TOOLS)),
        };
        let forbid = rng.random_bool(0.35);
        let approval = forbid && rng.random_bool(0.6);
        // Conditions on entities work for any action; those on `issue`'s context
        // only validate in policies scoped to `issue` alone.
        let any_action = [
            format!("resource.sensitivityLevel >= {}", rng.random_range(0..4)),
            format!("principal.owner == \"team-{}\"", pick(rng, &["a", "b"])),
            format!(
                "resource.sensitivityLevel * 4611686018427387904 * {} > 0",
                rng.random_range(1..3)
            ), // may overflow
        ];
        let issue_only = [
            format!("context.ttlSeconds > {}", rng.random_range(0..3) * 600),
            format!("context.dataSensitivityLevel >= {}", rng.random_range(0..4)),
            format!("context.actions.contains(\"{}\")", pick(rng, &ACTIONS)),
            format!("context.requester in Mandate::Group::\"{}\"", pick(rng, &GROUPS)),
            format!("context.destinations.contains(\"{}.example.com\")", pick(rng, &TOOLS)),
            "context.ttlSeconds * 4611686018427387904 > 0".to_string(), // overflows: an evaluation error
        ];
        let issue = action_choice >= 3;
        let mut when = String::new();
        if rng.random_bool(0.6) {
            let condition = if issue && rng.random_bool(0.7) {
                let n = if rng.random_bool(0.9) {
                    rng.random_range(0..5)
                } else {
                    5
                };
                &issue_only[n]
            } else {
                let n = if rng.random_bool(0.9) {
                    rng.random_range(0..2)
                } else {
                    2
                };
                &any_action[n]
            };
            when = format!(" when {{ {condition} }}");
        }
        let mut unless = String::new();
        // The approval record is `issue` context too.
        let approval = approval && issue;
        if approval {
            unless = " unless { context.approval.approved && !context.approval.selfApproval }".to_string();
        }
        format!(
            "{}{}({principal}, {action}, {resource}){when}{unless};\n",
            if approval { "@approval(\"required\")\n" } else { "" },
            if forbid { "forbid" } else { "permit" },
        )
    }

    fn random_store(rng: &mut StdRng) -> PolicyStore {
        PolicyStore::new(random_entries(rng))
    }

    fn random_entries(rng: &mut StdRng) -> Vec<AgentPolicyEntry> {
        let mut entries = Vec::new();
        for i in 0..rng.random_range(1..6) {
            let text: String = (0..rng.random_range(1..8)).map(|_| random_policy(rng)).collect();
            let mode = if rng.random_bool(0.25) {
                PolicyMode::Audit
            } else {
                PolicyMode::Enforce
            };
            let namespaces = if rng.random_bool(0.5) {
                NamespaceMatcher::All
            } else {
                NamespaceMatcher::Names(
                    NAMESPACES
                        .iter()
                        .filter(|_| rng.random_bool(0.5))
                        .map(|s| s.to_string())
                        .collect(),
                )
            };
            let e = entry(&format!("ap{i}"), mode, namespaces, &text);
            assert!(e.compiled.is_valid(), "{text}\n{:?}", e.compiled.errors);
            entries.push(e);
        }
        entries
    }

    fn random_request(rng: &mut StdRng) -> IssueRequest {
        let mut req = request();
        let ns = pick(rng, &NAMESPACES);
        req.namespace = ns.into();
        req.agent.namespace = ns.into();
        req.agent.name = pick(rng, &AGENTS).into();
        req.agent.owner = format!("team-{}", pick(rng, &["a", "b"]));
        req.requester.groups = GROUPS
            .iter()
            .filter(|_| rng.random_bool(0.5))
            .map(|s| s.to_string())
            .collect();
        req.ttl_seconds = rng.random_range(1..4) * 500;
        req.data_sensitivity =
            [Sensitivity::Public, Sensitivity::Internal, Sensitivity::Restricted][rng.random_range(0..3)];
        req.tools = (0..rng.random_range(1..3))
            .map(|_| {
                let name = pick(rng, &TOOLS);
                ToolRequest {
                    name: name.into(),
                    actions: ACTIONS
                        .iter()
                        .filter(|_| rng.random_bool(0.4))
                        .map(|s| s.to_string())
                        .collect(),
                    destinations: vec![format!("{name}.example.com")],
                    sensitivity: [
                        Sensitivity::Internal,
                        Sensitivity::Confidential,
                        Sensitivity::Restricted,
                    ][rng.random_range(0..3)],
                }
            })
            .collect();
        req.tools.dedup_by(|a, b| a.name == b.name);
        req.approval = match rng.random_range(0..3) {
            0 => None,
            1 => Some(ApprovalFacts {
                name: "ap".into(),
                approver: "bob@example.com".into(),
            }),
            _ => Some(ApprovalFacts {
                name: "ap".into(),
                approver: req.requester.username.clone(),
            }),
        };
        req
    }

    #[test]
    fn the_index_never_changes_a_decision() {
        let mut rng = StdRng::seed_from_u64(0x006d_616e_6461_7465);
        let mut outcomes = HashMap::new();
        let (mut audited, mut errored) = (0, 0);
        for _ in 0..120 {
            let store = random_store(&mut rng);
            for _ in 0..40 {
                let req = random_request(&mut rng);
                let indexed = store.decide_issue(&req);
                let all = store.decide_issue_evaluating_all(&req);
                assert_eq!(indexed, all, "{req:?}");
                *outcomes.entry(indexed.outcome).or_insert(0) += 1;
                audited += usize::from(!indexed.audit_denials.is_empty());
                errored += usize::from(!indexed.evaluation_errors.is_empty());
            }
        }
        // The generator must exercise every outcome, or the comparison proves little.
        for o in [Outcome::Allow, Outcome::Deny, Outcome::RequireApproval] {
            assert!(outcomes.get(&o).copied().unwrap_or(0) > 100, "{outcomes:?}");
        }
        assert!(audited > 50 && errored > 50, "audited {audited}, errored {errored}");
    }

    /// The store evaluates policies with Cedar's evaluator and combines the answers
    /// itself; Cedar's own `Authorizer`, over one policy set holding every Enforce
    /// policy that selects the namespace, is the reference it must agree with: a
    /// grant is allowed exactly when Cedar allows each tool without an error, and by
    /// the same permits.
    #[test]
    fn decisions_agree_with_cedars_authorizer_over_one_policy_set() {
        use crate::policy::input::{ApprovalContext, IssueInput};
        let mut rng = StdRng::seed_from_u64(0x0063_6564_6172);
        let (mut allowed, mut refused) = (0, 0);
        for _ in 0..120 {
            let entries = random_entries(&mut rng);
            let store = PolicyStore::new(entries.clone());
            for _ in 0..40 {
                let req = random_request(&mut rng);
                let set = cedar_policy::PolicySet::from_policies(
                    entries
                        .iter()
                        .filter(|e| e.mode == PolicyMode::Enforce && e.namespaces.applies_to(&req.namespace))
                        .flat_map(|e| e.compiled.policies.iter().map(|p| p.policy.clone())),
                )
                .expect("unique ids");
                let input = IssueInput::new(&req).expect("valid input");
                let mut cedar_allows = true;
                let mut permits = BTreeSet::new();
                for tool in &req.tools {
                    let response = cedar_policy::Authorizer::new().is_authorized(
                        &input.request(tool, &ApprovalContext::of(&req)),
                        &set,
                        &input.entities,
                    );
                    let clean = response.diagnostics().errors().next().is_none();
                    cedar_allows &= clean && response.decision() == cedar_policy::Decision::Allow;
                    permits.extend(response.diagnostics().reason().map(|id| id.to_string()));
                }
                let ours = store.decide_issue(&req);
                assert_eq!(ours.outcome == Outcome::Allow, cedar_allows, "{req:?}\n{ours:?}");
                if cedar_allows {
                    assert_eq!(ours.policies, permits.into_iter().collect::<Vec<_>>(), "{req:?}");
                    allowed += 1;
                } else {
                    refused += 1;
                }
            }
        }
        assert!(allowed > 200 && refused > 200, "allowed {allowed}, refused {refused}");
    }
}
